import type { StoredEvent } from "../events.ts";

/** One event as the feed hands it to subscribers: decoded once, its SSE frame encoded once. */
export interface FeedItem {
  id: string;
  event: StoredEvent;
  /** `id:`, `event:` and `data:` lines of the public event, shared by every subscriber. */
  frame: Uint8Array;
}

/** Queued when a subscriber has been idle for a heartbeat interval: write a comment line. */
export const HEARTBEAT = Symbol("heartbeat");

/**
 * Why a subscription ended: its stream finished (`ended`), the client went away (`client`), it
 * fell more than its buffer behind (`overflow`), or the process is stopping (`shutdown`).
 */
export type CloseReason = "ended" | "client" | "overflow" | "shutdown";

/**
 * A subscriber's bounded queue between the feed (which pushes, never waits) and the one loop
 * writing to its connection (which may wait on a slow client). Past `capacity` queued events the
 * subscription is closed as `overflow`: one slow client costs at most `capacity` references to
 * shared items and never slows the feed or the others.
 */
export class Subscription {
  readonly #queue: (FeedItem | typeof HEARTBEAT)[] = [];
  #head = 0;
  #wake: (() => void) | null = null;
  #reason: CloseReason | null = null;
  readonly #onClose: ((reason: CloseReason) => void)[] = [];
  /**
   * The feed's position when this subscription went live: every later event reaches it, every
   * earlier one is in the log (read it with XRANGE up to here). Set once `ready` resolves.
   */
  startId: string | null = null;

  constructor(
    readonly capacity: number,
    readonly ready: Promise<void>,
    /** The task this subscription follows, or null for all tasks. */
    readonly taskId: string | null,
    /** A cheap synchronous pre-filter applied by the feed; the writer may filter further. */
    readonly accepts: (item: FeedItem) => boolean,
    readonly detach: (subscription: Subscription) => void,
  ) {}

  /** Why it closed, or null while open. */
  get reason(): CloseReason | null {
    return this.#reason;
  }

  /** Events waiting to be written. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  /** Called by the feed; closes the subscription as `overflow` when the queue is full. */
  push(item: FeedItem | typeof HEARTBEAT): void {
    if (this.#reason) return;
    if (item === HEARTBEAT) {
      if (this.queued > 0) return;
    } else if (this.queued >= this.capacity) {
      this.close("overflow");
      return;
    }
    this.#queue.push(item);
    this.#wake?.();
  }

  /** The next queued item, waiting for one; null once closed (queued items are dropped then). */
  async next(): Promise<FeedItem | typeof HEARTBEAT | null> {
    while (!this.#reason && this.queued === 0) {
      await new Promise<void>((resolve) => this.#wake = resolve);
      this.#wake = null;
    }
    if (this.#reason) return null;
    const item = this.#queue[this.#head];
    this.#queue[this.#head++] = undefined as never;
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Runs `listener` once when the subscription closes (at once if it already has). */
  onClose(listener: (reason: CloseReason) => void): void {
    if (this.#reason) listener(this.#reason);
    else this.#onClose.push(listener);
  }

  /** Ends the subscription and frees its slot; the first reason given is kept. */
  close(reason: CloseReason): void {
    if (this.#reason) return;
    this.#reason = reason;
    this.#queue.length = 0;
    this.#head = 0;
    this.detach(this);
    this.#wake?.();
    for (const listener of this.#onClose.splice(0)) listener(reason);
  }
}
