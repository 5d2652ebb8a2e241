/**
 * Token bucket rate limiting kept in Redis, so every process behind a load balancer shares one
 * budget per key. The caller passes the clock (`nowMs`), which keeps tests deterministic.
 */
import type { RedisClient } from "../redis/client.ts";
import { defineScript } from "../redis/script.ts";

/** Tokens are counted in 1/60000ths, so a refill of `perMinute` tokens a minute adds exactly
 * `perMinute` units a millisecond and all the arithmetic stays in integers. The Lua token bucket
 * (`src/redis/lua/includes/token_bucket.lua`) gets it as its `TOKEN` constant. */
export const TOKEN_UNIT = 60_000;

/** Takes one token from a bucket (`src/redis/lua/take_token.lua`). */
export const takeTokenScript = defineScript({
  name: "take_token",
  keys: ["bucket"],
  args: ["capacity", "rate", "now_ms", "ttl_ms"],
  constants: { TOKEN: TOKEN_UNIT },
});

/** Bucket parameters for a rate in tokens per minute (burst = rate): capacity, rate, ttl. */
export function bucketParams(perMinute: number, burst = perMinute) {
  const capacity = burst * TOKEN_UNIT;
  // Long enough for an empty bucket to fill again; after that a missing key means the same.
  return { capacity, rate: perMinute, ttlMs: Math.ceil(capacity / perMinute) + 1_000 };
}

export interface TakeTokenOptions {
  /** Sustained rate: tokens added per minute (a positive integer). */
  perMinute: number;
  /** Bucket size: requests allowed at once after a quiet spell; defaults to `perMinute`. */
  burst?: number;
  /** The current time in ms (Date.now() in production). */
  nowMs: number;
}

/**
 * Takes a token from the bucket at `key`. When none is left, says how many whole seconds to wait
 * (for a Retry-After header); a request arriving after that many seconds gets a token.
 */
export async function takeToken(
  redis: RedisClient,
  key: string,
  options: TakeTokenOptions,
): Promise<{ allowed: true; remaining: number } | { allowed: false; retryAfterS: number }> {
  const { perMinute, burst = options.perMinute, nowMs } = options;
  if (!Number.isSafeInteger(perMinute) || perMinute <= 0) {
    throw new RangeError(`Rate limit perMinute must be a positive integer, got ${perMinute}`);
  }
  if (!Number.isSafeInteger(burst) || burst <= 0) {
    throw new RangeError(`Rate limit burst must be a positive integer, got ${burst}`);
  }
  const { capacity, rate, ttlMs } = bucketParams(perMinute, burst);
  const [taken, value] = await takeTokenScript.run(redis, {
    keys: { bucket: key },
    args: { capacity, rate, now_ms: Math.floor(nowMs), ttl_ms: ttlMs },
  }) as [number, number];
  if (taken === 1) return { allowed: true, remaining: Math.floor(value / TOKEN_UNIT) };
  return { allowed: false, retryAfterS: Math.max(1, Math.ceil(value / 1_000)) };
}
