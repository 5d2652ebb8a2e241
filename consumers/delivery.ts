import { ClaimLostError, type EventStore, type SettleInput } from "../src/event_store.ts";
import { isRetryable, RetryableError } from "../src/errors.ts";
import type { NewEvent } from "../src/events.ts";
import type { Logger } from "../src/log.ts";
import type { StreamEntry } from "../src/redis/streams.ts";
import { decideRetry, type RetryPolicy } from "../src/retry.ts";
import { sleep } from "../src/sleep.ts";

/** A failed attempt as the retry policy sees it. */
export interface Failure {
  message: string;
  retryable: boolean;
  /** How long the provider or receiver asked us to wait, when it said. */
  retryAfterMs?: number;
}

/** The failure of a step or a store: RetryableError and network trouble retry, the rest do not. */
export function failureOf(error: unknown): Failure {
  return {
    message: error instanceof Error ? error.message : String(error),
    retryable: isRetryable(error),
    retryAfterMs: error instanceof RetryableError ? error.retryAfterMs : undefined,
  };
}

export interface Attempts<F extends Failure> {
  /** The first attempt's number (later ones count on from it). */
  first: number;
  policy: RetryPolicy;
  /**
   * Records that attempt `attempt` begins; a failure here is not the attempt's (it leaves the
   * entry pending for a redelivery, spending no attempt).
   */
  begin?(attempt: number): Promise<void>;
  /** One attempt; returning means done. */
  run(attempt: number): Promise<void>;
  /** Records that attempt `attempt` failed and the next follows after `waitMs`. */
  retrying(failure: F, attempt: number, waitMs: number): Promise<void>;
  /** Records the final failure (unrecoverable, or the last attempt). */
  givingUp(failure: F, attempt: number): Promise<void>;
  /** How a thrown error counts; failureOf by default. */
  classify?(error: unknown): F;
}

export interface DeliveryOptions {
  store: EventStore;
  /** The stream and group the entry was read from, and this process's consumer name. */
  stream: string;
  group: string;
  consumer: string;
  clock: () => Date;
}

/**
 * One entry delivered to a consumer, with what every handler needs to settle it: fenced event
 * appends (refused once another consumer owns the entry), acknowledging, dead-lettering, and
 * attempts with backoff. At-least-once: a crash before the final settle redelivers the entry.
 */
export class Delivery {
  constructor(
    readonly entry: StreamEntry,
    readonly signal: AbortSignal,
    readonly log: Logger,
    readonly options: DeliveryOptions,
  ) {}

  /** The current time as ISO text, for events. */
  now(): string {
    return this.options.clock().toISOString();
  }

  /** Appends the task's events while the entry is still ours; "ack" also acknowledges it. */
  settle(taskId: string, mode: "append" | "ack", events: NewEvent[] = []): Promise<string> {
    return this.#settle({ taskId, mode, events });
  }

  /**
   * Appends `events`, a dead letter holding `payload` (the original request) and
   * task.dead_lettered, and acknowledges the entry: one fenced script.
   */
  async deadLetter(
    taskId: string,
    letter: { error: string; attempts: number; payload: string },
    events: NewEvent[] = [],
  ): Promise<void> {
    await this.#settle({ taskId, mode: "dead", events, deadLetter: letter });
  }

  #settle(input: Pick<SettleInput, "taskId" | "mode" | "events" | "deadLetter">) {
    const { store, stream, group, consumer } = this.options;
    return store.settle({
      ...input,
      stream,
      group,
      consumer,
      entryId: this.entry.id,
      at: this.now(),
    });
  }

  /**
   * Runs attempts from `first` until one succeeds or the policy gives up, waiting between them
   * (the receiver's Retry-After, else exponential backoff with jitter). Stopping or losing the
   * entry ends it at once, leaving the entry pending for another consumer.
   */
  async attempts<F extends Failure = Failure>(spec: Attempts<F>): Promise<void> {
    const classify = spec.classify ?? (failureOf as (error: unknown) => F);
    for (let attempt = spec.first;; attempt++) {
      await spec.begin?.(attempt);
      try {
        return await spec.run(attempt);
      } catch (error) {
        if (this.signal.aborted || error instanceof ClaimLostError) throw error;
        const failure = classify(error);
        const next = decideRetry(attempt, failure, spec.policy);
        if (next.type === "give_up") return await spec.givingUp(failure, attempt);
        await spec.retrying(failure, attempt, next.waitMs);
        await sleep(next.waitMs, this.signal);
      }
    }
  }
}

/** A consumer group's handler: what it does with one delivered entry. */
export interface Handler {
  /** Entries it does nothing with; they are acknowledged in bulk without a delivery. */
  ignores?(entry: StreamEntry): boolean;
  /** Handles one entry and settles it; throwing leaves it pending (MalformedEntry: skipped). */
  handle(delivery: Delivery): Promise<void>;
}
