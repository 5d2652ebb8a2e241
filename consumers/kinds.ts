import { closeRedis, connectRedis, type RedisClient, redisTarget } from "../src/redis/client.ts";
import type { Config, ConsumerName } from "../src/config.ts";
import { type GroupRef, REPORT_MS, reportRunning } from "../src/consumer_registry.ts";
import type { Keys } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import { Samples } from "../src/metrics/samples.ts";
import { timedCall } from "../src/metrics/providers.ts";
import type { Pipeline } from "../src/pipeline/steps.ts";
import type { Partition } from "../src/partitions.ts";
import { LeaseShare } from "../src/projections/lease_share.ts";
import { ProjectionRunner } from "../src/projections/runner.ts";
import { ensureGroup, xgroup } from "../src/redis/streams.ts";
import { startRetention } from "../src/replay/retention.ts";
import type { RetryPolicy } from "../src/retry.ts";
import { consumerName, createPipeline, type Services } from "../src/runtime.ts";
import { callbackSender } from "./callback_sender.ts";
import { Delivery, type Handler } from "./delivery.ts";
import { GroupConsumer, Slots } from "./group_consumer.ts";
import { sceneSink, type SceneStore } from "./scene_sink.ts";
import { taskWorker } from "./task_worker.ts";

/** What a consumer kind is started with (a handler also gets the partition it serves). */
export interface KindContext {
  config: Config;
  services: Services;
  log: Logger;
  /** This process's consumer name. */
  consumer: string;
  /** Opens a dedicated connection for blocking reads; closed when the consumers stop. */
  blocking(name: string): RedisClient;
  options: ConsumerOptions;
  clock: () => Date;
  /** Append-to-view delay of the events this process projected. */
  projectionLag: Samples;
}

/** A running consumer: stopping lets in-flight work finish for up to `timeoutMs`. */
export interface Running {
  stop(timeoutMs: number): Promise<{ finished: number; abandoned: number }>;
  /** The consumer groups it reads now, reported to the consumer registry. */
  groups(): GroupRef[];
}

/** A consumer group of one stream, and where the group starts when it is created. */
export interface GroupSpec {
  name: string;
  stream(keys: Keys): string;
  /**
   * "0": every entry, for work that may predate the consumers; "$": only what comes after, so a
   * downstream group added to a stream with history never replays outcomes handled before it.
   */
  startAt: "0" | "$";
  /**
   * Its effects may be skipped: when no process of the deployment runs the kind, retention stops
   * waiting for the group (work, scenes and views are never trimmed from under a group).
   */
  optional?: boolean;
}

/** One kind of consumer a worker process can run (CONSUMERS names them). */
export interface ConsumerKind {
  /** Its consumer group; the projections have a group per projection, created by their runner. */
  group?: GroupSpec;
  start(context: KindContext): Promise<Running>;
}

const policy = (config: Config, maxAttempts: number): RetryPolicy => ({
  maxAttempts,
  baseMs: config.RETRY_BASE_MS,
  maxMs: config.RETRY_MAX_MS,
});

/**
 * Every consumer kind, in pipeline order (the order they start and stop in). Adding one: its
 * handler file, its row here, and its name in CONSUMER_NAMES (src/config.ts).
 */
