import type { RedisClient } from "./client.ts";
import { releaseLeaseScript, renewLeaseScript } from "./scripts.ts";

/**
 * A lease in Redis: a key holding its owner's name with a TTL, so one process at a time does
 * something and a crashed holder's lease runs out by itself. Only the owner can renew or release
 * it. A lease bounds who acts, not what lands: writes that must not come from a former holder
 * check the lease in the same script (as project.lua does).
 */
export class Lease {
  readonly #redis: RedisClient;

  constructor(
    redis: RedisClient,
    readonly key: string,
    readonly owner: string,
    readonly ttlMs: number,
  ) {
    this.#redis = redis;
  }

  /** Takes the lease if nobody holds it (SET NX PX); true when taken. */
  async acquire(): Promise<boolean> {
    return await this.#redis.set(this.key, this.owner, "PX", this.ttlMs, "NX") === "OK";
  }

  /** Extends the lease to ttlMs from now, only while this owner holds it; false when lost. */
  async renew(): Promise<boolean> {
    const reply = await renewLeaseScript.run(this.#redis, {
      keys: { lease: this.key },
      args: { owner: this.owner, ttl_ms: this.ttlMs },
    });
    return reply === 1;
  }

  /** Gives the lease up if this owner holds it; never throws (it expires anyway). */
  async release(): Promise<void> {
    await releaseLeaseScript.run(this.#redis, {
      keys: { lease: this.key },
      args: { owner: this.owner },
    }).catch(() => {});
  }

  /**
   * Renews every ttlMs/3 until the returned stop() is called; calls onLost once when a renewal
   * finds another holder (errors count as not lost), and stops renewing then.
   */
  keepAlive(onLost?: () => void): () => void {
    let stopped = false;
    const stop = () => {
      stopped = true;
      clearInterval(timer);
    };
    const timer = setInterval(async () => {
      // Redis unreachable: the lease may still be ours; the next renewal (or the fenced write)
      // finds out.
      const held = await this.renew().catch(() => true);
      if (held || stopped) return;
      stop();
      onLost?.();
    }, Math.max(1, Math.floor(this.ttlMs / 3)));
    return stop;
  }
}
