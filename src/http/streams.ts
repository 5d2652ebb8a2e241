/**
 * Server-Sent Events: GET /task/{task_id}/stream (one task, READ_TOKEN) and GET /events/stream
 * (all tasks, ADMIN_TOKEN), fed by the process's event feed of each partition.
 *
 * The resume seam: a stream subscribes to the feed first and waits until the feed's position is
 * known (`startId`); every event after it is then queued for the subscriber. Only then does it read
 * the log (the task's timeline, or XRANGE up to `startId`), write what follows the client's
 * position, and switch to the queue, skipping what it already wrote. An event is either in what
 * was read or queued (or both, and then written once), so none is missed or repeated.
 *
 * With several partitions, a task's stream is its partition's (ids are that partition's event
 * ids); the all-tasks stream reads every partition, and its event ids are position vectors: the
 * last event id sent of each partition, comma-separated in partition order. Resuming with one
 * resumes every partition exactly where it was; a plain event id resumes every partition after
 * that time (approximate: partitions' clocks are their nodes').
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context } from "hono";
import { type SSEStreamingApi, streamSSE } from "hono/streaming";
import type { RedisClient } from "../redis/client.ts";
import { z } from "zod";
import { ProblemError } from "../errors.ts";
import type { EventStore } from "../event_store.ts";
import { compareIds, decodeEvent, type StoredEvent } from "../events.ts";
import type { Refusal } from "../feed/event_feed.ts";
import type { EventFeeds } from "../feed/event_feeds.ts";
import type { Partitions } from "../partitions.ts";
import { changesStatus, eventFrame, namedFrame, StreamEnd } from "../feed/rules.ts";
import { type FeedItem, HEARTBEAT, type Subscription } from "../feed/subscription.ts";
import type { TaskDirectory } from "../feed/task_directory.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import { readTaskView } from "../projections/task_view/projection.ts";
import { catchUpTaskView } from "../projections/task_view/view.ts";
import { fromRedis, problemResponse } from "./problems.ts";
import { requireAdmin } from "./admin.ts";
import { ACCESS_TOKEN_PARAM, type ReadAuth } from "./read_auth.ts";
import { ProblemSchema } from "./schemas.ts";

export interface StreamDeps {
  redis: RedisClient;
  store: EventStore;
  keys: Keys;
  partitions: Partitions;
  log: Logger;
  feed: EventFeeds;
  read: ReadAuth;
  /** ADMIN_TOKEN; without it GET /events/stream answers 404, as the admin API does. */
  adminToken?: string;
  /** The `retry:` hint, in ms (default 3 s). */
  retryMs?: number;
}

const encoder = new TextEncoder();
const HEARTBEAT_FRAME = encoder.encode(": heartbeat\n\n");
const STREAM_ID = /^\d+-\d+$/;

/** Mounts both stream routes and describes them in the OpenAPI document. */
export function streamRoutes(app: OpenAPIHono, deps: StreamDeps): void {
  // Hono answers HEAD with the GET handler's response minus its body, which it never cancels: a
  // stream started for a HEAD would hold its slot until shutdown, so HEAD gets the head only.
  const head = (c: Context) => c.body(null, 200, { "content-type": "text/event-stream" });
  app.get(
    "/task/:task_id/stream",
    deps.read.streamGuard,
    (c) => c.req.method === "HEAD" ? head(c) : taskStream(c, deps),
  );
  app.get(
    "/events/stream",
    requireAdmin(deps.adminToken, { acceptQuery: true }),
    (c) => c.req.method === "HEAD" ? head(c) : allStream(c, deps),
  );
  describeStreamRoutes(app);
}

/**
 * GET /task/{task_id}/stream: a snapshot, then the task's events until it is over. The dashboard
 * serves it too, behind its session instead of a token (src/dashboard/).
 */
