import assert from "node:assert/strict";
import type { RedisClient } from "../src/redis/client.ts";
import { takeToken } from "../src/security/rate_limit.ts";
import { closeRedis, connectRedis, waitReady } from "../src/redis/client.ts";

const REDIS_URL = "redis://127.0.0.1:6379";
const T0 = 1_700_000_000_000;

async function withBucket(name: string, run: (redis: RedisClient, key: string) => Promise<void>) {
  const redis = connectRedis(REDIS_URL);
  const key = `test-rate-${name}-${crypto.randomUUID().slice(0, 8)}:bucket`;
  try {
    await waitReady(redis);
    await run(redis, key);
  } finally {
    await redis.del(key);
    await closeRedis(redis);
  }
}

Deno.test("the request after the burst is refused, and not one before", async () => {
  await withBucket("boundary", async (redis, key) => {
    const options = { perMinute: 60, burst: 5, nowMs: T0 };
    for (let i = 4; i >= 0; i--) {
      assert.deepEqual(await takeToken(redis, key, options), { allowed: true, remaining: i });
    }
    assert.deepEqual(await takeToken(redis, key, options), { allowed: false, retryAfterS: 1 });
    assert.deepEqual(await takeToken(redis, key, options), { allowed: false, retryAfterS: 1 });
  });
});

Deno.test("Retry-After is the whole seconds until the next token, and is honest", async () => {
  await withBucket("retry-after", async (redis, key) => {
    const options = { perMinute: 6, burst: 1 }; // one token every 10 s
    assert.equal((await takeToken(redis, key, { ...options, nowMs: T0 })).allowed, true);
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 }), {
      allowed: false,
      retryAfterS: 10,
    });
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 + 2_500 }), {
      allowed: false,
      retryAfterS: 8, // 7.5 s left, rounded up
    });
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 + 9_999 }), {
      allowed: false,
      retryAfterS: 1,
    });
    // Waiting the advertised time is enough.
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 + 10_000 }), {
      allowed: true,
      remaining: 0,
    });
  });
});

Deno.test("tokens refill with time, never beyond the burst", async () => {
  await withBucket("refill", async (redis, key) => {
    const options = { perMinute: 120, burst: 3 }; // one token every 500 ms
    for (let i = 0; i < 3; i++) await takeToken(redis, key, { ...options, nowMs: T0 });
    assert.equal((await takeToken(redis, key, { ...options, nowMs: T0 + 499 })).allowed, false);
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 + 1_000 }), {
      allowed: true,
      remaining: 1, // two tokens came back in 1 s (the refusal at 499 ms cost nothing)
    });
    // A long quiet spell refills the bucket to the burst, not more.
    const later = T0 + 3_600_000;
    for (let i = 2; i >= 0; i--) {
      assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: later }), {
        allowed: true,
        remaining: i,
      });
    }
    assert.equal((await takeToken(redis, key, { ...options, nowMs: later })).allowed, false);
  });
});

Deno.test("a clock that goes backwards neither refills nor breaks the bucket", async () => {
  await withBucket("backwards", async (redis, key) => {
    const options = { perMinute: 60, burst: 1 };
    assert.equal((await takeToken(redis, key, { ...options, nowMs: T0 })).allowed, true);
    assert.deepEqual(await takeToken(redis, key, { ...options, nowMs: T0 - 5_000 }), {
      allowed: false,
      retryAfterS: 1,
    });
    assert.equal((await takeToken(redis, key, { ...options, nowMs: T0 + 1_000 })).allowed, true);
  });
});

Deno.test("the budget is shared across connections (processes)", async () => {
  await withBucket("shared", async (first, key) => {
    const second = connectRedis(REDIS_URL);
    try {
      await waitReady(second);
      const options = { perMinute: 60, burst: 4, nowMs: T0 };
      const results = await Promise.all([
        takeToken(first, key, options),
        takeToken(second, key, options),
        takeToken(first, key, options),
        takeToken(second, key, options),
        takeToken(first, key, options),
        takeToken(second, key, options),
      ]);
      assert.equal(results.filter((r) => r.allowed).length, 4);
      assert.equal((await takeToken(second, key, options)).allowed, false);
      assert.equal((await takeToken(first, key, options)).allowed, false);
    } finally {
      await closeRedis(second);
    }
  });
});

Deno.test("an idle bucket's key expires once it would be full again", async () => {
  await withBucket("ttl", async (redis, key) => {
    await takeToken(redis, key, { perMinute: 60, burst: 10, nowMs: T0 });
    const ttl = await redis.pttl(key);
    // 10 tokens at 1/s refill in 10 s; the key lives that long plus a little slack.
    assert.ok(ttl > 10_000 && ttl <= 11_000, `pttl ${ttl}`);
  });
});

Deno.test("burst defaults to perMinute, and bad rates are rejected", async () => {
  await withBucket("defaults", async (redis, key) => {
    assert.deepEqual(await takeToken(redis, key, { perMinute: 30, nowMs: T0 }), {
      allowed: true,
      remaining: 29,
    });
    await assert.rejects(takeToken(redis, key, { perMinute: 0, nowMs: T0 }), RangeError);
    await assert.rejects(takeToken(redis, key, { perMinute: 1.5, nowMs: T0 }), RangeError);
    await assert.rejects(takeToken(redis, key, { perMinute: 5, burst: 0, nowMs: T0 }), RangeError);
  });
});
