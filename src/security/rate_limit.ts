/**
 * Token bucket rate limiting kept in Redis, so every process behind a load balancer shares one
 * budget per key. The caller passes the clock (`nowMs`), which keeps tests deterministic.
 */
import type { Redis } from "ioredis";
import { Script } from "../redis/scripts.ts";

/** Tokens are counted in 1/60000ths, so a refill of `perMinute` tokens a minute adds exactly
 * `perMinute` units a millisecond and all the arithmetic stays in integers. */
const _UNIT = 60_000;

/**
 * Takes one token from a bucket, refilling it for the time elapsed since the last call.
 * A missing bucket is full; the key expires once a bucket would have refilled completely.
 *
 * KEYS[1] bucket (hash: `tokens` in 1/60000ths, `at` ms)
 * ARGV[1] capacity in units (burst * 60000)   ARGV[2] refill in units per ms (tokens per minute)
 * ARGV[3] now (ms)   ARGV[4] ttl (ms)
 * Returns {1, tokens left in units} when taken, {0, ms until a token is available} otherwise.
 */
export const takeTokenScript = new Script(
  "take-token",
  `
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
  at = now
end
local taken = 0
if tokens >= ${_UNIT} then
  tokens = tokens - ${_UNIT}
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%d', tokens), 'at', string.format('%d', at))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if taken == 1 then return {1, tokens} end
return {0, math.ceil((${_UNIT} - tokens) / rate)}
`,
);

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
  const capacity = burst * _UNIT;
  // Long enough for an empty bucket to fill again; after that a missing key means the same.
  const ttlMs = Math.ceil(capacity / perMinute) + 1_000;
  const [taken, value] = await takeTokenScript.run(redis, [key], [
    capacity,
    perMinute,
    Math.floor(nowMs),
    ttlMs,
  ]) as [number, number];
  if (taken === 1) return { allowed: true, remaining: Math.floor(value / _UNIT) };
  return { allowed: false, retryAfterS: Math.max(1, Math.ceil(value / 1_000)) };
}
