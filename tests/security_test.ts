import assert from "node:assert/strict";
import { signWebhook } from "../src/security/signature.ts";
import { childEnv, fixture, freePort, type TestEnv, testEnv, waitFor } from "./_helpers.ts";

const SECRET = `whsec_${btoa("incoming-secret-0123456789abcdef")}`;
const NEW_SECRET = `whsec_${btoa("rotated-secret-fedcba9876543210")}`;
const TOKEN = "n8n-header-token-0123456789";

async function signed(
  env: TestEnv,
  body: string,
  options: { secret?: string; id?: string; at?: number; signature?: string } = {},
) {
  const id = options.id ?? `msg_${crypto.randomUUID()}`;
  const at = options.at ?? Math.floor(Date.now() / 1000);
  const signature = options.signature ??
    await signWebhook(options.secret ?? SECRET, id, at, body);
  return await env.post(body, {
    "webhook-id": id,
    "webhook-timestamp": String(at),
    "webhook-signature": signature,
  });
}

async function statusOf(response: Promise<Response>) {
  const res = await response;
  await res.body?.cancel();
  return res.status;
}

const appended = (env: TestEnv) => env.services.redis.xlen(env.services.keys.webhookStream);

Deno.test("without a secret or token the endpoint is open and says so", async () => {
  await using env = await testEnv("open");
  const health = await (await env.services.app.request("/health")).json();
  assert.equal(health.webhook_auth, "none");
  assert.equal(await statusOf(env.post(await fixture("minimal.json"))), 202);
});

Deno.test("Standard Webhooks signatures: valid, tampered, wrong secret, stale, future, replay, missing", async () => {
  await using env = await testEnv("signature", { WEBHOOK_SECRET: SECRET });
  const body = await fixture("minimal.json");
  assert.equal(await statusOf(signed(env, body)), 202);
  assert.equal(await appended(env), 1);

  const tampered = await signWebhook(SECRET, "msg_t", Math.floor(Date.now() / 1000), body);
  const rejected = await signed(env, body.replace("teaser", "trailer"), {
    id: "msg_t",
    signature: tampered,
  });
  assert.equal(rejected.status, 401);
  assert.equal(rejected.headers.get("content-type"), "application/problem+json");
  assert.match((await rejected.json()).detail, /bad-signature/);
  assert.equal(await statusOf(signed(env, body, { secret: NEW_SECRET })), 401);
  const now = Math.floor(Date.now() / 1000);
  // 310, not 301: the server's clock may tick a second past `now` before it checks.
  assert.equal(await statusOf(signed(env, body, { at: now - 310 })), 401);
  assert.equal(await statusOf(signed(env, body, { at: now + 310 })), 401);
  assert.equal(await statusOf(env.post(body)), 401, "no headers at all");
  assert.equal(await statusOf(env.post(body, { "webhook-signature": "v1,abc" })), 401);

  const replayed = await signed(env, body, { id: "msg_replay" });
  assert.equal(replayed.status, 202);
  await replayed.body?.cancel();
  const again = await signed(env, body, { id: "msg_replay" });
  assert.equal(again.status, 401);
  assert.match((await again.json()).detail, /replay/);
  assert.equal(await appended(env), 2, "nothing appended for any rejected request");
});

Deno.test("rotated secrets: either configured secret, and several signatures in one header", async () => {
  await using env = await testEnv("rotation", { WEBHOOK_SECRET: `${SECRET} ${NEW_SECRET}` });
  const body = await fixture("minimal.json");
  assert.equal(await statusOf(signed(env, body, { secret: SECRET })), 202);
  assert.equal(await statusOf(signed(env, body, { secret: NEW_SECRET })), 202);
  const id = "msg_two";
  const at = Math.floor(Date.now() / 1000);
  const wrong = await signWebhook(`whsec_${btoa("some-other-secret-000000000")}`, id, at, body);
  const right = await signWebhook(NEW_SECRET, id, at, body);
  assert.equal(await statusOf(signed(env, body, { id, at, signature: `${wrong} ${right}` })), 202);
  const health = await (await env.services.app.request("/health")).json();
  assert.equal(health.webhook_auth, "signature");
});

