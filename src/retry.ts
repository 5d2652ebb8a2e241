/**
 * The retry policy shared by every consumer: exponential backoff with equal jitter, a provider's
 * or receiver's Retry-After when it gave one, and at most `maxAttempts` attempts.
 */
export interface RetryPolicy {
  maxAttempts: number;
  baseMs: number;
  maxMs: number;
}

/** Exponential backoff with equal jitter: a delay drawn from [c/2, c], c = min(max, base·2^(attempt-1)). */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export type RetryDecision = { type: "give_up" } | { type: "retry"; waitMs: number };

/**
 * What follows a failed attempt: give up when the failure is unrecoverable or it was the last
 * attempt, else retry after the wait asked for (Retry-After) or a backoff. Pure but for `random`.
 */
export function decideRetry(
  attempt: number,
  failure: { retryable: boolean; retryAfterMs?: number },
  policy: RetryPolicy,
  random = Math.random,
): RetryDecision {
  if (!failure.retryable || attempt >= policy.maxAttempts) return { type: "give_up" };
  return {
    type: "retry",
    waitMs: failure.retryAfterMs ?? backoffMs(attempt, policy.baseMs, policy.maxMs, random),
  };
}

/**
 * A response's requested wait in ms: `retry-after-ms` (OpenAI's) wins over `Retry-After`, which is
 * seconds or an HTTP date. Undefined when neither is there or readable.
 */
export function parseRetryAfter(
  headers: Pick<Headers, "get"> | null | undefined,
  nowMs = Date.now(),
): number | undefined {
  const ms = Number.parseFloat(headers?.get("retry-after-ms") ?? "");
  if (Number.isFinite(ms) && ms >= 0) return Math.round(ms);
  const value = headers?.get("retry-after")?.trim();
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.round(seconds * 1000));
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}
