import type { Partition, Partitions } from "../partitions.ts";
import type { RedisClient } from "../redis/client.ts";
import { EventFeed, type EventFeedOptions, type Refusal } from "./event_feed.ts";
import { type CloseReason, type FeedItem, HEARTBEAT, type Subscription } from "./subscription.ts";

/**
 * The process's event feeds, one per partition (each its own XREAD connection, opened with its
 * first subscriber: a Cluster refuses one XREAD over streams of several slots). A task's stream
 * subscribes to its partition's feed; the all-tasks stream to every feed (`subscribeAll`).
 * SSE_MAX_CLIENTS bounds the streams of the process, an all-tasks stream counting once.
 */
export class EventFeeds {
  readonly list: readonly EventFeed[];
  /** Open all-partition subscriptions: each holds a slot in every feed but counts once. */
  #spanning = 0;
  #closed = false;

  constructor(
    readonly partitions: Partitions,
    readonly options: Omit<EventFeedOptions, "keys" | "connect"> & {
      /** Opens a feed's own blocking connection, named after its partition. */
      connect: (name: string) => RedisClient;
    },
  ) {
    this.list = partitions.list.map((p) =>
      new EventFeed({
        ...options,
        keys: p.keys,
        connect: () =>
          options.connect(partitions.count === 1 ? "event-feed" : `event-feed:${p.index}`),
      })
    );
  }

  /** The feed of one partition. */
  of(partition: Partition): EventFeed {
    return this.list[partition.index];
  }

  /** Open event streams in this process. */
  get clients(): number {
    const all = this.list.reduce((n, feed) => n + feed.clients, 0);
    return all - this.#spanning * (this.list.length - 1);
  }

  /** Subscribers dropped for falling behind, since start. */
  get dropped(): number {
    return this.list.reduce((n, feed) => n + feed.dropped, 0);
  }

  /** A subscription to one task's events in its partition (see EventFeed.subscribe). */
  subscribe(
    partition: Partition,
    taskId: string | null,
    accepts?: (item: FeedItem) => boolean,
  ): Subscription | Refusal {
    if (this.#closed) return "closed";
    if (this.clients >= this.options.maxClients) return "full";
    return this.of(partition).subscribe(taskId, accepts);
  }

  /**
   * One subscription per partition, for the all-tasks stream: `accepts` is given each feed's
   * partition. Closing one closes them all.
   */
  subscribeAll(
    accepts: (partition: Partition, item: FeedItem) => boolean,
  ): SpanningSubscription | Refusal {
    if (this.#closed) return "closed";
    if (this.clients >= this.options.maxClients) return "full";
    const subs: Subscription[] = [];
    for (const partition of this.partitions.list) {
      const sub = this.of(partition).subscribe(null, (item) => accepts(partition, item));
      if (typeof sub === "string") {
        for (const s of subs) s.close("ended");
        return sub;
      }
      subs.push(sub);
    }
    this.#spanning++;
    const spanning = new SpanningSubscription(subs);
    spanning.onClose(() => this.#spanning--);
    return spanning;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.list.map((feed) => feed.close()));
  }
}

/** The subscriptions of every partition, read as one: items come with their partition. */
export class SpanningSubscription {
  readonly ready: Promise<void>;
  #pending: (Promise<{ index: number; item: FeedItem | typeof HEARTBEAT | null }> | null)[];
  #reason: CloseReason | null = null;
  readonly #listeners: ((reason: CloseReason) => void)[] = [];

  constructor(readonly subs: Subscription[]) {
    this.ready = Promise.all(subs.map((s) => s.ready)).then(() => {});
    this.#pending = subs.map(() => null);
    for (const sub of subs) sub.onClose((reason) => this.close(reason));
  }

  /** Each partition's position when its subscription went live (set once `ready` resolves). */
  get startIds(): string[] {
    return this.subs.map((s) => s.startId!);
  }

  get reason(): CloseReason | null {
    return this.#reason;
  }

  /** The next item of any partition, with the partition's index; null once closed. */
  async next(): Promise<{ index: number; item: FeedItem | typeof HEARTBEAT } | null> {
    if (this.#reason) return null;
    this.#pending = this.#pending.map((p, index) =>
      p ?? this.subs[index].next().then((item) => ({ index, item }))
    );
    const { index, item } = await Promise.race(
      this.#pending as Promise<{
        index: number;
        item: FeedItem | typeof HEARTBEAT | null;
      }>[],
    );
    this.#pending[index] = null;
    if (item === null) return null;
    return { index, item };
  }

  onClose(listener: (reason: CloseReason) => void): void {
    if (this.#reason) listener(this.#reason);
    else this.#listeners.push(listener);
  }

  close(reason: CloseReason): void {
    if (this.#reason) return;
    this.#reason = reason;
    for (const sub of this.subs) sub.close(reason);
    for (const listener of this.#listeners.splice(0)) listener(reason);
  }
}
