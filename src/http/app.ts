import { OpenAPIHono } from "@hono/zod-openapi";
import type { RedisClient } from "../redis/client.ts";
import { cors } from "hono/cors";
import { secureHeaders } from "hono/secure-headers";
import { ProblemError } from "../errors.ts";
import type { EventStore } from "../event_store.ts";
import type { StoredEvent } from "../events.ts";
import type { EventFeeds } from "../feed/event_feeds.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics/registry.ts";
import type { Partitions } from "../partitions.ts";
import { groupProblems, type KindReport, readRegistry } from "../consumer_registry.ts";
import { PROJECTIONS } from "../projections/registry.ts";
import { aofEnabled } from "../redis/client.ts";
import { consumerGroups } from "../queries.ts";
import { type AdminDeps, adminRoutes } from "./admin.ts";
import { authMode } from "./auth.ts";
import { docsRoutes } from "./docs.ts";
import { describeRoutes } from "./openapi.ts";
import { httpMetrics, metricsRoute } from "./metrics_route.ts";
import { fromRedis, problemResponse } from "./problems.ts";
import { projectionRoutes } from "./projection_routes.ts";
import { readAuth, type ReadAuthOptions } from "./read_auth.ts";
import { streamRoutes } from "./streams.ts";
import { webhookRoute, type WebhookRouteDeps } from "./webhook_route.ts";

export interface AppDeps {
  redis: RedisClient;
  /** Partition 0's store (deployment-wide keys); tasks are found through `partitions`. */
  store: EventStore;
  partitions: Partitions;
  keys: Keys;
  log: Logger;
  webhook: Omit<WebhookRouteDeps, "store" | "partitions" | "redis" | "keys" | "log" | "now">;
  admin: Omit<AdminDeps, "store" | "partitions" | "now">;
  /** READ_TOKEN for GET /task/*, /videos/* and /stats; without a token they are open. */
  read: ReadAuthOptions;
  streamRetentionMs: number;
  /** The process's one reader of the event stream, for the SSE routes (src/http/streams.ts). */
  feed: EventFeeds;
  /** Origins allowed by CORS; none means no CORS headers at all. */
  corsOrigins: string[];
  providerMode: "live" | "offline";
  /** The Supabase scene sink, when configured; /health reports whether it can store scenes. */
  sceneSink: { name: string; check(): Promise<{ ok: true } | { ok: false; error: string }> } | null;
  /**
   * When /health calls a consumer group of the deployment unhealthy: no consumer for longer than
   * HEALTH_MAX_CONSUMERLESS_S, or an entry pending longer than HEALTH_MAX_PENDING_AGE_S.
   */
  health?: { maxConsumerlessMs: number; maxPendingAgeMs: number };
  clock?: () => Date;
  /** The process's metrics: served at /metrics (METRICS_TOKEN as a bearer token when set). */
  metrics?: { registry: Metrics; token?: string };
}

