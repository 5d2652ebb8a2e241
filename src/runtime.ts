import { hostname } from "node:os";
import { CallbackSender } from "../consumers/callback_sender.ts";
import type { GroupConsumer } from "../consumers/group_consumer.ts";
import { ProjectionRunner } from "../consumers/projection_runner.ts";
import { SceneSink, type SceneStore } from "../consumers/scene_sink.ts";
import { TaskWorker } from "../consumers/task_worker.ts";
import { type Config, providerMode } from "./config.ts";
import { EventStore } from "./event_store.ts";
import { createApp } from "./http/app.ts";
import { CALLBACK_GROUP, createKeys, GROUP_START, SINK_GROUP, WORKER_GROUP } from "./keys.ts";
import type { Logger } from "./log.ts";
import { offlinePipeline } from "./pipeline/offline.ts";
import { livePipeline } from "./pipeline/live.ts";
import type { Pipeline, VideoHistory } from "./pipeline/pipeline.ts";
import { createSupabaseScenes } from "./providers/supabase_scenes.ts";
import { readVideoView } from "./queries.ts";
import { Samples } from "./metrics.ts";
import { rebuildProjections } from "./replay/rebuild.ts";
import { startRetention } from "./replay/retention.ts";
import { closeRedis, connectRedis } from "./redis/client.ts";
import { claimRevisionScript } from "./redis/scripts.ts";
import { ensureGroup } from "./redis/streams.ts";

