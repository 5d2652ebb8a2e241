import assert from "node:assert/strict";
import { fixture, testEnv } from "./_helpers.ts";

/** A small deterministic PRNG (mulberry32), so a failing body can be reproduced from its seed. */
function prng(seed: number) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NASTY_KEYS = ["__proto__", "constructor", "prototype", "toString", "hasOwnProperty"];
const FIELDS = [
  "prompt",
  "image_url",
  "video_id",
  "user_id",
  "user_email",
  "is_revision",
  "callback_url",
  "request_timestamp",
  "idempotency_key",
  "body",
  "headers",
];

function generator(random: () => number) {
  const pick = <T>(list: T[]) => list[Math.floor(random() * list.length)];
  const value = (depth: number): unknown => {
    const r = random();
    if (depth > 3 || r < 0.25) {
      return pick<unknown>([
        null,
        true,
        false,
        0,
        -1,
        1e308,
        Number.MAX_SAFE_INTEGER,
        "",
        "x",
        "true",
        "maybe",
        "ftp://x",
        "http://127.0.0.1/",
        "https://cdn.example.com/a.png",
        "a@b.co",
        "\u0000\ud800",
        "1764321302",
        "2026-13-45T99:99:99Z",
        "x".repeat(Math.floor(random() * 30_000)),
      ]);
    }
    if (r < 0.5) return Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1));
    const object: Record<string, unknown> = {};
    for (let i = Math.floor(random() * 6); i > 0; i--) {
      object[pick([...FIELDS, ...NASTY_KEYS])] = value(depth + 1);
    }
    return object;
  };
  return value;
}

/** One generated body: random JSON, a mutated valid request, deep nesting, or raw bytes. */
function body(
  random: () => number,
  valid: Record<string, unknown>,
): string | Uint8Array<ArrayBuffer> {
  const kind = random();
  const value = generator(random);
  if (kind < 0.3) return JSON.stringify(value(0));
  if (kind < 0.7) {
    const mutated: Record<string, unknown> = { ...valid, video_id: `v${random()}` };
    for (let i = 1 + Math.floor(random() * 3); i > 0; i--) {
      const key = [...FIELDS, ...NASTY_KEYS][Math.floor(random() * (FIELDS.length + 5))];
      if (random() < 0.3) delete mutated[key];
      else mutated[key] = value(2);
    }
    const text = JSON.stringify(mutated);
    return random() < 0.1 ? text.slice(0, Math.floor(random() * text.length)) : text;
  }
  if (kind < 0.8) {
    const depth = 10 + Math.floor(random() * 5_000);
    return "[".repeat(depth) + "]".repeat(random() < 0.5 ? depth : depth - 1);
  }
  if (kind < 0.9) {
    return `{"prompt": "${"\\u".repeat(Math.floor(random() * 5))}${"x".repeat(10)}", "a": ${
      "{".repeat(40)
    }`;
  }
  const bytes = new Uint8Array(1 + Math.floor(random() * 200));
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  if (random() < 0.5) bytes[0] = 0x7b;
  return bytes;
}

Deno.test("fuzz: 10,000 hostile bodies, no 5xx, nothing appended for any rejected one", async () => {
  await using env = await testEnv("fuzz", { RATE_LIMIT_PER_MINUTE: "0", MAX_BODY_BYTES: "65536" });
  const valid = JSON.parse(await fixture("minimal.json"));
  const random = prng(20261128);
  const statuses = new Map<number, number>();
  let appendedByUs = 0;
  for (let i = 0; i < 10_000; i++) {
    const res = await env.services.app.request("/webhook", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body(random, valid),
    });
    assert.ok(res.status < 500, `body #${i} answered ${res.status}`);
    const text = await res.text();
    if (res.status === 202 && !JSON.parse(text).duplicate) appendedByUs++;
    if (res.status !== 202) {
      assert.equal(res.headers.get("content-type"), "application/problem+json", `body #${i}`);
      assert.doesNotMatch(text, /\bat .*\.ts:\d+/, "no stack traces");
    }
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
  }
  const appended = await env.services.redis.xlen(env.services.keys.webhookStream);
  assert.equal(appended, appendedByUs, "every appended entry is one a 202 announced");
  assert.ok((statuses.get(202) ?? 0) > 100, `some bodies are valid: ${[...statuses]}`);
  assert.ok((statuses.get(422) ?? 0) > 1_000 && (statuses.get(400) ?? 0) > 500, `${[...statuses]}`);
  // Every appended entry is a valid request whose prototype-like keys stayed plain data.
  for (
    const [, fields] of await env.services.redis.xrange(env.services.keys.webhookStream, "-", "+")
  ) {
    const payload = JSON.parse(fields[fields.indexOf("payload") + 1]);
    assert.equal(Object.getPrototypeOf(payload), Object.prototype);
    assert.ok(payload.prompt && payload.user_email);
  }
});
