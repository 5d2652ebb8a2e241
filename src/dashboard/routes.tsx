/**
 * /dashboard: the operator's board, served by the app itself. Off (every path 404) unless
 * ADMIN_TOKEN is set. Pages are rendered on the server (Hono JSX); one small script keeps the live
 * regions current over Server-Sent Events. Every page needs a session (see session.ts); every
 * mutation needs the session's CSRF token and the admin role, goes through a confirmation page
 * showing a dry run, and calls the same functions as the CLI and the admin API, so it is recorded
 * the same way.
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { RedisClient } from "../redis/client.ts";
import { ProblemError, UnavailableError } from "../errors.ts";
import type { EventStore } from "../event_store.ts";
import type { HealthCheck } from "../http/health.ts";
import { clientAddress } from "../http/webhook_route.ts";
import type { Keys } from "../keys.ts";
import type { Partitions } from "../partitions.ts";
import type { Logger } from "../log.ts";
import type { TaskList, TaskListQuery } from "../projections/task_index/query.ts";
import { reprocessTasks } from "../replay/reprocess.ts";
import { takeToken } from "../security/rate_limit.ts";
import { asset } from "./assets.ts";
import { type DashboardEnv, isHttps, requireMutation, requireSession } from "./auth.ts";
import { deadLetterRoutes } from "./dead_letter_routes.tsx";
import { ConfirmPage, replayable } from "./pages/confirm.tsx";
import { OutcomeTable } from "./pages/dead_letters.tsx";
import { overviewData, OverviewPage, OverviewRegion } from "./pages/overview.tsx";
import { SignInPage } from "./pages/sign_in.tsx";
import { taskDetail, TaskPage, TaskRegion } from "./pages/task.tsx";
import { loadTasks, type TaskFilters, TasksPage, TasksRegion } from "./pages/tasks.tsx";
import type { RunRebuild } from "./rebuild_jobs.ts";
import { replayRoutes } from "./replay_routes.tsx";
import { forbidden, fragment, notFound, page, text } from "./respond.tsx";
import { roleFor, SESSION_COOKIE, SessionStore, SIGN_IN_PER_MINUTE } from "./session.ts";
import { BASE, Layout, Notice } from "./ui.tsx";

export interface DashboardDeps {
  /** ADMIN_TOKEN: without it the dashboard does not exist (404). */
  adminToken?: string;
  /** READ_TOKEN: signs in a read-only session. */
  readToken?: string;
  redis: RedisClient;
  /** Partition 0's store and keys (sessions, deployment-wide keys). */
  store: EventStore;
  keys: Keys;
  /** Where each task lives: the pages read a task's partition, lists and stats all of them. */
  partitions: Partitions;
  log: Logger;
  now: () => Date;
  /** TRUST_PROXY: X-Forwarded-For names the client, X-Forwarded-Proto the scheme. */
  trustProxy: boolean;
  sessionTtlS: number;
  streamRetentionMs: number;
  /** The /health report. */
  health: HealthCheck;
  /** The SSE handlers of GET /task/{id}/stream and GET /events/stream (src/http/streams.ts). */
  live: { task(c: Context): Promise<Response>; all(c: Context): Promise<Response> };
  rebuild: RunRebuild;
  /** One page of the task index (GET /tasks's query). */
  tasks: (query: TaskListQuery) => Promise<TaskList>;
}

const CSP = [
  "default-src 'self'",
  // Result images live wherever the request's image_url and the provider put them.
  "img-src 'self' http: https: data:",
  "style-src 'self'",
  "script-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ");

