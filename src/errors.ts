/** An error the HTTP layer turns into application/problem+json with its status. */
export class ProblemError extends Error {
  constructor(
    readonly status: 400 | 401 | 404 | 408 | 409 | 413 | 415 | 422 | 429 | 500 | 503,
    readonly title: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Redis could not be reached in time: 503 with Retry-After, never a hanging request. */
export class UnavailableError extends ProblemError {
  constructor(cause: unknown) {
    super(503, "Service unavailable", "The event store is unreachable; retry shortly", {}, {
      cause,
    });
  }
}

/** A pipeline failure worth retrying: timeouts, 429 and 5xx from a provider, network errors. */
export class RetryableError extends Error {
  constructor(message: string, options?: ErrorOptions & { retryAfterMs?: number }) {
    super(message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
  readonly retryAfterMs?: number;
}

/** A pipeline failure that retrying cannot fix: bad input, a provider's 4xx. */
export class UnrecoverableError extends Error {}

/** Any failure not marked unrecoverable is retried. */
export function isRetryable(error: unknown): boolean {
  return !(error instanceof UnrecoverableError);
}