Deno.test("header token: valid, invalid, missing; with a secret too, either suffices", async () => {
  await using env = await testEnv("token", {
    WEBHOOK_TOKEN: TOKEN,
    WEBHOOK_TOKEN_HEADER: "X-N8N-Auth",
  });
  const body = await fixture("minimal.json");
  assert.equal(await statusOf(env.post(body, { "x-n8n-auth": TOKEN })), 202);
  assert.equal(await statusOf(env.post(body, { "x-n8n-auth": `${TOKEN}x` })), 401);
  assert.equal(await statusOf(env.post(body, { "x-webhook-token": TOKEN })), 401);
  assert.equal(await statusOf(env.post(body)), 401);
  assert.equal(await appended(env), 1);

  await using both = await testEnv("both", { WEBHOOK_TOKEN: TOKEN, WEBHOOK_SECRET: SECRET });
  assert.equal(await statusOf(both.post(body, { "x-webhook-token": TOKEN })), 202);
  assert.equal(await statusOf(signed(both, body)), 202);
  assert.equal(await statusOf(both.post(body, { "x-webhook-token": "wrong-token-0000000" })), 401);
});

Deno.test("outbound URLs are checked at ingest: scheme, credentials, forbidden literals", async () => {
  await using env = await testEnv("urls");
  const base = JSON.parse(await fixture("minimal.json"));
  const refused: [string, string][] = [
    ["callback_url", "http://127.0.0.1:9/cb"],
    ["callback_url", "http://2130706433/cb"],
    ["callback_url", "http://[::ffff:127.0.0.1]/cb"],
    ["callback_url", "http://169.254.169.254/latest/meta-data"],
    ["callback_url", "http://10.1.2.3/cb"],
    ["callback_url", "http://localhost/cb"],
    ["callback_url", "https://user:pass@hooks.example.com/cb"],
    ["image_url", "http://192.168.1.10/product.png"],
  ];
  for (const [field, url] of refused) {
    const res = await env.post({ ...base, [field]: url });
    assert.equal(res.status, 422, url);
    const problem = await res.json();
    assert.deepEqual(problem.errors.map((e: { field: string }) => e.field), [field], url);
  }
  assert.equal(await appended(env), 0);
  await using allowed = await testEnv("urls-allowed", { ALLOW_PRIVATE_CALLBACKS: "true" });
  assert.equal(
    await statusOf(allowed.post({ ...base, callback_url: "http://127.0.0.1:9/cb" })),
    202,
  );
});

Deno.test("prompt length and JSON nesting are bounded", async () => {
  await using env = await testEnv("bounds", { PROMPT_MAX_CHARS: "50", MAX_JSON_DEPTH: "8" });
  const base = JSON.parse(await fixture("minimal.json"));
  const long = await env.post({ ...base, prompt: "x".repeat(51) });
  assert.equal(long.status, 422);
  assert.equal((await long.json()).errors[0].field, "prompt");
  let deep: unknown = "leaf";
  for (let i = 0; i < 9; i++) deep = { deep };
  assert.equal(await statusOf(env.post({ ...base, extra: deep })), 400);
  assert.equal(await statusOf(env.post({ ...base, prompt: "x".repeat(50) })), 202);
});