export async function taskStream(c: Context, deps: StreamDeps): Promise<Response> {
  const { redis } = deps;
  const taskId = c.req.param("task_id")!;
  const follow = flag(c.req.query("follow"));
  const resume = lastEventId(c);
  const partition = deps.partitions.ofTask(taskId);
  if (!partition) throw new ProblemError(404, "Task not found", `No task "${taskId}"`);
  const { keys, store } = partition;
  const sub = subscribe(deps.feed.subscribe(partition, taskId));
  if (sub instanceof Full) return sub.response(c);
  let snapshot: unknown = null;
  let history: StoredEvent[];
  let after: string | null = resume;
  try {
    await fromRedis(() => within(sub.ready, 2_000));
    // The view first, then the timeline: the timeline then holds every event the view folds.
    const projected = resume ? null : await fromRedis(() => readTaskView(redis, keys, taskId));
    history = await fromRedis(() => store.timeline(taskId));
    if (!history.length && !projected) {
      throw new ProblemError(404, "Task not found", `No task "${taskId}"`);
    }
    if (!resume) {
      // The projector may be behind: the snapshot folds what it has not reached yet.
      const view = catchUpTaskView(taskId, projected, history);
      snapshot = view;
      after = view.last_event_id;
    }
  } catch (error) {
    sub.close("ended");
    throw error;
  }
  const end = new StreamEnd();
  for (const event of history) end.see(event);
  const pending = history.filter((e) => after === null || compareIds(e.id, after) > 0);
  const status = () => ({ task_id: taskId, reason: "finished" });
  // A client resuming a finished task has everything: 204 tells EventSource not to reconnect.
  if (resume && end.ended && !follow && pending.length === 0) {
    sub.close("ended");
    return c.body(null, 204);
  }
  return sse(c, deps, sub, async (stream) => {
    if (snapshot) await stream.write(namedFrame("snapshot", snapshot, after));
    for (const event of pending) await stream.write(eventFrame(event));
    if (end.ended && !follow) return await stream.write(namedFrame("end", status()));
    // `end` has folded the timeline; the client has everything up to `after` and `pending`.
    const tracked = history.at(-1)?.id ?? null;
    await live(stream, sub, async (item) => {
      if (tracked !== null && compareIds(item.id, tracked) <= 0) return false;
      if (after === null || compareIds(item.id, after) > 0) await stream.write(item.frame);
      if (!end.see(item.event) || follow) return false;
      await stream.write(namedFrame("end", status()));
      return true;
    });
  });
}

/** GET /events/stream (and the dashboard's live feed): every task's events, optionally filtered. */
export async function allStream(c: Context, deps: StreamDeps): Promise<Response> {
  if (deps.partitions.count > 1) return await allPartitionsStream(c, deps);
  const { redis, partitions } = deps;
  const { keys } = partitions.first;
  const feed = deps.feed.of(partitions.first);
  const resume = lastEventId(c);
  const filter = eventFilter(c);
  const accepts = (item: FeedItem) => filter.accepts(feed.directory, item.event);
  const matches = (event: StoredEvent) => filter.matches(feed.directory, event);
  const sub = subscribe(deps.feed.subscribe(partitions.first, null, accepts));
  if (sub instanceof Full) return sub.response(c);
  await whenReady(sub);
  return sse(c, deps, sub, async (stream) => {
    let cursor = resume;
    // Catch up from the log: after the client's id, up to where the feed took over.
    const log = logBetween(redis, keys.eventStream, resume, sub.startId!, () => !!sub.reason);
    for await (const { id, event } of log) {
      cursor = id;
      if (!event) continue;
      feed.directory.observe(event);
      if (await matches(event)) await stream.write(eventFrame(event));
    }
    const sent = latest(resume, cursor);
    await live(stream, sub, async (item) => {
      if (sent !== null && compareIds(item.id, sent) <= 0) return false;
      if (await matches(item.event)) await stream.write(item.frame);
      return false;
    });
  });
}

/**
 * GET /events/stream with several partitions: every partition's events, each written with the
 * position vector (see the module's comment) as its id.
 */
async function allPartitionsStream(c: Context, deps: StreamDeps): Promise<Response> {
  const { redis, partitions } = deps;
  const resume = positionVector(lastEventId(c, partitions.count), partitions.count);
  const filter = eventFilter(c);
  const directory = (index: number) => deps.feed.list[index].directory;
  const accepts = (partition: { index: number }, item: FeedItem) =>
    filter.accepts(directory(partition.index), item.event);
  const matches = (index: number, event: StoredEvent) => filter.matches(directory(index), event);
  const sub = subscribe(deps.feed.subscribeAll(accepts));
  if (sub instanceof Full) return sub.response(c);
  await whenReady(sub);
  // Where the client is in each partition: where it resumes from, or (a new client) each
  // partition's live position when it subscribed, so a vector always names real positions and a
  // reconnect never replays history from partitions that had sent nothing.
  const sent: (string | null)[] = resume ?? [...sub.startIds];
  const vector = () => sent.map((id) => id ?? "0-0").join(",");
  const write = async (stream: SSEStreamingApi, index: number, event: StoredEvent) => {
    sent[index] = event.id;
    if (await matches(index, event)) await stream.write(eventFrame(event, vector()));
  };
  return sse(c, deps, sub, async (stream) => {
    // Catch up each partition from the log: after the client's position, up to its feed's.
    for (const [index, partition] of partitions.list.entries()) {
      const from = sent[index], until = sub.startIds[index];
      const log = logBetween(redis, partition.keys.eventStream, from, until, () => !!sub.reason);
      for await (const { id, event } of log) {
        if (!event) {
          sent[index] = id;
          continue;
        }
        directory(index).observe(event);
        await write(stream, index, event);
      }
    }
    for (;;) {
      const next = await sub.next();
      if (next === null) return;
      const { index, item } = next;
      if (item === HEARTBEAT) await stream.write(HEARTBEAT_FRAME);
      else {
        const seen = sent[index];
        if (seen !== null && compareIds(item.id, seen) <= 0) continue;
        await write(stream, index, item.event);
      }
    }
  });
}