export const CONSUMER_KINDS: Record<ConsumerName, ConsumerKind> = {
  tasks: groupKind(
    { name: "workers", stream: (keys) => keys.webhookStream, startAt: "0" },
    ({ config, services, options }, { store }) =>
      taskWorker({
        store,
        pipeline: options.pipeline ?? createPipeline(config, services),
        policy: policy(config, config.MAX_ATTEMPTS),
      }),
  ),
  scenes: groupKind(
    { name: "scene-sink", stream: (keys) => keys.eventStream, startAt: "$" },
    ({ config, services, options, clock }, { store }) =>
      sceneSink({
        store,
        scenes: options.sceneStore ?? sceneStore(services),
        policy: policy(config, config.MAX_ATTEMPTS),
        clock,
      }),
  ),
  callbacks: groupKind(
    { name: "callbacks", stream: (keys) => keys.eventStream, startAt: "$", optional: true },
    ({ config, options, clock }, { store }) =>
      callbackSender({
        store,
        policy: policy(config, config.CALLBACK_MAX_ATTEMPTS),
        secret: config.CALLBACK_SECRET,
        timeoutMs: config.CALLBACK_TIMEOUT_MS,
        allowPrivate: config.ALLOW_PRIVATE_CALLBACKS,
        resolve: options.resolve,
        clock,
        maxAgeMs: config.CALLBACK_MAX_AGE_S * 1000,
      }),
  ),
  projections: {
    // A runner per partition: its projector holds the lease of that partition's projections, so
    // processes running projections share the partitions between them.
    async start({ config, services, log, consumer, blocking, projectionLag }) {
      const { partitions } = services;
      const share = partitions.count > 1
        ? new LeaseShare(services.redis, services.keys, consumer, partitions.count)
        : undefined;
      await share?.start();
      const runners = partitions.list.map((partition) =>
        new ProjectionRunner({
          redis: services.redis,
          blocking: (name) =>
            blocking(partitions.count === 1 ? name : `${name}:${partition.index}`),
          keys: partition.keys,
          log: partitions.count === 1 ? log : log.child({ partition: partition.index }),
          owner: consumer,
          viewTtlS: config.VIEW_RETENTION_S,
          lag: projectionLag,
          share,
        })
      );
      for (const runner of runners) await runner.start();
      // While a runner switches generations it runs none: report the last ones until then.
      let last: string[] = [];
      return {
        stop: async () => {
          await Promise.all(runners.map((runner) => runner.stop()));
          await share?.stop();
          return { finished: 0, abandoned: 0 };
        },
        groups: () => {
          const now = [...new Set(runners.flatMap((runner) => runner.groups))];
          if (runners.every((runner) => runner.groups.length)) last = now;
          return last.map((group) => ({ stream: "events" as const, group }));
        },
      };
    },
  },
};

/**
 * A kind whose consumers run `handler` on its group's entries: one consumer (and blocking
 * connection) per partition, WORKER_CONCURRENCY handlers at a time over all of them.
 */
function groupKind(
  group: GroupSpec,
  handler: (context: KindContext, partition: Partition) => Handler,
): ConsumerKind {
  return {
    group,
    async start(context) {
      const { config, services, consumer, clock } = context;
      const { metrics, partitions } = services;
      const slots = new Slots(config.WORKER_CONCURRENCY, partitions.count > 1);
      const loops = partitions.list.map((partition) => {
        const log = context.log.child(
          partitions.count === 1 ? { consumer } : { consumer, partition: partition.index },
        );
        const stream = group.stream(partition.keys);
        const handles = handler(context, partition);
        const options = {
          store: partition.store,
          stream,
          group: group.name,
          consumer,
          clock,
          metrics,
        };
        const streamName = stream === partition.keys.webhookStream ? "webhooks" : "events";
        return new GroupConsumer({
          redis: services.redis,
          blocking: context.blocking(
            partitions.count === 1 ? group.name : `${group.name}:${partition.index}`,
          ),
          stream,
          group: group.name,
          startAt: group.startAt,
          consumer,
          concurrency: config.WORKER_CONCURRENCY,
          slots,
          claimIdleMs: config.CLAIM_IDLE_MS,
          log,
          ignores: handles.ignores,
          handle: (entry, signal) => handles.handle(new Delivery(entry, signal, log, options)),
          onReclaim: (count) =>
            metrics.reclaims.inc({ stream: streamName, group: group.name }, count),
        });
      });
      for (const loop of loops) await loop.start();
      const ref: GroupRef = {
        stream: group.stream(services.keys) === services.keys.webhookStream ? "webhooks" : "events",
        group: group.name,
      };
      return {
        async stop(timeoutMs) {
          const outcomes = await Promise.all(loops.map((loop) => loop.stop(timeoutMs)));
          return {
            finished: outcomes.reduce((n, o) => n + o.finished, 0),
            abandoned: outcomes.reduce((n, o) => n + o.abandoned, 0),
          };
        },
        groups: () => [ref],
      };
    },
  };
}

/** Where the scene sink stores scenes: Supabase when configured, else only the Redis view. */
function sceneStore({ supabase, metrics }: Services): SceneStore {
  if (supabase) {
    return {
      name: "supabase",
      upsert: (rows) => timedCall(metrics, "supabase", () => supabase.upsert(rows)),
    };
  }
  return { name: "redis-view", upsert: () => Promise.resolve() };
}

