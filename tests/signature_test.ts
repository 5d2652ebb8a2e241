import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { Buffer } from "node:buffer";
import { Webhook } from "standardwebhooks";
import {
  checkWebhookHeaders,
  rememberWebhookId,
  secretProblem,
  signWebhook,
  tokenMatcher,
  tokensEqual,
  verifyWebhook,
  webhookHeaders,
} from "../src/security/signature.ts";
import { closeRedis, connectRedis, waitReady } from "../src/redis/client.ts";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; // the spec's example key
const NOW = 1_700_000_000;
const BODY = '{"task_id":"t1","status":"completed"}';

async function signed(secret = SECRET, timestampS = NOW, body = BODY, id = "msg_1") {
  return new Headers(await webhookHeaders(secret, { id, timestampS, body }));
}

Deno.test("signature matches the Standard Webhooks construction", async () => {
  const key = Buffer.from("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "base64");
  const expected = createHmac("sha256", key).update(`msg_1.${NOW}.${BODY}`).digest("base64");
  assert.equal(await signWebhook(SECRET, "msg_1", NOW, BODY), `v1,${expected}`);
});

Deno.test("a secret without whsec_ prefix is used as its UTF-8 bytes", async () => {
  const expected = createHmac("sha256", Buffer.from("plain-sécret", "utf8"))
    .update(`msg_1.${NOW}.${BODY}`).digest("base64");
  assert.equal(await signWebhook("plain-sécret", "msg_1", NOW, BODY), `v1,${expected}`);
  const headers = await signed("plain-sécret");
  assert.deepEqual(await verifyWebhook(["plain-sécret"], headers, BODY, NOW), {
    ok: true,
    id: "msg_1",
  });
});

Deno.test("a whsec_ secret that is not base64 is rejected without echoing it", async () => {
  await assert.rejects(
    signWebhook("whsec_not base64!", "msg_1", NOW, BODY),
    (error: Error) => !error.message.includes("not base64!"),
  );
});

Deno.test("a valid signature verifies and returns the webhook id", async () => {
  const headers = await signed();
  assert.deepEqual(await verifyWebhook([SECRET], headers, BODY, NOW), { ok: true, id: "msg_1" });
  assert.deepEqual(await verifyWebhook([SECRET], headers, BODY, NOW + 299), {
    ok: true,
    id: "msg_1",
  });
});

Deno.test("a tampered body, id or timestamp fails as bad-signature", async () => {
  const headers = await signed();
  const bad = { ok: false, reason: "bad-signature" };
  assert.deepEqual(await verifyWebhook([SECRET], headers, BODY.replace("t1", "t2"), NOW), bad);
  assert.deepEqual(await verifyWebhook([SECRET], headers, `${BODY} `, NOW), bad);
  const otherId = new Headers(headers);
  otherId.set("webhook-id", "msg_2");
  assert.deepEqual(await verifyWebhook([SECRET], otherId, BODY, NOW), bad);
  const otherTime = new Headers(headers);
  otherTime.set("webhook-timestamp", String(NOW + 1));
  assert.deepEqual(await verifyWebhook([SECRET], otherTime, BODY, NOW), bad);
  const truncated = new Headers(headers);
  truncated.set("webhook-signature", headers.get("webhook-signature")!.slice(0, -4));
  assert.deepEqual(await verifyWebhook([SECRET], truncated, BODY, NOW), bad);
  const wrongVersion = new Headers(headers);
  wrongVersion.set("webhook-signature", headers.get("webhook-signature")!.replace("v1,", "v2,"));
  assert.deepEqual(await verifyWebhook([SECRET], wrongVersion, BODY, NOW), bad);
});

Deno.test("a signature made with another secret fails", async () => {
  const headers = await signed("whsec_" + btoa("another key entirely"));
  assert.deepEqual(await verifyWebhook([SECRET], headers, BODY, NOW), {
    ok: false,
    reason: "bad-signature",
  });
  assert.deepEqual(await verifyWebhook([], await signed(), BODY, NOW), {
    ok: false,
    reason: "bad-signature",
  });
});

Deno.test("timestamps outside the tolerance are stale or future", async () => {
  const old = await signed(SECRET, NOW - 301);
  assert.deepEqual(await verifyWebhook([SECRET], old, BODY, NOW), { ok: false, reason: "stale" });
  const ahead = await signed(SECRET, NOW + 301);
  assert.deepEqual(await verifyWebhook([SECRET], ahead, BODY, NOW), {
    ok: false,
    reason: "future",
  });
  // Exactly at the tolerance is still accepted; a custom tolerance applies.
  assert.equal(
    (await verifyWebhook([SECRET], await signed(SECRET, NOW - 300), BODY, NOW)).ok,
    true,
  );
  assert.deepEqual(await verifyWebhook([SECRET], await signed(SECRET, NOW - 61), BODY, NOW, 60), {
    ok: false,
    reason: "stale",
  });
});

Deno.test("a timestamp that is not whole seconds is bad-timestamp", async () => {
  for (
    const value of ["abc", "1700000000.5", "-1700000000", "1e9", "17000000000000000", "01700000000"]
  ) {
    const headers = await signed();
    headers.set("webhook-timestamp", value);
    assert.deepEqual(await verifyWebhook([SECRET], headers, BODY, NOW), {
      ok: false,
      reason: "bad-timestamp",
    }, value);
  }
});

Deno.test("any missing or empty header is missing-headers", async () => {
  for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
    const without = await signed();
    without.delete(name);
    assert.deepEqual(await verifyWebhook([SECRET], without, BODY, NOW), {
      ok: false,
      reason: "missing-headers",
    }, name);
    const empty = await signed();
    empty.set(name, "");
    assert.deepEqual(await verifyWebhook([SECRET], empty, BODY, NOW), {
      ok: false,
      reason: "missing-headers",
    }, name);
  }
});

