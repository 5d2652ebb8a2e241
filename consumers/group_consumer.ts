import type { RedisClient } from "../src/redis/client.ts";
import { isMissingGroup } from "../src/consumer_registry.ts";
import { ClaimLostError } from "../src/event_store.ts";
import { compareIds, decodeEvent, type StoredEvent } from "../src/events.ts";
import type { Logger } from "../src/log.ts";
import { heartbeatScript } from "../src/redis/scripts.ts";
import { ensureGroup, readGroup, type StreamEntry } from "../src/redis/streams.ts";
import { sleep } from "../src/sleep.ts";

/** Thrown by a handler for an entry it can never handle (it does not decode): skipped and acked. */
export class MalformedEntry extends Error {}

/** Decodes an event entry, or throws MalformedEntry. */
export function decodeOrSkip(entry: StreamEntry): StoredEvent {
  try {
    return decodeEvent(entry.id, entry.fields);
  } catch (error) {
    throw new MalformedEntry(`Event ${entry.id} does not decode: ${String(error).slice(0, 300)}`);
  }
}

export interface GroupConsumerOptions {
  redis: RedisClient;
  /** A dedicated connection for XREADGROUP BLOCK. */
  blocking: RedisClient;
  stream: string;
  group: string;
  consumer: string;
  concurrency: number;
  /**
   * Handler slots shared with the consumers of the same kind on the other partitions, so
   * WORKER_CONCURRENCY bounds the process, not each partition; by default its own `concurrency`.
   */
  slots?: Slots;
  claimIdleMs: number;
  log: Logger;
  /**
   * Where a new group starts: "0" (every entry, for work that may predate the consumers) or "$"
   * (only what comes after, for downstream groups added to a stream with history).
   */
  startAt?: "0" | "$";
  /** Entries this consumer does nothing with; they are acknowledged in bulk without a handler. */
  ignores?: (entry: StreamEntry) => boolean;
  /**
   * Handles one entry. The signal aborts when the process stops or another consumer took the
   * entry over; the handler must then stop without acknowledging, leaving the entry pending.
   */
  handle(entry: StreamEntry, signal: AbortSignal): Promise<void>;
  /** Told how many entries each reclaim took over (stream_group_reclaims_total). */
  onReclaim?(count: number): void;
}

/** Thrown into a handler's signal when the process stops before the entry was settled. */
export class Stopping extends Error {}

/**
 * Handler slots: a bound on handlers running at once, shared by the consumers of one kind on
 * every partition. A reader reserves slots before it reads and gives back what it did not use.
 * Readers waiting for a slot are served first come, first served: a slot given back goes to the
 * longest-waiting reader, and nobody takes a free slot while others wait, so no partition's reader
 * is starved by the others (also with fewer slots than partitions).
 */
export class Slots {
  #used = 0;
  #queue: ((granted: number) => void)[] = [];

  constructor(readonly limit: number, readonly shared = false) {}

  get free(): number {
    return this.limit - this.#used;
  }