export interface ConsumerOptions {
  /** The kinds to run (CONSUMERS); all by default. */
  run?: readonly ConsumerName[];
  /** Replaces the configured steps (tests). */
  pipeline?: Pipeline;
  /** Replaces the configured scene store (tests). */
  sceneStore?: SceneStore;
  /** Host resolution for callback URLs (tests map names to loopback). */
  resolve?: (host: string) => Promise<string[]>;
  clock?: () => Date;
}

/**
 * Starts the consumers a worker process runs, each on its own blocking connection, plus stream
 * retention. Every group exists before any consumer runs, also the groups of kinds this process
 * does not run: a downstream group starting at "$" then sees every event a worker appends,
 * whichever process starts first. A group of a kind no process runs does not hold the streams
 * back for good: retention stops waiting for it after HEALTH_MAX_CONSUMERLESS_S. Every REPORT_MS
 * the process reports the kinds it runs to the consumer registry, which /health and retention
 * read.
 */
export async function startConsumers(
  config: Config,
  services: Services,
  log: Logger,
  options: ConsumerOptions = {},
) {
  const consumer = consumerName();
  const connections: RedisClient[] = [];
  const context: KindContext = {
    config,
    services,
    log,
    consumer,
    options,
    clock: options.clock ?? (() => new Date()),
    // Also fed to projection_lag_seconds (the samples are ms).
    projectionLag: new Samples(100_000, (ms) => services.metrics.projectionLag.observe(ms / 1000)),
    blocking(name) {
      const connection = connectRedis(redisTarget(config), { name });
      connections.push(connection);
      return connection;
    },
  };
  const { redis, keys, partitions } = services;
  const kinds = Object.entries(CONSUMER_KINDS) as [ConsumerName, ConsumerKind][];
  for (const { keys } of partitions.list) {
    for (const [, kind] of kinds) {
      if (kind.group) {
        await ensureGroup(redis, kind.group.stream(keys), kind.group.name, kind.group.startAt);
      }
    }
  }
  const selected = kinds.filter(([name]) => (options.run ?? config.CONSUMERS).includes(name));
  const running: [ConsumerName, Running][] = [];
  for (const [name, kind] of selected) running.push([name, await kind.start(context)]);
  const report = () =>
    reportRunning(
      redis,
      keys,
      Object.fromEntries(running.map(([name, r]) => [name, r.groups()])),
      Date.now(),
    ).catch(() => {
      // Redis unreachable: the next report says it.
    });
  await report();
  const reporter = setInterval(report, REPORT_MS);
  const stopRetention = startRetention({
    redis,
    keys: partitions.list.map((p) => p.keys),
    retentionMs: config.STREAM_RETENTION_S * 1000,
    intervalMs: 60_000,
    owner: consumer,
    abandonAfterMs: config.HEALTH_MAX_CONSUMERLESS_S * 1000,
    optional: kinds.flatMap(([kind, { group }]) =>
      group?.optional ? [{ kind, group: group.name }] : []
    ),
    log,
    onError: (error) => log.warn("Stream trimming failed", { error: String(error) }),
  });
  return {
    consumer,
    /** Append-to-view delay of the events this process projected. */
    projectionLag: context.projectionLag,
    /**
     * Graceful stop, in pipeline order, so what the worker finishes while stopping is still
     * stored and announced by this process when time allows; the rest stays pending for another.
     */
    async stop(timeoutMs: number) {
      stopRetention();
      clearInterval(reporter);
      const deadline = Date.now() + timeoutMs;
      const total = { finished: 0, abandoned: 0 };
      for (const [, r] of running) {
        const outcome = await r.stop(Math.max(0, deadline - Date.now()));
        total.finished += outcome.finished;
        total.abandoned += outcome.abandoned;
      }
      for (const p of partitions.list) await removeIdleConsumer(redis, p.keys, consumer);
      await Promise.all(connections.map(closeRedis));
      return total;
    },
  };
}

/** Removes this process's consumer from the groups where it holds no pending entries. */
async function removeIdleConsumer(redis: RedisClient, keys: Keys, consumer: string) {
  for (const kind of Object.values(CONSUMER_KINDS)) {
    if (!kind.group) continue;
    const stream = kind.group.stream(keys);
    try {
      const pending = await redis.xpending(stream, kind.group.name, "-", "+", 1, consumer);
      if ((pending as unknown[]).length === 0) {
        await xgroup(redis, "DELCONSUMER", stream, kind.group.name, consumer);
      }
    } catch {
      // Best effort: a leftover consumer name only shows in /stats.
    }
  }
}
