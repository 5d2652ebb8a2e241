import { RetryableError } from "./errors.ts";

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Exponential backoff with equal jitter: a delay drawn from [c/2, c], c = min(max, base·2^(attempt-1)). */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** How long to wait before retrying after `error`: the provider's Retry-After when it gave one. */
export function retryDelayMs(error: unknown, attempt: number, baseMs: number, maxMs: number) {
  return error instanceof RetryableError && error.retryAfterMs !== undefined
    ? error.retryAfterMs
    : backoffMs(attempt, baseMs, maxMs);
}
