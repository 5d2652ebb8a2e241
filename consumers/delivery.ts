import { ClaimLostError, type EventStore, type SettleInput } from "../src/event_store.ts";
import { isRetryable, RetryableError } from "../src/errors.ts";
import { idTime, type NewEvent } from "../src/events.ts";
import type { Logger } from "../src/log.ts";
import { observeSettled } from "../src/metrics/events.ts";
import type { Metrics } from "../src/metrics/registry.ts";
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
  /** The process's metrics: every event appended through a delivery is observed here. */
  metrics?: Metrics;
}

/**
 * One entry delivered to a consumer, with what every handler needs to settle it: fenced event
 * appends (refused once another consumer owns the entry), acknowledging, dead-lettering, and
 * attempts with backoff. At-least-once: a crash before the final settle redelivers the entry.
 */
export class Delivery {
  /** Between this delivery's first task.started and its outcome: counted in tasks_in_progress. */
  #running = false;
  #startObserved = false;
  /** When the current attempt began (performance.now()), for a callback attempt's duration. */
  #attemptStart: number | null = null;

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

  async #settle(input: Pick<SettleInput, "taskId" | "mode" | "events" | "deadLetter">) {
    const { store, stream, group, consumer } = this.options;
    const attemptMs = this.#attemptStart === null ? null : performance.now() - this.#attemptStart;
    const id = await store.settle({
      ...input,
      stream,
      group,
      consumer,
      entryId: this.entry.id,
      at: this.now(),
    });
    try {
      this.#observe(input.mode, input.events ?? [], attemptMs);
    } catch (error) {
      // Metrics never turn a settle that went through into a failed attempt.
      this.log.debug("Metrics observation failed", { error: String(error) });
    }
    return id;
  }

  /** Metrics of a settle that went through: the events it appended, and tasks in progress. */
  #observe(mode: SettleInput["mode"], events: NewEvent[], attemptMs: number | null) {
    const metrics = this.options.metrics;
    if (!metrics) return;
    const started = events.find((e) => e.type === "task.started");
    const firstStart = Boolean(
      started && !this.#startObserved && !this.entry.reclaimed &&
        (started.data as { attempt?: number }).attempt === 1,
    );
    if (started) this.#startObserved = true;
    observeSettled(metrics, {
      mode,
      events,
      entryMs: idTime(this.entry.id),
      firstStart,
      attemptMs,
    });
    if (started && !this.#running) {
      this.#running = true;
      metrics.tasksInProgress.inc();
    }
    if (mode !== "append") this.#stopRunning();
  }

  #stopRunning() {
    if (!this.#running) return;
    this.#running = false;
    this.options.metrics?.tasksInProgress.dec();
  }

  /**
   * Runs attempts from `first` until one succeeds or the policy gives up, waiting between them
   * (the receiver's Retry-After, else exponential backoff with jitter). Stopping or losing the
   * entry ends it at once, leaving the entry pending for another consumer.
   */
  async attempts<F extends Failure = Failure>(spec: Attempts<F>): Promise<void> {
    const classify = spec.classify ?? (failureOf as (error: unknown) => F);
    try {
      for (let attempt = spec.first;; attempt++) {
        await spec.begin?.(attempt);
        this.#attemptStart = performance.now();
        try {
          return await spec.run(attempt);
        } catch (error) {
          if (this.signal.aborted || error instanceof ClaimLostError) throw error;
          const failure = classify(error);
          const next = decideRetry(attempt, failure, spec.policy);
          if (next.type === "give_up") return await spec.givingUp(failure, attempt);
          await spec.retrying(failure, attempt, next.waitMs);
          this.#attemptStart = null;
          await sleep(next.waitMs, this.signal);
        }
      }
    } finally {
      // Stopped, the entry lost, or a settle that failed: the task is no longer running here.
      this.#attemptStart = null;
      this.#stopRunning();
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
