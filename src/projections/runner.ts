import type { RedisClient } from "../redis/client.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import type { Samples } from "../metrics/samples.ts";
import { viewGeneration } from "../queries.ts";
import { closeRedis } from "../redis/client.ts";
import { sleep } from "../sleep.ts";
import { Projector, resetProjections } from "./projector.ts";
import type { LeaseShare } from "./lease_share.ts";
import { createProjections } from "./registry.ts";

export interface ProjectionRunnerOptions {
  redis: RedisClient;
  /** Opens a dedicated connection for a projector (all its commands); the runner closes it. */
  blocking: (name: string) => RedisClient;
  keys: Keys;
  log: Logger;
  owner: string;
  viewTtlS: number;
  lag?: Samples;
  /** Run this generation only (a rebuild); by default follow the generation readers use. */
  generation?: number;
  /** How often to look for a swapped-in generation. */
  pollMs?: number;
  /** Events per read; a rebuild reads larger batches than live projection. */
  batchSize?: number;
  /** With several partitions: the process's fair share of the projection leases. */
  share?: LeaseShare;
}

/**
 * Runs the projector of the current generation of views (one for every registered projection),
 * and moves to the next generation when a rebuild swaps it in.
 */
export class ProjectionRunner {
  #projectors: Projector[] = [];
  #generation = -1;
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;

  constructor(readonly options: ProjectionRunnerOptions) {}

  get generation(): number {
    return this.#generation;
  }

  /** The consumer groups this runner's projectors read (none while it switches generations). */
  get groups(): string[] {
    return this.#projectors.flatMap((p) => p.groups);
  }

  async start(): Promise<void> {
    await this.#follow();
    if (this.options.generation === undefined) this.#loop = this.#watch();
  }

  async #watch(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      await sleep(this.options.pollMs ?? 1_000, this.#stop.signal).catch(() => {});
      if (this.#stop.signal.aborted) break;
      try {
        await this.#follow();
      } catch (error) {
        this.options.log.error("Projection generation check failed", { error: String(error) });
      }
    }
  }

  async #follow(): Promise<void> {
    const { redis, keys, log } = this.options;
    const target = this.options.generation ?? await viewGeneration(redis, keys);
    if (target === this.#generation) return;
    const previous = this.#generation;
    await this.#stopProjectors();
    if (previous > target && this.options.generation === undefined) {
      // Generations only go up (a rebuild's swap): going back means Redis lost the generation
      // key with its data. The generation followed so far would otherwise keep its (recreated)
      // groups, holding retention back for good.
      log.warn("The view generation went back (Redis lost its data?): dropping the newer one", {
        from: previous,
        generation: target,
      });
      await resetProjections(
        redis,
        keys,
        createProjections({ redis, keys, viewTtlS: this.options.viewTtlS, generation: previous }),
      );
    } else if (previous >= 0) {
      log.info("Following a rebuilt view generation", { generation: target });
    }
    // Not following any generation until all of them run: a failure here is retried on the next
    // check instead of leaving a projection stopped for good.
    this.#generation = -1;
    try {
      // The projector's reads, plans and writes are one after the other: one connection of its
      // own serves them all, so they never queue behind other consumers' commands.
      const connection = this.options.blocking(`projector${target === 0 ? "" : `@${target}`}`);
      const projector = new Projector(
        createProjections({
          redis: connection,
          keys,
          viewTtlS: this.options.viewTtlS,
          generation: target,
        }),
        {
          redis: connection,
          blocking: connection,
          keys,
          log,
          owner: this.options.owner,
          lag: this.options.lag,
          batchSize: this.options.batchSize,
          share: this.options.share,
        },
      );
      this.#projectors.push(projector);
      await projector.start();
    } catch (error) {
      await this.#stopProjectors();
      throw error;
    }
    this.#generation = target;
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    await this.#stopProjectors();
  }

  /** Stops the projectors and closes the blocking connections they were given. */
  async #stopProjectors(): Promise<void> {
    await Promise.all(this.#projectors.map(async (p) => {
      await p.stop();
      await closeRedis(p.options.blocking);
    }));
    this.#projectors = [];
  }
}