/** A consumer name unique to this process. */
export function consumerName(): string {
  return `${hostname()}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** The store, views and HTTP app for one process; built once from the config. */
export function createServices(config: Config, log: Logger) {
  const keys = createKeys(config.KEY_PREFIX);
  // Requests must never hang on a down Redis: commands give up after 1 s (answered as 503 well
  // within the 2 s promised).
  const redis = connectRedis(config.REDIS_URL, { commandTimeoutMs: 1_000, name: "commands" });
  const store = new EventStore(redis, keys, {
    idempotencyTtlS: config.IDEMPOTENCY_TTL_S,
    timelineTtlS: config.VIEW_RETENTION_S,
  });
  const mode = providerMode(config);
  const supabase = config.SUPABASE_URL
    ? createSupabaseScenes({
      url: config.SUPABASE_URL,
      serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY ?? "",
      schema: config.SUPABASE_SCHEMA,
    })
    : null;
  const app = createApp({
    redis,
    store,
    keys,
    log,
    webhook: {
      auth: {
        secrets: config.WEBHOOK_SECRET,
        token: config.WEBHOOK_TOKEN,
        tokenHeader: config.WEBHOOK_TOKEN_HEADER,
      },
      limits: {
        maxBodyBytes: config.MAX_BODY_BYTES,
        maxDepth: config.MAX_JSON_DEPTH,
        promptMaxChars: config.PROMPT_MAX_CHARS,
        ratePerMinute: config.RATE_LIMIT_PER_MINUTE,
      },
      allowPrivateUrls: config.ALLOW_PRIVATE_CALLBACKS,
      trustProxy: config.TRUST_PROXY,
    },
    corsOrigins: config.CORS_ORIGINS,
    streamRetentionMs: config.STREAM_RETENTION_S * 1000,
    admin: {
      token: config.ADMIN_TOKEN,
      rebuild: ({ force }) =>
        rebuildProjections({
          force,
          redis,
          redisUrl: config.REDIS_URL,
          keys,
          log,
          viewTtlS: config.VIEW_RETENTION_S,
          owner: `admin-${consumerName()}`,
        }),
    },
    providerMode: mode,
    sceneSink: supabase ? { name: "supabase", check: cached(supabase.check, 10_000) } : null,
  });
  return { keys, redis, store, app, mode, supabase, close: () => closeRedis(redis) };
}

export type Services = ReturnType<typeof createServices>;

/** Memoises an async check for `ms`, so /health does not call Supabase on every probe. */
function cached<T>(check: () => Promise<T>, ms: number): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | null = null;
  return () => {
    if (!last || Date.now() - last.at > ms) last = { at: Date.now(), value: check() };
    return last.value;
  };
}

/** Latest stored scenes of a video: from Supabase when it is the sink, else the Redis view. */
export function videoHistory(services: Services, revisionTtlS: number): VideoHistory {
  const { supabase, redis, keys } = services;
  return {
    async latest(videoId) {
      if (supabase) {
        const found = await supabase.latest(videoId);
        if (!found) return null;
        return {
          revision: found.revision,
          scenes: found.rows.map((row) => ({
            scene_number: row.scene_number,
            visual_description: row.visual_description,
            voiceover: row.voiceover,
            shot_type: row.shot_type,
            sound_effects: row.sound_effects,
            music_direction: row.music_direction,
            duration_seconds: row.duration_seconds,
          })),
        };
      }
      const view = await readVideoView(redis, keys, videoId);
      return view ? { revision: view.revision, scenes: view.scenes } : null;
    },
    async claimRevision(videoId, latest) {
      return Number(
        await claimRevisionScript.run(redis, [keys.videoRevision(videoId)], [latest, revisionTtlS]),
      );
    },
  };
}

/** The generation steps for the configured mode. */
export function createPipeline(config: Config, services: Services): Pipeline {
  const history = videoHistory(services, config.VIEW_RETENTION_S);
  if (services.mode === "live") return livePipeline(config, history);
  return offlinePipeline({
    latencyMs: config.OFFLINE_LATENCY_MS,
    sceneCount: config.SCENE_COUNT,
    history,
  });
}

/** Where the scene sink stores scenes: Supabase when configured, else only the Redis view. */
export function sceneStore(services: Services): SceneStore {
  const { supabase } = services;
  if (supabase) return { name: "supabase", upsert: (rows) => supabase.upsert(rows) };
  return { name: "redis-view", upsert: () => Promise.resolve() };
}

export interface ConsumerOptions {
  pipeline?: Pipeline;
  sceneStore?: SceneStore;
  /** Host resolution for callback URLs (tests map names to loopback). */
  resolve?: (host: string) => Promise<string[]>;
  worker?: boolean;
  sink?: boolean;
  callbacks?: boolean;
  projections?: boolean;
}

/**
 * Everything a worker process runs: the task worker, the scene sink, the callback sender and the
 * three projectors, each on its own blocking connection.
 */
export async function startConsumers(
  config: Config,
  services: Services,
  log: Logger,
  options: ConsumerOptions = {},
) {
  const consumer = consumerName();
  const blockingConnections: ReturnType<typeof connectRedis>[] = [];
  const blocking = (name: string) => {
    const connection = connectRedis(config.REDIS_URL, { name });
    blockingConnections.push(connection);
    return connection;
  };
  const common = {
    store: services.store,
    log: log.child({ consumer }),
    consumer,
    concurrency: config.WORKER_CONCURRENCY,
    claimIdleMs: config.CLAIM_IDLE_MS,
    retryBaseMs: config.RETRY_BASE_MS,
    retryMaxMs: config.RETRY_MAX_MS,
  };
  const groups: GroupConsumer[] = [];
  if (options.worker !== false) {
    groups.push(
      new TaskWorker({
        ...common,
        blocking: blocking("worker"),
        pipeline: options.pipeline ?? createPipeline(config, services),
        maxAttempts: config.MAX_ATTEMPTS,
      }).consumer,
    );
  }
  if (options.sink !== false) {
    groups.push(
      new SceneSink({
        ...common,
        blocking: blocking("scene-sink"),
        sink: options.sceneStore ?? sceneStore(services),
        maxAttempts: config.MAX_ATTEMPTS,
      }).consumer,
    );
  }
  if (options.callbacks !== false) {
    groups.push(
      new CallbackSender({
        ...common,
        blocking: blocking("callbacks"),
        secret: config.CALLBACK_SECRET,
        maxAttempts: config.CALLBACK_MAX_ATTEMPTS,
        timeoutMs: config.CALLBACK_TIMEOUT_MS,
        allowPrivate: config.ALLOW_PRIVATE_CALLBACKS,
        resolve: options.resolve,
      }).consumer,
    );
  }
  const projectionLag = new Samples();
  const projections = options.projections === false ? null : new ProjectionRunner({
    redis: services.redis,
    blocking,
    keys: services.keys,
    log,
    owner: consumer,
    viewTtlS: config.VIEW_RETENTION_S,
    lag: projectionLag,
  });
  // Every group exists before any consumer runs, also the groups of consumers this process does
  // not run (CONSUMERS): a downstream group starting at "$" then sees every event a worker
  // appends, whichever process starts first.
  const { redis, keys } = services;
  await ensureGroup(redis, keys.webhookStream, WORKER_GROUP, GROUP_START[WORKER_GROUP]);
  for (const group of [SINK_GROUP, CALLBACK_GROUP] as const) {
    await ensureGroup(redis, keys.eventStream, group, GROUP_START[group]);
  }
  for (const g of groups) await g.start();
  await projections?.start();
  const stopRetention = startRetention({
    redis: services.redis,
    keys: services.keys,
    retentionMs: config.STREAM_RETENTION_S * 1000,
    intervalMs: 60_000,
    owner: consumer,
    onError: (error) => log.warn("Stream trimming failed", { error: String(error) }),
  });
  return {
    consumer,
    projections,
    /** Append-to-view delay of the events this process projected. */
    projectionLag,
    /** Graceful stop: in-flight work gets `timeoutMs`, then stays pending for another process. */
    async stop(timeoutMs: number) {
      stopRetention();
      // In pipeline order, so what the worker finishes while stopping is still stored and
      // announced by this process when time allows; the rest stays pending for another one.
      const deadline = Date.now() + timeoutMs;
      const outcomes = [];
      for (const g of groups) outcomes.push(await g.stop(Math.max(0, deadline - Date.now())));
      await projections?.stop();
      await removeIdleConsumer(services, consumer);
      await Promise.all(blockingConnections.map(closeRedis));
      return outcomes.reduce(
        (sum, o) => ({
          finished: sum.finished + o.finished,
          abandoned: sum.abandoned + o.abandoned,
        }),
        { finished: 0, abandoned: 0 },
      );
    },
  };
}

/** Removes this process's consumer from its groups where it holds no pending entries. */
async function removeIdleConsumer(services: Services, consumer: string) {
  const { redis, keys } = services;
  const groups: [string, string][] = [
    [keys.webhookStream, WORKER_GROUP],
    [keys.eventStream, SINK_GROUP],
    [keys.eventStream, CALLBACK_GROUP],
  ];
  for (const [stream, group] of groups) {
    try {
      const pending = await redis.xpending(stream, group, "-", "+", 1, consumer);
      if ((pending as unknown[]).length === 0) {
        await redis.xgroup("DELCONSUMER", stream, group, consumer);
      }
    } catch {
      // Best effort: a leftover consumer name only shows in /stats.
    }
  }
}
