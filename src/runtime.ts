import { hostname } from "node:os";
import { type Config, providerMode } from "./config.ts";
import { EventFeeds } from "./feed/event_feeds.ts";
import { createApp } from "./http/app.ts";
import { UploadGuard } from "./http/guard.ts";
import type { Logger } from "./log.ts";
import { createMetrics } from "./metrics/registry.ts";
import { Partitions } from "./partitions.ts";
import type { Ports, VideoHistory } from "./pipeline/step.ts";
import { bindPipeline, type Pipeline } from "./pipeline/steps.ts";
import { createSupabaseScenes, scenesOf } from "./providers/supabase_scenes.ts";
import { readVideoView } from "./projections/video_scenes/projection.ts";
import { rebuildPartitions } from "./projections/rebuild.ts";
import { closeRedis, connectRedis, redisTarget } from "./redis/client.ts";
import { claimRevisionScript } from "./redis/scripts.ts";

/** Connections for acknowledged ingests (ACK_REPLICAS > 0): WAITs in flight at once. */
const ACK_CONNECTIONS = 8;

/** A consumer name unique to this process. */
export function consumerName(): string {
  return `${hostname()}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** The store, views and HTTP app for one process; built once from the config. */
export function createServices(config: Config, log: Logger) {
  // This process's Prometheus registry: /metrics on the app, METRICS_PORT on workers.
  const metrics = createMetrics();
  // Requests must never hang on a down Redis: while it is known to be down commands fail at once
  // (see connectRedis), and one that gets no answer gives up after 1 s; both answer 503.
  const redis = connectRedis(redisTarget(config), { commandTimeoutMs: 1_000, name: "commands" });
  // Every partition's keys and event log; partition 0 (`keys`, `store`) also holds the
  // deployment-wide keys.
  const partitions = new Partitions(redis, config.KEY_PREFIX, config.PARTITIONS, {
    idempotencyTtlS: config.IDEMPOTENCY_TTL_S,
    timelineTtlS: config.VIEW_RETENTION_S,
  });
  const { keys, store } = partitions.first;
  // ACK_REPLICAS: acknowledged ingests WAIT on connections of their own, with room for the wait.
  partitions.ackConnections = config.ACK_REPLICAS > 0
    ? Array.from({ length: ACK_CONNECTIONS }, () =>
      connectRedis(redisTarget(config), {
        commandTimeoutMs: config.ACK_TIMEOUT_MS + 1_000,
        name: "acked-ingest",
      }))
    : [];
  const mode = providerMode(config);
  const supabase = config.SUPABASE_URL
    ? createSupabaseScenes({
      url: config.SUPABASE_URL,
      serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY ?? "",
      schema: config.SUPABASE_SCHEMA,
    })
    : null;
  // Body-read caps and deadline; main.ts wraps the app's fetch with it (uploads.wrap).
  const uploads = new UploadGuard({
    timeoutMs: config.REQUEST_TIMEOUT_MS,
    readsMax: config.BODY_READS_MAX,
    readsPerAddress: config.BODY_READS_PER_ADDRESS,
  }, log);
  // The SSE routes' one reader of the event stream; its blocking connection opens with the first
  // stream client (so worker processes never open it).
  const feed = new EventFeeds(partitions, {
    redis,
    connect: (name) => connectRedis(redisTarget(config), { name }),
    log,
    maxClients: config.SSE_MAX_CLIENTS,
    bufferEvents: config.SSE_BUFFER_EVENTS,
  });
  const app = createApp({
    feed,
    metrics: { registry: metrics, token: config.METRICS_TOKEN },
    redis,
    store,
    keys,
    partitions,
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
        unknownFieldsMaxBytes: config.UNKNOWN_FIELDS_MAX_BYTES,
        ratePerMinute: config.RATE_LIMIT_PER_MINUTE,
      },
      uploads,
      allowPrivateUrls: config.ALLOW_PRIVATE_CALLBACKS,
      ack: { replicas: config.ACK_REPLICAS, timeoutMs: config.ACK_TIMEOUT_MS },
      trustProxy: config.TRUST_PROXY,
      metrics,
    },
    read: { token: config.READ_TOKEN, tokenHeader: config.READ_TOKEN_HEADER },
    corsOrigins: config.CORS_ORIGINS,
    streamRetentionMs: config.STREAM_RETENTION_S * 1000,
    admin: {
      token: config.ADMIN_TOKEN,
      rebuild: ({ force, partition, onProgress }) =>
        rebuildPartitions({
          force,
          onProgress,
          redis,
          redisTarget: redisTarget(config),
          log,
          viewTtlS: config.VIEW_RETENTION_S,
          owner: `admin-${consumerName()}`,
        }, partitions.select(partition).map((p) => p.keys)),
    },
    dashboard: { sessionTtlS: config.DASHBOARD_SESSION_TTL_S },
    providerMode: mode,
    sceneSink: supabase ? { name: "supabase", check: cached(supabase.check, 10_000) } : null,
    health: {
      maxConsumerlessMs: config.HEALTH_MAX_CONSUMERLESS_S * 1000,
      maxPendingAgeMs: config.HEALTH_MAX_PENDING_AGE_S * 1000,
    },
  });
  const close = async () => {
    await feed.close();
    await Promise.all(partitions.ackConnections.map(closeRedis));
    await closeRedis(redis);
  };
  return { keys, redis, store, partitions, app, uploads, mode, supabase, feed, metrics, close };
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
  const { supabase, redis, partitions } = services;
  return {
    async latest(videoId) {
      if (supabase) {
        const found = await supabase.latest(videoId);
        return found ? { revision: found.revision, scenes: scenesOf(found.rows) } : null;
      }
      const view = await readVideoView(redis, partitions.ofVideo(videoId).keys, videoId);
      return view ? { revision: view.revision, scenes: view.scenes } : null;
    },
    async claimRevision(videoId, latest, taskId) {
      // The task is in its video's partition: the counter and the claim share a slot.
      const { keys } = partitions.ofVideo(videoId);
      return Number(
        await claimRevisionScript.run(redis, {
          keys: { revision: keys.videoRevision(videoId), claim: keys.revisionClaim(taskId) },
          args: { latest, ttl_s: revisionTtlS },
        }),
      );
    },
  };
}

/** What steps use besides their providers. */
export function createPorts(config: Config, services: Services): Ports {
  return { videos: videoHistory(services, config.VIEW_RETENTION_S), metrics: services.metrics };
}

/** The worker's steps, with the providers of the configured mode. */
export function createPipeline(config: Config, services: Services): Pipeline {
  return bindPipeline(config, services.mode, createPorts(config, services));
}