/**
 * A resume position for every partition: a vector of `count` ids, or one id for all (a time to
 * resume from); null when the client sent none.
 */
function positionVector(id: string | null, count: number): (string | null)[] | null {
  if (id === null) return null;
  const ids = id.split(",");
  return ids.length === count ? ids : Array.from({ length: count }, () => ids[0]);
}

/** Writes queued items through `handle` until the subscription closes or `handle` says done. */
async function live(
  stream: SSEStreamingApi,
  sub: Subscription,
  handle: (item: FeedItem) => Promise<boolean>,
): Promise<void> {
  for (;;) {
    const item = await sub.next();
    if (item === null) return;
    if (item === HEARTBEAT) await stream.write(HEARTBEAT_FRAME);
    else if (await handle(item)) return;
  }
}

/**
 * The SSE response: the `retry:` hint, then `body`. A subscription closed for overflow or
 * shutdown cuts the stream at once (even mid-write to a slow client); a client going away closes
 * the subscription.
 */
function sse(
  c: Context,
  deps: StreamDeps,
  sub: Pick<Subscription, "onClose" | "close">,
  body: (stream: SSEStreamingApi) => Promise<unknown>,
): Response {
  c.header("x-accel-buffering", "no");
  return streamSSE(c, async (stream) => {
    sub.onClose((reason) => {
      if (reason === "overflow" || reason === "shutdown") stream.abort();
    });
    stream.onAbort(() => sub.close("client"));
    try {
      await stream.write(`retry: ${deps.retryMs ?? 3_000}\n\n`);
      await body(stream);
    } catch (error) {
      deps.log.warn("SSE stream ended by an error", { error: String(error) });
    } finally {
      sub.close("ended");
    }
  });
}

/** No room for a stream (SSE_MAX_CLIENTS, or shutting down): 503 with its Retry-After. */
class Full {
  constructor(readonly retryAfterS: number, readonly detail: string) {}
  response(c: Context): Response {
    const res = problemResponse(c, new ProblemError(503, "Service unavailable", this.detail));
    res.headers.set("retry-after", String(this.retryAfterS));
    return res;
  }
}

function subscribe<S>(sub: S | Refusal): S | Full {
  if (sub === "full") return new Full(5, "Too many event streams are open; retry later");
  if (sub === "closed") return new Full(1, "The server is shutting down; reconnect");
  return sub as S;
}

/**
 * The client's position: the Last-Event-ID header, or `?last_event_id=` (EventSource-free). With
 * `vector` partitions, the all-tasks stream's position vector is also accepted.
 */
function lastEventId(c: Context, vector = 1): string | null {
  const id = c.req.header("last-event-id") || c.req.query("last_event_id") || null;
  if (id === null || STREAM_ID.test(id)) return id;
  const ids = id.split(",");
  if (vector > 1 && ids.length === vector && ids.every((one) => STREAM_ID.test(one))) return id;
  throw new ProblemError(
    400,
    "Invalid request",
    vector > 1
      ? `Last-Event-ID must be an event id (ms-seq) or ${vector} of them, comma-separated`
      : "Last-Event-ID must be an event id (ms-seq)",
  );
}

const flag = (value: string | undefined) => value === "true" || value === "1";

/** The later of two ids (null: none). */
function latest(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return compareIds(a, b) >= 0 ? a : b;
}

