import type { Keys } from "../keys.ts";
import type { RedisClient } from "../redis/client.ts";

/** How often a process says it runs projections, and how long a silent one still counts. */
const BEAT_MS = 1_000;
const ALIVE_MS = 5_000;

/**
 * With several partitions: this process's fair share of the projection leases, so processes
 * running projections split the partitions' projection leases between them instead of the first
 * one taking all. Each process beats into `{vp}:projection-processes` (owner → ms); the share is
 * ceil(leases / live processes). A projector takes a free lease only below the share, and gives
 * its lease up when the process holds more than the share (another process joined).
 */
export class LeaseShare {
  #held = 0;
  #processes = 1;
  #timer: ReturnType<typeof setInterval> | null = null;

  constructor(
    readonly redis: RedisClient,
    readonly keys: Keys,
    readonly owner: string,
    /** Leases in all: one per partition. */
    readonly total: number,
  ) {}

  get share(): number {
    return Math.ceil(this.total / Math.max(1, this.#processes));
  }

  get held(): number {
    return this.#held;
  }

  /** Whether this process may take one more lease. */
  mayTake(): boolean {
    return this.#held < this.share;
  }

  /**
   * When this process holds more than its share, counts one lease as given up and says so: only
   * the excess is given up, however many projectors ask at once.
   */
  giveUp(): boolean {
    if (this.#held <= this.share) return false;
    this.#held--;
    return true;
  }

  took(): void {
    this.#held++;
  }

  left(): void {
    this.#held--;
  }

  async start(): Promise<void> {
    await this.#beat();
    this.#timer = setInterval(() => this.#beat().catch(() => {}), BEAT_MS);
  }

  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    await this.redis.hdel(this.keys.projectionProcesses, this.owner).catch(() => {});
  }

  async #beat(): Promise<void> {
    const now = Date.now();
    const key = this.keys.projectionProcesses;
    await this.redis.hset(key, this.owner, String(now));
    const all = await this.redis.hgetall(key);
    const stale = Object.entries(all).filter(([, at]) => now - Number(at) > ALIVE_MS);
    if (stale.length) await this.redis.hdel(key, ...stale.map(([owner]) => owner));
    this.#processes = Object.keys(all).length - stale.length;
  }
}