Deno.test("rotation: a header with old and new signatures verifies with either secret", async () => {
  const next = "whsec_" + btoa("the next key, 32 bytes long.....");
  const headers = await signed(SECRET);
  const newSignature = await signWebhook(next, "msg_1", NOW, BODY);
  headers.set("webhook-signature", `${headers.get("webhook-signature")} ${newSignature}`);
  assert.equal((await verifyWebhook([SECRET], headers, BODY, NOW)).ok, true);
  assert.equal((await verifyWebhook([next], headers, BODY, NOW)).ok, true);
  assert.equal((await verifyWebhook(["whsec_" + btoa("unrelated")], headers, BODY, NOW)).ok, false);
  // Unknown schemes and junk entries next to a good one are ignored.
  headers.set("webhook-signature", `v1a,abc garbage v1,!!! ${newSignature}`);
  assert.equal((await verifyWebhook([next], headers, BODY, NOW)).ok, true);
});

Deno.test("rotation: two configured secrets accept signatures from either", async () => {
  const old = "whsec_" + btoa("the old key");
  const secrets = [SECRET, old];
  assert.equal((await verifyWebhook(secrets, await signed(SECRET), BODY, NOW)).ok, true);
  assert.equal((await verifyWebhook(secrets, await signed(old), BODY, NOW)).ok, true);
  assert.equal(
    (await verifyWebhook(secrets, await signed("whsec_" + btoa("x")), BODY, NOW)).ok,
    false,
  );
});

Deno.test("what this service signs verifies with the standardwebhooks reference, and back", async () => {
  const now = Math.floor(Date.now() / 1000);
  for (const secret of [SECRET, "plain-sécret-of-16+-chars"]) {
    const headers = await webhookHeaders(secret, { id: "msg_ref", timestampS: now, body: BODY });
    const reference = secret.startsWith("whsec_")
      ? new Webhook(secret)
      : new Webhook(new TextEncoder().encode(secret), { format: "raw" });
    assert.deepEqual(reference.verify(BODY, headers), JSON.parse(BODY), secret);
    const theirs = new Headers({
      "webhook-id": "msg_ref",
      "webhook-timestamp": String(now),
      "webhook-signature": reference.sign("msg_ref", new Date(now * 1000), BODY),
    });
    assert.deepEqual(await verifyWebhook([secret], theirs, BODY, now), {
      ok: true,
      id: "msg_ref",
    });
  }
});

Deno.test("the header checks run without the body and share the verifier's reasons", async () => {
  const headers = await signed();
  assert.deepEqual(checkWebhookHeaders(headers, NOW), {
    ok: true,
    id: "msg_1",
    timestampS: NOW,
    signature: headers.get("webhook-signature"),
  });
  assert.deepEqual(checkWebhookHeaders(headers, NOW + 301), { ok: false, reason: "stale" });
  assert.deepEqual(checkWebhookHeaders(headers, NOW - 301), { ok: false, reason: "future" });
  assert.deepEqual(checkWebhookHeaders(headers, NOW + 61, 60), { ok: false, reason: "stale" });
  assert.deepEqual(checkWebhookHeaders(new Headers(), NOW), {
    ok: false,
    reason: "missing-headers",
  });
});

Deno.test("secretProblem accepts what the package can sign with and at least 16 bytes", () => {
  assert.equal(secretProblem(SECRET), null);
  assert.equal(secretProblem("plain-text-secret-16"), null);
  assert.match(secretProblem("short")!, /at least 16 characters/);
  assert.match(secretProblem("whsec_not base64!")!, /base64/);
  assert.match(secretProblem("whsec_abc")!, /base64/, "bad padding");
  assert.match(secretProblem("whsec_")!, /base64/, "empty key");
  assert.match(secretProblem(`whsec_${btoa("15 bytes long..")}`)!, /16 bytes/);
  assert.equal(secretProblem(`whsec_${btoa("16 bytes long...")}`), null);
});

Deno.test("tokensEqual compares tokens of any length", () => {
  assert.equal(tokensEqual("s3cret-token", "s3cret-token"), true);
  assert.equal(tokensEqual("s3cret-token", "s3cret-tokeN"), false);
  assert.equal(tokensEqual("s3cret-token", "s3cret"), false);
  assert.equal(tokensEqual("", "s3cret"), false);
  assert.equal(tokensEqual("", ""), true);
  assert.equal(tokensEqual("é", "é"), true);
});

Deno.test("rememberWebhookId is true only the first time, and expires", async () => {
  const redis = connectRedis("redis://127.0.0.1:6379");
  const key = `test-replay-${crypto.randomUUID().slice(0, 8)}:webhook-id:msg_1`;
  try {
    await waitReady(redis);
    assert.equal(await rememberWebhookId(redis, key, 60), true);
    assert.equal(await rememberWebhookId(redis, key, 60), false);
    const ttl = await redis.ttl(key);
    assert.ok(ttl > 0 && ttl <= 60, `ttl ${ttl}`);
  } finally {
    await redis.del(key);
    await closeRedis(redis);
  }
});

Deno.test("the header token matcher accepts exactly the expected token", () => {
  const matches = tokenMatcher("s3cret-tøken-0123456789");
  assert.equal(matches("s3cret-tøken-0123456789"), true);
  for (
    const wrong of [
      "",
      "s3cret-tøken-012345678",
      "s3cret-tøken-01234567890",
      "s3cret-tøken-0123456788",
      "S3cret-tøken-0123456789",
      "s3cret-token-0123456789",
      "s3cret-tøken-0123456789\u0000",
    ]
  ) {
    assert.equal(matches(wrong), false, JSON.stringify(wrong));
  }
});