/** The HTTP API: ingest, task status and timeline, video scenes, stats, health, OpenAPI docs. */
export function createApp(deps: AppDeps) {
  const { redis, store, keys, partitions, log } = deps;
  const now = deps.clock ?? (() => new Date());
  const read = readAuth(deps.read);
  const app = new OpenAPIHono();
  if (deps.metrics) app.use(httpMetrics(deps.metrics.registry));
  app.use(secureHeaders());
  if (deps.corsOrigins.length) {
    app.use(cors({ origin: deps.corsOrigins, allowMethods: ["GET", "POST"], credentials: false }));
  }

  app.onError((error, c) => {
    if (error instanceof ProblemError) return problemResponse(c, error);
    log.error("Unhandled request error", { path: c.req.path, error: String(error) });
    return problemResponse(c, new ProblemError(500, "Internal error", "Unexpected error"));
  });
  app.notFound((c) =>
    problemResponse(
      c,
      new ProblemError(404, "Not found", `No route for ${c.req.method} ${c.req.path}`),
    )
  );

  webhookRoute(app, { ...deps.webhook, store, partitions, redis, keys, log, now });
  adminRoutes(app, { ...deps.admin, store, partitions, now });

  const routes = PROJECTIONS.flatMap((p) => p.route ? [p.route] : []);
  projectionRoutes(app, routes, {
    redis,
    keys,
    store,
    partitions,
    now,
    streamRetentionMs: deps.streamRetentionMs,
  }, read.guard);

  app.get("/task/:task_id/events", read.guard, async (c) => {
    const taskId = c.req.param("task_id");
    const partition = partitions.ofTask(taskId);
    const events = partition ? await fromRedis(() => partition.store.timeline(taskId)) : [];
    if (!events.length) throw new ProblemError(404, "Task not found", `No task "${taskId}"`);
    return c.json({ task_id: taskId, events: events.map(publicEvent) });
  });
  streamRoutes(app, { ...deps, read, adminToken: deps.admin.token });

  // Liveness: the process answers. Nothing a restart would fix is checked (Redis, consumers), so
  // an orchestrator restarting on failure does not restart every process when Redis is down.
  app.get("/health/live", (c) => c.json({ status: "ok" as const }));

  // The kinds the deployment runs, as the consumer registry said when last read here: kept, so a
  // Redis that lost its data (and the registry with it) cannot make /health forget them.
  const expected = new Map<string, KindReport>();
  const bounds = deps.health ?? { maxConsumerlessMs: 300_000, maxPendingAgeMs: 900_000 };

  // Readiness, open to anyone (load balancers, uptime checks): what a stranger may know, and why
  // it is not ready (503): Redis unreachable, or a consumer group of the deployment missing,
  // without a consumer or stuck. Backlogs and the scene sink's error text come only with read
  // access (the read token, or no READ_TOKEN set), as /stats gives them.
  app.get("/health", async (c) => {
    const detailed = read.allows(c.req.raw.headers);
    const sink = deps.sceneSink;
    const checked = sink ? await sink.check() : null;
    const sceneSink = sink
      ? {
        enabled: true,
        sink: sink.name,
        ok: checked!.ok,
        ...(detailed && checked && !checked.ok ? { error: checked.error } : {}),
      }
      : { enabled: false, sink: "redis-view", ok: true };
    const t0 = performance.now();
    try {
      await redis.ping();
      const latency = Math.round((performance.now() - t0) * 100) / 100;
      const aof = await aofEnabled(redis).catch(() => null);
      const registry = await readRegistry(redis, keys);
      for (const [kind, report] of registry) expected.set(kind, report);
      // Every partition has the same groups; each is checked, and named when there are several.
      const problems = (await Promise.all(partitions.list.map(async (p) => {
        const found = await groupProblems(redis, p.keys, expected, registry, {
          ...bounds,
          // Real time, as the registry's reports are stamped.
          nowMs: Date.now(),
        });
        return partitions.count === 1 ? found : found.map((m) => `Partition ${p.index}: ${m}`);
      }))).flat();
      return c.json({
        status: problems.length ? "degraded" as const : "ok" as const,
        // Which groups and how far behind: for whoever may read backlogs, not for strangers.
        problems: detailed ? problems : problems.map(() => "A consumer group is not healthy"),
        redis: { ok: true, latency_ms: latency, aof },
        provider_mode: deps.providerMode,
        webhook_auth: authMode(deps.webhook.auth),
        scene_sink: sceneSink,
        ...(detailed
          ? { consumer_groups: await consumerGroups(redis, partitions.list.map((p) => p.keys)) }
          : {}),
      }, problems.length ? 503 : 200);
    } catch {
      c.header("retry-after", "1");
      return c.json({
        status: "unavailable" as const,
        problems: ["Redis is unreachable"],
        redis: { ok: false, latency_ms: null, aof: null },
        provider_mode: deps.providerMode,
        webhook_auth: authMode(deps.webhook.auth),
        scene_sink: sceneSink,
        ...(detailed ? { consumer_groups: [] } : {}),
      }, 503);
    }
  });

  if (deps.metrics) {
    metricsRoute(app, {
      metrics: deps.metrics.registry,
      token: deps.metrics.token,
      sources: {
        redis,
        keys: partitions.list.map((p) => p.keys),
        feed: deps.feed,
        uploads: deps.webhook.uploads.counters,
      },
    });
  }

  describeRoutes(app, routes, {
    readTokenHeader: deps.read.tokenHeader,
    webhookTokenHeader: deps.webhook.auth.tokenHeader,
  });
  app.route("/", docsRoutes());
  return app;
}

/**
 * An event as the public timeline shows it: without the fields meant for operators (a callback
 * error's `detail`, which names hosts and addresses); GET /admin/tasks/{task_id}/events has them.
 */
function publicEvent({ id, type, at, data }: StoredEvent) {
  const { detail: _detail, ...shown } = data as Record<string, unknown>;
  return { id, type, at, data: shown };
}