  /** Takes up to `count` free slots (none while readers wait for one); returns how many. */
  reserve(count: number): number {
    if (this.#queue.length) return 0;
    const taken = Math.max(0, Math.min(count, this.free));
    this.#used += taken;
    return taken;
  }

  /** Waits in line for one slot: resolves 1 once it is this reader's, 0 when woken to stop. */
  wait(): Promise<number> {
    return new Promise((resolve) => this.#queue.push(resolve));
  }

  /** Gives slots back; each goes to the longest-waiting reader, if any. */
  release(count: number): void {
    if (count <= 0) return;
    this.#used -= count;
    while (this.#queue.length && this.free > 0) {
      this.#used++;
      this.#queue.shift()!(1);
    }
  }

  /** Wakes every waiting reader without a slot (stopping). */
  wake(): void {
    for (const resolve of this.#queue.splice(0)) resolve(0);
  }
}

/**
 * One consumer of a Redis Streams consumer group, running up to `concurrency` handlers at once.
 *
 * At-least-once: entries are acknowledged by their handlers, after their effects are durable.
 * Entries left idle for `claimIdleMs` by a crashed consumer are taken over with XAUTOCLAIM; a
 * running handler keeps its entry's claim fresh (every claimIdleMs/3), so a live consumer's work is
 * never taken over, and loses it (its signal aborts) if it was.
 */
export class GroupConsumer {
  readonly #inflight = new Map<string, { abort: AbortController; done: Promise<void> }>();
  readonly #stop = new AbortController();
  readonly #slots: Slots;
  /** Whether the last read found entries (a shared reader then reads on without blocking). */
  #busy = false;
  #loop: Promise<void> | null = null;
  /** Where the next XAUTOCLAIM scan resumes, so a busy consumer still reaches the whole list. */
  #claimCursor = "0-0";
  /**
   * The newest entry id this consumer has read (or, before any, a stream id just before it
   * started): where a lost "$" group is recreated, so it neither skips what came since nor repeats
   * what came before.
   */
  #lastId = "0-0";

  constructor(readonly options: GroupConsumerOptions) {
    this.#slots = options.slots ?? new Slots(options.concurrency);
  }

  get inflight(): number {
    return this.#inflight.size;
  }

  /** Creates the group if needed (at `startAt`), then runs the loop. */
  async start(): Promise<void> {
    await ensureGroup(
      this.options.redis,
      this.options.stream,
      this.options.group,
      this.options.startAt ?? "0",
    );
    this.#lastId = `${Math.max(0, Date.now() - 1_000)}-0`;
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    const { blocking, consumer, claimIdleMs, log, stream, group } = this.options;
    const slots = this.#slots;
    let nextClaim = 0;
    while (!this.#stop.signal.aborted) {
      let reserved = 0;
      try {
        // One slot first, in line behind the other partitions' readers waiting for one.
        reserved = slots.reserve(1) || await slots.wait();
        if (reserved === 0 || this.#stop.signal.aborted) {
          slots.release(reserved);
          continue;
        }
        if (Date.now() >= nextClaim) {
          nextClaim = Date.now() + Math.max(50, Math.floor(claimIdleMs / 2));
          reserved += slots.reserve(slots.free);
          const found = await this.#reclaim(reserved, () => reserved--);
          if (found > 0) {
            slots.release(reserved);
            reserved = 0;
            continue;
          }
          // Nothing reclaimed: keep one slot for the read.
          slots.release(reserved - 1);
          reserved = 1;
        }
        // A shared reader blocks for one entry while its partition is idle, so idle partitions
        // hold one slot each at most; once entries come, it reads the rest without blocking.
        const block = !slots.shared || !this.#busy;
        if (!slots.shared || !block) reserved += slots.reserve(slots.free);
        const entries = await readGroup(blocking, {
          stream,
          group,
          consumer,
          count: reserved,
          // Short blocks keep a stop prompt; an idle consumer costs Redis four reads a second.
          blockMs: block ? Math.min(250, Math.max(50, Math.floor(claimIdleMs / 2))) : undefined,
        });
        this.#busy = entries.length > 0;
        const newest = entries.at(-1)?.id;
        if (newest && compareIds(newest, this.#lastId) > 0) this.#lastId = newest;
        // Entries read while stopping stay pending; another consumer reclaims them.
        if (!this.#stop.signal.aborted) await this.#dispatch(entries, () => reserved--);
        slots.release(reserved);
        reserved = 0;
      } catch (error) {
        slots.release(reserved);
        if (this.#stop.signal.aborted) break;
        const failure = isMissingGroup(error)
          ? await this.#recreate().then(() => null, (e) => e)
          : error;
        if (failure === null) continue;
        log.error("Consumer read failed", { group, error: String(failure) });
        await sleep(500).catch(() => {});
      }
    }
  }

  /**
   * Recreates the group after Redis lost it (restarted empty, FLUSHALL, a fresh replica promoted,
   * or the stream or group deleted). A group starting at "0" starts there again; a downstream
   * group ("$") starts after the newest entry this consumer read, not at the stream's end: entries
   * a worker appended after that (in a reset log, all of them, since stream ids only grow with
   * Redis's clock) are still delivered, with no window between looking and creating. Another
   * process may recreate it first: that is fine.
   */
  async #recreate(): Promise<void> {
    const { redis, stream, group, log } = this.options;
    const start = (this.options.startAt ?? "0") === "0" ? "0" : this.#lastId;
    await ensureGroup(redis, stream, group, start);
    this.#claimCursor = "0-0";
    log.warn("Consumer group was missing (Redis lost its data?); recreated it", {
      group,
      start_at: start,
    });
  }

  /** Starts a handler per entry, each on a reserved slot (`onSpawn` says one was used). */
  async #dispatch(entries: StreamEntry[], onSpawn: () => void): Promise<void> {
    const ignored: string[] = [];
    for (const entry of entries) {
      if (this.options.ignores?.(entry)) ignored.push(entry.id);
      else {
        this.#spawn(entry);
        onSpawn();
      }
    }
    if (ignored.length) {
      await this.options.redis.xack(this.options.stream, this.options.group, ...ignored);
    }
  }

  /** Takes over entries another consumer left idle for claimIdleMs (it crashed or stalled). */
  async #reclaim(count: number, onSpawn: () => void): Promise<number> {
    if (count <= 0) return 0;
    const { redis, stream, group, consumer, claimIdleMs, log } = this.options;
    const reply = await redis.xautoclaim(
      stream,
      group,
      consumer,
      claimIdleMs,
      this.#claimCursor,
      "COUNT",
      count,
    ) as [
      string,
      [string, string[] | null][],
      string[],
    ];
    this.#claimCursor = reply[0];
    const entries = reply[1]
      .filter(([id]) => !this.#inflight.has(id))
      .map(([id, fields]) => ({ id, fields: fields ?? [], reclaimed: true }));
    for (const entry of entries) log.warn("Reclaimed a stalled entry", { group, entry: entry.id });
    if (entries.length) this.options.onReclaim?.(entries.length);
    // Claimed while stopping: they stay pending for another consumer.
    if (!this.#stop.signal.aborted) await this.#dispatch(entries, onSpawn);
    return entries.length;
  }

  #spawn(entry: StreamEntry): void {
    const abort = new AbortController();
    const heartbeat = this.#keepClaimFresh(entry.id, abort);
    const done = this.options.handle(entry, abort.signal)
      .catch(async (error) => {
        if (error instanceof MalformedEntry) {
          // It can never be handled: acknowledged (and logged) so it does not come back forever.
          this.options.log.error("Skipping a malformed entry", {
            group: this.options.group,
            entry: entry.id,
            error: error.message,
          });
          await this.options.redis.xack(this.options.stream, this.options.group, entry.id)
            .catch(() => {});
        } else if (abort.signal.aborted || error instanceof ClaimLostError) {
          this.options.log.warn("Entry left pending for another consumer", {
            group: this.options.group,
            entry: entry.id,
            reason: String(abort.signal.reason ?? error),
          });
        } else {
          this.options.log.error("Handler failed; the entry stays pending", {
            group: this.options.group,
            entry: entry.id,
            error: String(error),
          });
        }
      })
      .finally(() => {
        clearInterval(heartbeat);
        this.#inflight.delete(entry.id);
        this.#slots.release(1);
      });
    this.#inflight.set(entry.id, { abort, done });
  }

  /** Refreshes the entry's idle time while it runs; aborts the handler if another took it. */
  #keepClaimFresh(entryId: string, abort: AbortController) {
    const { redis, stream, group, consumer, claimIdleMs } = this.options;
    return setInterval(async () => {
      try {
        const ok = await heartbeatScript.run(redis, {
          keys: { stream },
          args: { group, consumer, entry_id: entryId },
        });
        if (ok === 0) abort.abort(new ClaimLostError(`Entry "${entryId}" was reclaimed`));
      } catch {
        // Redis unreachable: keep going; the fenced writes decide whether the work counts.
      }
    }, Math.max(20, Math.floor(claimIdleMs / 3)));
  }

  /**
   * Stops reading, lets running handlers finish for up to `timeoutMs`, then aborts the rest,
   * whose entries stay pending for another consumer.
   */
  async stop(timeoutMs: number): Promise<{ finished: number; abandoned: number }> {
    this.#stop.abort();
    this.#slots.wake();
    const running = [...this.#inflight.values()];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const all = Promise.all(running.map((r) => r.done));
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    const abandoned = timedOut ? this.#inflight.size : 0;
    if (timedOut) {
      for (const r of this.#inflight.values()) r.abort.abort(new Stopping("Shutting down"));
      await all;
    }
    await this.#loop;
    return { finished: running.length - abandoned, abandoned };
  }
}
