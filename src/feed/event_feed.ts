import type { RedisClient } from "../redis/client.ts";
import { decodeEvent } from "../events.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import { closeRedis } from "../redis/client.ts";
import { eventFrame } from "./rules.ts";
import { type FeedItem, HEARTBEAT, Subscription } from "./subscription.ts";
import { TaskDirectory } from "./task_directory.ts";

export interface EventFeedOptions {
  keys: Keys;
  /** The commands connection, for the task directory's lookups. */
  redis: RedisClient;
  /** Opens the feed's own connection, which blocks in XREAD (never the shared one). */
  connect: () => RedisClient;
  log: Logger;
  /** SSE_MAX_CLIENTS: subscriptions at once in this process. */
  maxClients: number;
  /** SSE_BUFFER_EVENTS: events a subscriber may have waiting before it is dropped. */
  bufferEvents: number;
  /** A heartbeat to idle subscribers this often (default 15 s). */
  heartbeatMs?: number;
  /** How long one XREAD blocks (default 5 s). */
  blockMs?: number;
}

/** Why `subscribe` found no room. */
export type Refusal = "full" | "closed";

/**
 * The task events of this process's SSE clients: ONE reader of the event stream per process
 * (plain XREAD BLOCK on a dedicated connection, not a consumer group, so every process sees every
 * event), dispatching each event in memory to the subscribers of its task and to the all-tasks
 * subscribers. Each event is decoded and framed once for all of them. The reader starts with the
 * first subscriber, at the stream's end, and runs until `close`; a failed read is retried from the
 * last id seen, so a Redis restart loses nothing that is still in the stream.
 */
export class EventFeed {
  readonly directory: TaskDirectory;
  readonly #byTask = new Map<string, Set<Subscription>>();
  readonly #all = new Set<Subscription>();
  #clients = 0;
  #dropped = 0;
  #lastId: string | null = null;
  #starting: Promise<void> | null = null;
  #connection: RedisClient | null = null;
  #heartbeat: ReturnType<typeof setInterval> | null = null;
  #reader: Promise<void> | null = null;
  #closed = false;

  constructor(readonly options: EventFeedOptions) {
    this.directory = new TaskDirectory(options.redis, options.keys);
  }

  /** Open subscriptions (SSE clients) in this process. */
  get clients(): number {
    return this.#clients;
  }

  /** Subscribers dropped for falling more than their buffer behind, since start. */
  get dropped(): number {
    return this.#dropped;
  }

  /** The id of the last event dispatched (the stream's end when the reader started). */
  get position(): string | null {
    return this.#lastId;
  }

  /**
   * A subscription to one task's events, or all tasks' (`taskId` null) that pass `accepts`; a
   * refusal when SSE_MAX_CLIENTS are open or the feed is closing. Wait for its `ready` (the reader
   * running, its `startId` set) before reading the log up to `startId`: from then on every newer
   * event reaches it.
   */
  subscribe(
    taskId: string | null,
    accepts: (item: FeedItem) => boolean = () => true,
  ): Subscription | Refusal {
    if (this.#closed) return "closed";
    if (this.#clients >= this.options.maxClients) return "full";
    const ready = this.#start();
    const subscription = new Subscription(
      this.options.bufferEvents,
      ready,
      taskId,
      accepts,
      (s) => this.#detach(s),
    );
    // Running: live from the last dispatched id. Starting: #start sets it from the stream's end.
    if (this.#lastId !== null) subscription.startId = this.#lastId;
    this.#clients++;
    if (taskId === null) this.#all.add(subscription);
    else {
      let set = this.#byTask.get(taskId);
      if (!set) this.#byTask.set(taskId, set = new Set());
      set.add(subscription);
    }
    subscription.onClose((reason) => {
      if (reason === "overflow") {
        this.#dropped++;
        this.options.log.warn("SSE client dropped: it fell behind by more than its buffer", {
          task_id: taskId,
          buffer_events: this.options.bufferEvents,
        });
      }
    });
    return subscription;
  }

  /** Stops the reader, ends every subscription (`shutdown`) and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    for (const s of [...this.#all, ...[...this.#byTask.values()].flatMap((set) => [...set])]) {
      s.close("shutdown");
    }
    const connection = this.#connection;
    if (connection) {
      // A blocked XREAD is not answered before its timeout: drop the connection, do not QUIT.
      connection.disconnect();
      await closeRedis(connection);
    }
    await this.#reader?.catch(() => {});
  }

  #detach(subscription: Subscription): void {
    this.#clients--;
    if (subscription.taskId === null) this.#all.delete(subscription);
    else {
      const set = this.#byTask.get(subscription.taskId);
      set?.delete(subscription);
      if (set?.size === 0) this.#byTask.delete(subscription.taskId);
    }
  }

  /** Starts the reader once: reads the stream's last id first, so no event falls in between. */
  #start(): Promise<void> {
    if (this.#starting) return this.#starting;
    const starting = (async () => {
      const connection = this.#connection ??= this.options.connect();
      const [last] = await connection.xrevrange(
        this.options.keys.eventStream,
        "+",
        "-",
        "COUNT",
        1,
      );
      if (this.#closed) throw new Error("The event feed is closed");
      this.#lastId = last?.[0] ?? "0-0";
      for (const s of this.#subscriptions()) s.startId ??= this.#lastId;
      this.#reader = this.#read(connection);
      const every = this.options.heartbeatMs ?? 15_000;
      this.#heartbeat = setInterval(() => {
        for (const s of this.#subscriptions()) s.push(HEARTBEAT);
      }, every);
    })();
    // A failed start (Redis down) is tried again by the next subscriber.
    this.#starting = starting.catch((error) => {
      this.#starting = null;
      throw error;
    });
    return this.#starting;
  }

  *#subscriptions(): Iterable<Subscription> {
    yield* this.#all;
    for (const set of this.#byTask.values()) yield* set;
  }

  async #read(connection: RedisClient): Promise<void> {
    const { keys, log } = this.options;
    let failures = 0;
    while (!this.#closed) {
      let reply: [string, [string, string[] | null][]][] | null;
      try {
        reply = await connection.xread(
          // Never more in one read than a subscriber's buffer: a burst alone drops no one.
          "COUNT",
          Math.min(1_000, this.options.bufferEvents),
          "BLOCK",
          this.options.blockMs ?? 5_000,
          "STREAMS",
          keys.eventStream,
          this.#lastId!,
        ) as typeof reply;
        failures = 0;
      } catch (error) {
        if (this.#closed) return;
        if (failures++ === 0) {
          log.warn("Event feed read failed, retrying", { error: String(error) });
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(50 * 2 ** failures, 1_000)));
        continue;
      }
      if (this.#closed) return;
      for (const [id, fields] of reply?.[0]?.[1] ?? []) {
        this.#lastId = id;
        if (fields) this.#dispatch(id, fields);
      }
    }
  }

  /** Hands one entry to its task's subscribers and the all-tasks ones; decodes only if needed. */
  #dispatch(id: string, fields: string[]): void {
    let taskId: string | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === "task_id") taskId = fields[i + 1];
    }
    const own = taskId === undefined ? undefined : this.#byTask.get(taskId);
    if (!own && this.#all.size === 0) return;
    let item: FeedItem;
    try {
      const event = decodeEvent(id, fields);
      item = { id, event, frame: eventFrame(event) };
    } catch (error) {
      this.options.log.error("Skipping a malformed event", { entry: id, error: String(error) });
      return;
    }
    this.directory.observe(item.event);
    if (own) { for (const s of own) s.push(item); }
    for (const s of this.#all) if (s.accepts(item)) s.push(item);
  }
}