function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Not ready within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The two stream routes in the OpenAPI document (text/event-stream, their tokens, problems). */
export function describeStreamRoutes(app: OpenAPIHono): void {
  const r = app.openAPIRegistry;
  const problem = (description: string) => ({
    description,
    content: { "application/problem+json": { schema: ProblemSchema } },
  });
  const events = (description: string) => ({
    description,
    content: { "text/event-stream": { schema: z.string() } },
  });
  r.registerComponent("securitySchemes", "readQuery", {
    type: "apiKey",
    in: "query",
    name: ACCESS_TOKEN_PARAM,
    description: "READ_TOKEN as a query parameter, on the task stream only (for EventSource)",
  });
  r.registerComponent("securitySchemes", "adminQuery", {
    type: "apiKey",
    in: "query",
    name: ACCESS_TOKEN_PARAM,
    description: "ADMIN_TOKEN as a query parameter, on /events/stream only (for EventSource)",
  });
  const resume = {
    headers: z.object({
      "last-event-id": z.string().optional().describe("Resume after this event id"),
    }),
  };
  const position = z.string().optional().describe("Last-Event-ID for clients that cannot set it");
  const unavailable = problem("SSE_MAX_CLIENTS streams are open, or Redis is unreachable");
  r.registerPath({
    method: "get",
    path: "/task/{task_id}/stream",
    summary: "A task's events as Server-Sent Events: a snapshot, then each event until it is over",
    description: "First `event: snapshot` (the task as GET /task/{task_id} returns it, " +
      "id = its last event), then one SSE event per task event (`id` the event id, `event` its " +
      "type, `data` the public event as JSON), and `event: end` after the final outcome and its " +
      "callback result, unless `follow=true`. A comment line every 15 s keeps idle connections " +
      "open. With Last-Event-ID it resumes right after that event (no snapshot); 204 when the " +
      "task is over and nothing follows it.",
    security: [{ readToken: [] }, { readBearer: [] }, { readQuery: [] }],
    request: {
      params: z.object({ task_id: z.string() }),
      query: z.object({
        follow: z.enum(["true", "false"]).optional().describe("Keep streaming after the outcome"),
        last_event_id: position,
      }),
      ...resume,
    },
    responses: {
      200: events("The task's events"),
      204: { description: "Resumed after the task's last event: nothing more will come" },
      400: problem("Last-Event-ID is not an event id"),
      401: problem("READ_TOKEN is set and the read token is missing or wrong"),
      404: problem("Unknown task"),
      503: unavailable,
    },
  });
  r.registerPath({
    method: "get",
    path: "/events/stream",
    summary: "Every task's events as Server-Sent Events (admin), optionally filtered",
    security: [{ adminBearer: [] }, { adminQuery: [] }],
    tags: ["admin"],
    request: {
      query: z.object({
        status_changes: z.enum(["true", "false"]).optional().describe(
          "Only events that change a task's status (queued, processing, completed, failed)",
        ),
        video_id: z.string().optional(),
        user_id: z.string().optional(),
        last_event_id: position,
      }),
      ...resume,
    },
    responses: {
      200: events("Events as they are appended"),
      400: problem("Last-Event-ID is not an event id"),
      401: problem("Missing or wrong admin token"),
      404: problem("ADMIN_TOKEN is not set: the admin API is disabled"),
      503: unavailable,
    },
  });
}

/**
 * The log's entries after `after` up to `until` (inclusive), in pages of 500, each decoded (null
 * when it does not decode, so the caller can still move past it); stops early when `stopped()`.
 * Nothing when `after` is null (nowhere to resume from).
 */
async function* logBetween(
  redis: RedisClient,
  stream: string,
  after: string | null,
  until: string,
  stopped: () => boolean,
): AsyncGenerator<{ id: string; event: StoredEvent | null }> {
  let cursor = after;
  while (cursor !== null && compareIds(cursor, until) < 0 && !stopped()) {
    const entries = await redis.xrange(stream, `(${cursor}`, until, "COUNT", 500);
    if (!entries.length) return;
    for (const [id, fields] of entries) {
      cursor = id;
      let event: StoredEvent | null = null;
      try {
        event = decodeEvent(id, fields);
      } catch { /* a malformed entry is skipped, as everywhere */ }
      yield { id, event };
    }
  }
}

/**
 * What a GET /events/stream client asked for (`status_changes`, `video_id`, `user_id`), checked
 * against the task directory of the event's partition.
 */
function eventFilter(c: Context) {
  const statusChanges = flag(c.req.query("status_changes"));
  const videoId = c.req.query("video_id") || null;
  const userId = c.req.query("user_id") || null;
  const byOwner = videoId !== null || userId !== null;
  const owned = (owner: { video_id: string; user_id: string } | null) =>
    owner !== null && (!videoId || owner.video_id === videoId) &&
    (!userId || owner.user_id === userId);
  return {
    /** At dispatch: what can be decided without waiting (an unknown owner is looked up later). */
    accepts(directory: TaskDirectory, event: StoredEvent): boolean {
      if (statusChanges && !changesStatus(event)) return false;
      const owner = byOwner ? directory.peek(event.task_id) : undefined;
      return owner === undefined || owned(owner);
    },
    /** Whether the client gets `event`, looking its task's owner up when it is not known yet. */
    async matches(directory: TaskDirectory, event: StoredEvent): Promise<boolean> {
      if (statusChanges && !changesStatus(event)) return false;
      if (!byOwner) return true;
      return owned(await directory.owner(event.task_id).catch(() => null));
    },
  };
}

/** Waits (up to 2 s) until the feed serves `sub`; a failure closes it and answers 503. */
async function whenReady(sub: { ready: Promise<unknown>; close(reason: "ended"): void }) {
  try {
    await fromRedis(() => within(sub.ready, 2_000));
  } catch (error) {
    sub.close("ended");
    throw error;
  }
}
