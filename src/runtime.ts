import { hostname } from "node:os";
import { Projector } from "../consumers/projector.ts";
import { TaskWorker } from "../consumers/task_worker.ts";
import { type Config, providerMode } from "./config.ts";
import { EventStore } from "./event_store.ts";
import type { Scene } from "./events.ts";
import { createApp } from "./http/app.ts";
import { createKeys } from "./keys.ts";
import type { Logger } from "./log.ts";
import { offlinePipeline } from "./pipeline/offline.ts";
import type { Pipeline } from "./pipeline/pipeline.ts";
import { createProjections } from "./projections/projections.ts";
import { readVideoView } from "./queries.ts";
import { closeRedis, connectRedis } from "./redis/client.ts";

/** A consumer name unique to this process. */
export function consumerName(): string {
  return `${hostname()}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** The store, views and HTTP app for one process; built once from the config. */
export function createServices(config: Config, log: Logger) {
  const keys = createKeys(config.KEY_PREFIX);
  // Requests must never hang on a down Redis: commands give up after 1.5 s (answered as 503).
  const redis = connectRedis(config.REDIS_URL, { commandTimeoutMs: 1_500, name: "commands" });
  const store = new EventStore(redis, keys, {
    idempotencyTtlS: config.IDEMPOTENCY_TTL_S,
    timelineTtlS: config.VIEW_RETENTION_S,
  });
  const mode = providerMode(config);
  const app = createApp({
    redis,
    store,
    keys,
    log,
    maxBodyBytes: config.MAX_BODY_BYTES,
    providerMode: mode,
  });
  return { keys, redis, store, app, mode, close: () => closeRedis(redis) };
}

export type Services = ReturnType<typeof createServices>;

/** The providers for the configured mode. Live providers arrive with the provider-clients issue. */
export function createPipeline(config: Config, services: Services): Pipeline {
  if (services.mode === "live") {
    throw new Error(
      'Live providers are not available in this build; set PROVIDER_MODE="offline" or unset FAL_KEY and OPENAI_API_KEY',
    );
  }
  return offlinePipeline({
    latencyMs: config.OFFLINE_LATENCY_MS,
    sceneCount: config.SCENE_COUNT,
    latestScenes: async (videoId): Promise<Scene[] | null> =>
      (await readVideoView(services.redis, services.keys, videoId))?.scenes ?? null,
  });
}

/** The task worker and the three projectors of one process, each with its blocking connection. */
export async function startConsumers(
  config: Config,
  services: Services,
  log: Logger,
  options: { pipeline?: Pipeline; projections?: boolean; worker?: boolean } = {},
) {
  const consumer = consumerName();
  const blockingConnections: ReturnType<typeof connectRedis>[] = [];
  const blocking = (name: string) => {
    const connection = connectRedis(config.REDIS_URL, { name });
    blockingConnections.push(connection);
    return connection;
  };
  let worker: TaskWorker | null = null;
  if (options.worker !== false) {
    worker = new TaskWorker({
      store: services.store,
      blocking: blocking("worker"),
      pipeline: options.pipeline ?? createPipeline(config, services),
      log: log.child({ consumer }),
      consumer,
      concurrency: config.WORKER_CONCURRENCY,
      claimIdleMs: config.CLAIM_IDLE_MS,
      maxAttempts: config.MAX_ATTEMPTS,
      retryBaseMs: config.RETRY_BASE_MS,
      retryMaxMs: config.RETRY_MAX_MS,
    });
    await worker.start();
  }
  const projectors = options.projections === false ? [] : createProjections({
    redis: services.redis,
    keys: services.keys,
    viewTtlS: config.VIEW_RETENTION_S,
  }).map((projection) =>
    new Projector(projection, {
      redis: services.redis,
      blocking: blocking(`projector-${projection.name}`),
      keys: services.keys,
      log,
      owner: consumer,
    })
  );
  for (const p of projectors) await p.start();
  return {
    consumer,
    worker,
    projectors,
    /** Graceful stop: in-flight tasks get `timeoutMs`, then stay pending for another worker. */
    async stop(timeoutMs: number) {
      const outcome = worker ? await worker.stop(timeoutMs) : { finished: 0, abandoned: 0 };
      await Promise.all(projectors.map((p) => p.stop()));
      if (worker) await removeIdleConsumer(services, consumer);
      await Promise.all(blockingConnections.map(closeRedis));
      return outcome;
    },
  };
}

/** Removes this process's consumer from the group when it holds no pending entries. */
async function removeIdleConsumer(services: Services, consumer: string) {
  const { redis, keys } = services;
  try {
    const pending = await redis.xpending(keys.webhookStream, "workers", "-", "+", 1, consumer);
    if ((pending as unknown[]).length === 0) {
      await redis.xgroup("DELCONSUMER", keys.webhookStream, "workers", consumer);
    }
  } catch {
    // Best effort: a leftover consumer name only shows in /stats.
  }
}
