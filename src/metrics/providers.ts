import { isRetryable } from "../errors.ts";
import type { Metrics } from "./registry.ts";

/**
 * Runs one provider call (fal, OpenAI, Supabase, offline), counting it by outcome (success,
 * retryable_error, error, cancelled) with its duration. Without metrics it only runs the call.
 */
export async function timedCall<T>(
  metrics: Metrics | undefined,
  provider: string,
  call: () => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  if (!metrics) return await call();
  const t0 = performance.now();
  let outcome = "success";
  try {
    return await call();
  } catch (error) {
    outcome = signal?.aborted ? "cancelled" : isRetryable(error) ? "retryable_error" : "error";
    throw error;
  } finally {
    const labels = { provider, outcome };
    metrics.providerCalls.inc(labels);
    metrics.providerDuration.observe(labels, (performance.now() - t0) / 1000);
  }
}
