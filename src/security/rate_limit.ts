/**
 * Token bucket rate limiting kept in Redis, so every process behind a load balancer shares one
 * budget per key. The caller passes the clock (`nowMs`), which keeps tests deterministic.
 */
import type { Redis } from "ioredis";
import { Script } from "../redis/script.ts";

/** Tokens are counted in 1/60000ths, so a refill of `perMinute` tokens a minute adds exactly
 * `perMinute` units a millisecond and all the arithmetic stays in integers. */
const _UNIT = 60_000;

/**
 * Lua helpers for token buckets, shared by {@linkcode takeTokenScript} and the ingest script
 * (which checks the webhook's buckets and appends its task in one round trip).
 * A bucket is a hash: `tokens` in 1/60000ths, `at` ms. A missing bucket is full.
 */
export const TOKEN_BUCKET_LUA = `
local function bucket_refill(key, capacity, rate, now)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  if now > at then
    tokens = math.min(capacity, tokens + (now - at) * rate)
    at = now
  end
  return tokens, at
end
local function bucket_store(key, tokens, at, ttl)
  redis.call('HSET', key, 'tokens', string.format('%d', tokens), 'at', string.format('%d', at))
  redis.call('PEXPIRE', key, ttl)
end
local TOKEN = ${_UNIT}
`;

/**
 * Takes one token from a bucket, refilling it for the time elapsed since the last call.
 * The key expires once a bucket would have refilled completely.
 *
 * KEYS[1] bucket
 * ARGV[1] capacity in units (burst * 60000)   ARGV[2] refill in units per ms (tokens per minute)
 * ARGV[3] now (ms)   ARGV[4] ttl (ms)
 * Returns {1, tokens left in units} when taken, {0, ms until a token is available} otherwise.
 */
export const takeTokenScript = new Script(
  "take-token",
  `${TOKEN_BUCKET_LUA}
local rate = tonumber(ARGV[2])
local tokens, at = bucket_refill(KEYS[1], tonumber(ARGV[1]), rate, tonumber(ARGV[3]))
local taken = 0
if tokens >= TOKEN then
  tokens = tokens - TOKEN
  taken = 1
end
bucket_store(KEYS[1], tokens, at, ARGV[4])
if taken == 1 then return {1, tokens} end
return {0, math.ceil((TOKEN - tokens) / rate)}
`,
);

/** Bucket parameters for a rate in tokens per minute (burst = rate): capacity, rate, ttl. */
export function bucketParams(perMinute: number, burst = perMinute) {
  const capacity = burst * _UNIT;
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
  redis: Redis,
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
  const [taken, value] = await takeTokenScript.run(redis, [key], [
    capacity,
    rate,
    Math.floor(nowMs),
    ttlMs,
  ]) as [number, number];
  if (taken === 1) return { allowed: true, remaining: Math.floor(value / _UNIT) };
  return { allowed: false, retryAfterS: Math.max(1, Math.ceil(value / 1_000)) };
}