/** Mounts the dashboard on `app` when ADMIN_TOKEN is set; otherwise mounts nothing (404). */
export function dashboardRoutes(app: OpenAPIHono, deps: DashboardDeps): void {
  if (!deps.adminToken) return;
  const { redis, keys, partitions, log, now } = deps;
  const sessions = new SessionStore(redis, keys, deps.sessionTtlS, {
    admin: deps.adminToken,
    read: deps.readToken,
  });
  const dash = new Hono<DashboardEnv>();
  const signIn = `${BASE}/sign-in`;

  dash.use(async function dashboardHeaders(c, next) {
    await next();
    c.header("content-security-policy", CSP);
    if (!c.req.path.startsWith(`${BASE}/assets/`)) c.header("cache-control", "no-store");
  });
  dash.use(bodyLimit({
    maxSize: 256 * 1024,
    onError: (c) => c.text("The form is too large", 413),
  }));

  dash.get("/assets/:name", (c) => {
    const found = asset(c.req.param("name"));
    if (!found) return c.notFound();
    return c.body(found.body, 200, {
      "content-type": found.type,
      "cache-control": "public, max-age=31536000, immutable",
    });
  });

  dash.get("/sign-in", async (c) => {
    if (await sessions.get(getCookie(c, SESSION_COOKIE))) return c.redirect(BASE, 303);
    return c.html(<SignInPage />);
  });

  dash.post("/sign-in", async (c) => {
    // A sign-in posted by another site's page (a browser says so) is refused before it can spend
    // the address's attempts: otherwise any page an operator opens could lock them out.
    if (c.req.header("sec-fetch-site") === "cross-site") {
      log.warn("Dashboard sign-in refused", { reason: "cross-site" });
      return c.html(<SignInPage error="Sign in from the dashboard's own page" />, 403);
    }
    // Every attempt takes a token from the address's bucket, so guessing is slow; the token is
    // compared in constant time and never logged or echoed.
    const bucket = await takeToken(redis, keys.dashboardSignIn(clientAddress(c, deps.trustProxy)), {
      perMinute: SIGN_IN_PER_MINUTE,
      nowMs: Date.now(),
    });
    if (!bucket.allowed) {
      c.header("retry-after", String(bucket.retryAfterS));
      return c.html(
        <SignInPage error={`Too many attempts: try again in ${bucket.retryAfterS} s`} />,
        429,
      );
    }
    const form = await c.req.parseBody();
    const sent = typeof form.token === "string" ? form.token.trim() : "";
    const role = sent ? roleFor(sent, { admin: deps.adminToken, read: deps.readToken }) : null;
    if (!role) {
      log.warn("Dashboard sign-in refused", { reason: "wrong token" });
      return c.html(<SignInPage error="That token is not valid" />, 401);
    }
    // A new session id at each sign-in (no fixation); the browser's previous session ends.
    await sessions.revoke(getCookie(c, SESSION_COOKIE));
    const { id } = await sessions.create(role, now());
    setCookie(c, SESSION_COOKIE, id, {
      path: BASE,
      httpOnly: true,
      sameSite: "Strict",
      secure: isHttps(c, deps.trustProxy),
      maxAge: deps.sessionTtlS,
    });
    log.info("Dashboard session started", { role });
    return c.redirect(BASE, 303);
  });

  // Everything below needs a session.
  dash.use(requireSession(sessions, signIn));

  dash.post("/sign-out", requireMutation(forbidden, { allowRead: true }), async (c) => {
    await sessions.revoke(c.get("sessionId"));
    deleteCookie(c, SESSION_COOKIE, { path: BASE, secure: isHttps(c, deps.trustProxy) });
    return c.redirect(signIn, 303);
  });

  // Live: the SSE routes' own handlers, behind the session instead of a token in the URL.
  // HEAD gets the head only: a stream opened for it would never be read or closed.
  const head = (c: Context) => c.body(null, 200, { "content-type": "text/event-stream" });
  dash.get("/live/events", (c) => c.req.method === "HEAD" ? head(c) : deps.live.all(c));
  dash.get(
    "/live/tasks/:task_id",
    (c) => c.req.method === "HEAD" ? head(c) : deps.live.task(c),
  );

  dash.get("/", async (c) => {
    const data = await overviewData({
      redis,
      partitions,
      nowMs: now().getTime(),
      retentionMs: deps.streamRetentionMs,
      health: deps.health,
    });
    if (fragment(c)) return c.html(<OverviewRegion data={data} />);
    return page(c, "Overview", "overview", <OverviewPage data={data} />);
  });

  dash.get("/tasks", async (c) => {
    const q = (name: string) => c.req.query(name)?.trim() ?? "";
    const filters: TaskFilters = {
      q: q("q"),
      field: q("field") || "any",
      status: q("status"),
      from: q("from"),
      to: q("to"),
      limit: q("limit"),
      cursor: q("cursor"),
    };
    const anchor = q("anchor") && fragment(c)
      ? { member: q("anchor"), more: q("more") === "1" }
      : null;
    const { list, error, gap } = await loadTasks(deps.tasks, filters, anchor);
    if (fragment(c)) return c.html(<TasksRegion list={list} filters={filters} gap={gap} />);
    return page(
      c,
      "Tasks",
      "tasks",
      <TasksPage list={list} filters={filters} error={error} />,
      error ? 400 : 200,
    );
  });

  dash.get("/tasks/:task_id", async (c) => {
    const session = c.get("session");
    const partition = partitions.ofTask(c.req.param("task_id"));
    const detail = partition
      ? await taskDetail({ redis, ...partition }, c.req.param("task_id"), session.role)
      : null;
    if (!detail) return notFound(c, "No such task");
    if (fragment(c)) {
      return c.html(<TaskRegion detail={detail} role={session.role} csrf={session.csrf} />);
    }
    return page(
      c,
      `Task ${detail.view.task_id}`,
      "tasks",
      <TaskPage detail={detail} role={session.role} csrf={session.csrf} />,
    );
  });

  dash.post("/tasks/:task_id/reprocess", requireMutation(forbidden), async (c) => {
    const taskId = c.req.param("task_id");
    const form = await c.req.parseBody({ all: true });
    const confirmed = form.confirm === "yes";
    const reason = text(form.reason) || "dashboard reprocess";
    const back = `${BASE}/tasks/${encodeURIComponent(taskId)}`;
    const outcomes = await reprocessTasks(partitions.scope(), { taskIds: [taskId] }, {
      requestedBy: "dashboard",
      reason,
      dryRun: !confirmed,
      now: now(),
    });
    if (confirmed) {
      const [outcome] = outcomes;
      if (outcome?.skipped) {
        return page(
          c,
          "Not reprocessed",
          "tasks",
          <OutcomeTable outcomes={outcomes} dryRun={false} />,
        );
      }
      return c.redirect(back, 303);
    }
    return page(
      c,
      "Reprocess task",
      "tasks",
      <ConfirmPage
        title={`Reprocess task ${taskId}?`}
        action={`${back}/reprocess`}
        fields={replayable(form)}
        csrf={c.get("session").csrf}
        cancel={back}
        reason={reason}
        button="Reprocess"
      >
        <OutcomeTable outcomes={outcomes} dryRun />
      </ConfirmPage>,
    );
  });

  deadLetterRoutes(dash, deps);
  replayRoutes(dash, deps);

  dash.onError((error, c) => {
    const problem = error instanceof ProblemError ? error : new UnavailableError(error);
    if (!(error instanceof ProblemError)) {
      log.error("Dashboard request failed", { path: c.req.path, error: String(error) });
    }
    if (problem.status === 503) c.header("retry-after", "1");
    return c.html(
      <Layout title={problem.title} page="overview" session={c.get("session") ?? null}>
        <h1>{problem.title}</h1>
        <Notice kind="error">{problem.message}</Notice>
      </Layout>,
      problem.status as 503,
    );
  });

  app.route(BASE, dash);
}