Deno.test("CORS is off unless origins are listed, and then only for those", async () => {
  const preflight = (env: TestEnv, origin: string) =>
    env.services.app.request("/webhook", {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST" },
    });
  await using closed = await testEnv("cors-off");
  const none = await preflight(closed, "https://app.example.com");
  assert.equal(none.headers.get("access-control-allow-origin"), null);
  await none.body?.cancel();
  await using open = await testEnv("cors-on", { CORS_ORIGINS: "https://app.example.com" });
  const listed = await preflight(open, "https://app.example.com");
  assert.equal(listed.headers.get("access-control-allow-origin"), "https://app.example.com");
  assert.equal(listed.headers.get("access-control-allow-credentials"), null);
  await listed.body?.cancel();
  const other = await preflight(open, "https://evil.example.net");
  assert.notEqual(other.headers.get("access-control-allow-origin"), "https://evil.example.net");
  await other.body?.cancel();
});

Deno.test("rate limit per user answers 429 with Retry-After at the boundary", async () => {
  await using env = await testEnv("rate", { RATE_LIMIT_PER_MINUTE: "3" });
  const base = JSON.parse(await fixture("minimal.json"));
  for (let i = 0; i < 3; i++) assert.equal(await statusOf(env.post(base)), 202);
  const limited = await env.post(base);
  assert.equal(limited.status, 429);
  // 3 per minute: the next token is 20 s after the first request (19 once a second has passed).
  assert.ok(["19", "20"].includes(limited.headers.get("retry-after")!));
  assert.equal(String((await limited.json()).retry_after_s), limited.headers.get("retry-after"));
  assert.equal(await appended(env), 3);
});

Deno.test("the rate limit holds across two server processes", async () => {
  await using env = await testEnv("rate-shared", { RATE_LIMIT_PER_MINUTE: "5" });
  const main = new URL("../main.ts", import.meta.url).pathname;
  const ports = [freePort(), freePort()];
  const servers = ports.map((port) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", main, "serve"],
      clearEnv: true,
      env: {
        ...childEnv(),
        KEY_PREFIX: env.prefix,
        PORT: String(port),
        HOST: "127.0.0.1",
        RATE_LIMIT_PER_MINUTE: "5",
        LOG_LEVEL: "error",
      },
      stdout: "null",
      stderr: "null",
    }).spawn()
  );
  try {
    for (const port of ports) {
      await waitFor(async () => {
        try {
          return (await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.text())).length > 0;
        } catch {
          return false;
        }
      }, { timeoutMs: 20_000, what: `server on ${port}` });
    }
    const body = await fixture("minimal.json");
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`http://127.0.0.1:${ports[i % 2]}/webhook`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      await res.body?.cancel();
      statuses.push(res.status);
    }
    assert.deepEqual(statuses, [202, 202, 202, 202, 202, 429]);
    assert.equal(await appended(env), 5);
  } finally {
    for (const server of servers) {
      server.kill("SIGTERM");
      await server.status;
    }
  }
});

Deno.test("behind a proxy, the address bucket uses the address the proxy appended", async () => {
  await using env = await testEnv("rate-proxy", {
    RATE_LIMIT_PER_MINUTE: "1",
    TRUST_PROXY: "true",
  });
  const base = JSON.parse(await fixture("minimal.json"));
  // The client controls every entry but the last, which its proxy appended.
  const from = (spoofed: string, user: string) =>
    env.post({ ...base, user_id: user }, { "x-forwarded-for": `${spoofed}, 198.51.100.7` });
  assert.equal(await statusOf(from("203.0.113.1", "u-1")), 202);
  assert.equal(await statusOf(from("203.0.113.2", "u-2")), 429);
  assert.equal(await appended(env), 1);
});

Deno.test("duplicates of an accepted webhook do not use up the rate limit", async () => {
  await using env = await testEnv("rate-dup", { RATE_LIMIT_PER_MINUTE: "2" });
  const body = JSON.parse(await fixture("new-video.json"));
  for (let i = 0; i < 5; i++) assert.equal(await statusOf(env.post(body)), 202);
  assert.equal(await statusOf(env.post({ ...body, idempotency_key: "other" })), 202);
  assert.equal(await statusOf(env.post({ ...body, idempotency_key: "third" })), 429);
  assert.equal(await appended(env), 2);
});
