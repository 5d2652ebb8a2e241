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
import { PROJECTIONS } from "../projections/registry.ts";
import { queryTaskIndex } from "../projections/task_index/query.ts";
import { currentViews } from "../queries.ts";
import { type AdminDeps, adminRoutes } from "./admin.ts";
import { authMode } from "./auth.ts";
import { dashboardRoutes } from "../dashboard/routes.tsx";
import { docsRoutes } from "./docs.ts";
import { healthCheck } from "./health.ts";
import { describeRoutes } from "./openapi.ts";
import { httpMetrics, metricsRoute } from "./metrics_route.ts";
import { fromRedis, problemResponse } from "./problems.ts";
import { projectionRoutes } from "./projection_routes.ts";
import { readAuth, type ReadAuthOptions } from "./read_auth.ts";
import { allStream, streamRoutes, taskStream } from "./streams.ts";
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
  /** The /dashboard's settings (it is on when ADMIN_TOKEN is set). */
  dashboard?: { sessionTtlS: number };
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
  const streams = { ...deps, read, adminToken: deps.admin.token };
  streamRoutes(app, streams);

  // Liveness: the process answers. Nothing a restart would fix is checked (Redis, consumers), so
  // an orchestrator restarting on failure does not restart every process when Redis is down.
  app.get("/health/live", (c) => c.json({ status: "ok" as const }));

  const health = healthCheck({
    redis,
    keys,
    partitions,
    providerMode: deps.providerMode,
    webhookAuth: authMode(deps.webhook.auth),
    sceneSink: deps.sceneSink,
    bounds: deps.health ?? { maxConsumerlessMs: 300_000, maxPendingAgeMs: 900_000 },
  });

  // Readiness, open to anyone (load balancers, uptime checks): what a stranger may know, and why
  // it is not ready (503): Redis unreachable, or a consumer group of the deployment missing,
  // without a consumer or stuck. Backlogs and the scene sink's error text come only with read
  // access (the read token, or no READ_TOKEN set), as /stats gives them.
  app.get("/health", async (c) => {
    const report = await health(read.allows(c.req.raw.headers));
    if (report.status === "unavailable") c.header("retry-after", "1");
    return c.json(report, report.status === "ok" ? 200 : 503);
  });

  dashboardRoutes(app, {
    adminToken: deps.admin.token,
    readToken: deps.read.token,
    redis,
    store,
    keys,
    partitions,
    log,
    now,
    trustProxy: deps.webhook.trustProxy,
    sessionTtlS: deps.dashboard?.sessionTtlS ?? 8 * 3_600,
    streamRetentionMs: deps.streamRetentionMs,
    health,
    live: { task: (c) => taskStream(c, streams), all: (c) => allStream(c, streams) },
    rebuild: deps.admin.rebuild,
    tasks: async (query) =>
      // Every partition's index, merged newest first.
      queryTaskIndex(
        redis,
        await Promise.all(
          partitions.list.map(async (p) => (await currentViews(redis, p.keys)).prefix),
        ),
        query,
      ),
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
