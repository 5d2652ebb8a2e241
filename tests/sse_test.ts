/**
 * Server-Sent Events: the per-task stream (snapshot, events in order, the end, resuming with
 * Last-Event-ID), the all-tasks stream (filters, resuming from the log), the one feed per process
 * (other processes' events, slow clients, the client limit, SIGTERM) and who may read.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../src/config.ts";
import type { StoredEvent } from "../src/events.ts";
import { EventFeed } from "../src/feed/event_feed.ts";
import { changesStatus, StreamEnd } from "../src/feed/rules.ts";
import { HEARTBEAT } from "../src/feed/subscription.ts";
import { createLogger } from "../src/log.ts";
import { connectRedis, waitReady } from "../src/redis/client.ts";
import { createServices } from "../src/runtime.ts";
import {
  childEnv,
  fixture,
  freePort,
  runConsumers,
  type TestEnv,
  testEnv,
  testResolve,
  waitFor,
} from "./_helpers.ts";

const READ_TOKEN = "read-token-for-sse-tests-0123456789";
const ADMIN_TOKEN = "admin-token-for-sse-tests-0123456789";
const MAIN = new URL("../main.ts", import.meta.url).pathname;

interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

/** A small SSE parser over a response body: events, the retry hint, comment lines. */
class SseReader {
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  retry: number | null = null;
  comments = 0;

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** The next event; null when the stream ended. */
  async next(timeoutMs = 15_000): Promise<SseEvent | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.#buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const event: SseEvent = { event: "message", data: "" };
        let fields = 0;
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) {
            this.comments++;
            continue;
          }
          const colon = line.indexOf(":");
          const name = line.slice(0, colon);
          const value = line.slice(colon + 1).replace(/^ /, "");
          fields++;
          if (name === "retry") this.retry = Number(value);
          else if (name === "id") event.id = value;
          else if (name === "event") event.event = value;
          else if (name === "data") event.data += value;
        }
        if (fields && (event.data || event.id)) return event;
        continue;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("No SSE event in time")), deadline - Date.now());
      });
      try {
        const { done, value } = await Promise.race([this.#reader.read(), timeout]);
        if (done) return null;
        this.#buffer += value;
      } finally {
        clearTimeout(timer);
      }
    }
  }

  /** Events until `stop` returns true for one (included) or the stream ends. */
  async until(stop: (event: SseEvent) => boolean = () => false): Promise<SseEvent[]> {
    const events: SseEvent[] = [];
    for (;;) {
      const event = await this.next();
      if (!event) return events;
      events.push(event);
      if (stop(event)) return events;
    }
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

async function submit(env: TestEnv, patch: object = {}): Promise<string> {
  const res = await env.post({ ...JSON.parse(await fixture("minimal.json")), ...patch });
  assert.equal(res.status, 202, await res.clone().text());
  return (await res.json()).task_id as string;
}

async function open(env: TestEnv, path: string, headers: Record<string, string> = {}) {
  const res = await env.services.app.request(path, { headers });
  assert.equal(
    res.status,
    200,
    `${path}: ${res.status} ${res.status === 200 ? "" : await res.text()}`,
  );
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  return new SseReader(res.body!);
}

const idsAfter = (events: StoredEvent[], after: string | null) =>
  events.map((e) => e.id).filter((id) => after === null || compare(id, after) > 0);
const compare = (a: string, b: string) => {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
};
const taskEvents = (events: SseEvent[]) => events.filter((e) => e.id && e.event !== "snapshot");

/** A callback host that resolves to loopback: refused at delivery, so callback.failed follows. */
const PRIVATE_HOST = "hooks.corp.internal";
const resolvePrivate = (name: string) =>
  name === PRIVATE_HOST ? Promise.resolve(["127.0.0.1"]) : testResolve(name);

Deno.test("a task stream sends the snapshot, then every event in order, and ends after the callback", async () => {
  await using env = await testEnv("sse-order", { ALLOW_PRIVATE_CALLBACKS: "false" });
  const taskId = await submit(env, { callback_url: `http://${PRIVATE_HOST}/hook` });
  const stream = await open(env, `/task/${taskId}/stream`);
  const snapshot = await stream.next();
  assert.equal(snapshot?.event, "snapshot");
  const view = JSON.parse(snapshot!.data);
  assert.equal(view.task_id, taskId);
  assert.equal(view.status, "queued");
  assert.equal(snapshot!.id, view.last_event_id, "the snapshot's id is its last event");
  assert.equal(stream.retry, 3_000);

  const consumers = await runConsumers(env, { resolve: resolvePrivate });
  try {
    const received = await stream.until();
    assert.equal(received.at(-1)?.event, "end", "the stream ends with an end event, then closes");
    const events = taskEvents(received);
    const timeline = await env.services.store.timeline(taskId);
    assert.deepEqual(events.map((e) => e.id), idsAfter(timeline, view.last_event_id));
    assert.deepEqual(events.map((e) => e.event), timeline.slice(1).map((e) => e.type));
    assert.equal(events.at(-1)?.event, "callback.failed", "it waited for the callback's result");
    assert.ok(events.some((e) => e.event === "task.completed"));
    const completed = JSON.parse(events.find((e) => e.event === "task.completed")!.data);
    assert.equal(completed.task_id, taskId);
    assert.equal(completed.data.callback, true);
    const failed = JSON.parse(events.at(-1)!.data);
    assert.equal(failed.data.detail, undefined, "operator-only detail is left out");
    await waitFor(() => env.services.feed.clients === 0, { what: "the slot to be freed" });
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a reconnect with Last-Event-ID after a forced disconnect gets exactly the rest", async () => {
  await using env = await testEnv("sse-resume");
  const taskId = await submit(env);
  const first = await open(env, `/task/${taskId}/stream`);
  const snapshot = (await first.next())!;
  const consumers = await runConsumers(env, {}, { ...env.config, OFFLINE_LATENCY_MS: 400 });
  try {
    const before = await first.until((e) => e.event === "step.started");
    await first.cancel(); // the client goes away mid-task
    const lastId = before.at(-1)!.id!;
    // Events appended while it is away.
    await waitFor(
      async () =>
        (await env.services.store.timeline(taskId)).some((e) => e.type === "step.completed"),
      {
        what: "a step to complete while the client is away",
      },
    );
    const second = await open(env, `/task/${taskId}/stream`, { "last-event-id": lastId });
    const rest = await second.until();
    assert.equal(rest[0].event, "step.completed", "no snapshot on a resume: the rest follows");
    const timeline = await env.services.store.timeline(taskId);
    const got = [...taskEvents(before), ...taskEvents(rest)].map((e) => e.id);
    assert.deepEqual(got, idsAfter(timeline, snapshot.id!), "no gap, no repeat");
    assert.equal(rest.at(-1)?.event, "end");

    // Resuming after the last event of a finished task: 204, so EventSource stops reconnecting.
    const last = taskEvents(rest).at(-1)!.id!;
    const done = await env.services.app.request(`/task/${taskId}/stream?last_event_id=${last}`);
    assert.equal(done.status, 204);
    const bad = await env.services.app.request(`/task/${taskId}/stream`, {
      headers: { "last-event-id": "nope" },
    });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("an unknown task answers 404 problem+json before any stream starts", async () => {
  await using env = await testEnv("sse-404");
  for (const headers of [{}, { "last-event-id": "1-0" }] as Record<string, string>[]) {
    const res = await env.services.app.request("/task/no-such-task/stream", { headers });
    assert.equal(res.status, 404);
    assert.equal(res.headers.get("content-type"), "application/problem+json");
    assert.equal((await res.json()).status, 404);
  }
  assert.equal(env.services.feed.clients, 0);
});

Deno.test("past SSE_MAX_CLIENTS a stream answers 503 with Retry-After; a closed one frees its slot", async () => {
  await using env = await testEnv("sse-limit", { SSE_MAX_CLIENTS: "2" });
  const taskId = await submit(env);
  const a = await open(env, `/task/${taskId}/stream`);
  const b = await open(env, `/task/${taskId}/stream?follow=true`);
  const refused = await env.services.app.request(`/task/${taskId}/stream`);
  assert.equal(refused.status, 503);
  assert.equal(refused.headers.get("content-type"), "application/problem+json");
  assert.ok(Number(refused.headers.get("retry-after")) >= 1);
  await refused.body?.cancel();
  await a.cancel();
  await waitFor(() => env.services.feed.clients === 1, { what: "the closed stream's slot" });
  const c = await open(env, `/task/${taskId}/stream`);
  const head = await env.services.app.request(`/task/${taskId}/stream`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(env.services.feed.clients, 2, "a HEAD holds no slot");
  await Promise.all([b.cancel(), c.cancel()]);
});

Deno.test("READ_TOKEN guards the task stream (header, bearer, query); ADMIN_TOKEN /events/stream", async () => {
  const lines: string[] = [];
  const config = loadConfig({
    KEY_PREFIX: `test-sse-auth-${crypto.randomUUID().slice(0, 8)}`,
    READ_TOKEN,
    ADMIN_TOKEN,
  });
  const services = createServices(config, createLogger("debug", {}, (l) => lines.push(l)));
  await waitReady(services.redis);
  const env = { services, config } as TestEnv;
  env.post = (body) =>
    Promise.resolve(services.app.request("/webhook", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }));
  try {
    const taskId = await submit(env);
    const status = async (path: string, headers: Record<string, string> = {}) => {
      const res = await services.app.request(path, { headers });
      await res.body?.cancel();
      return res.status;
    };
    const stream = `/task/${taskId}/stream`;
    assert.equal(await status(stream), 401);
    assert.equal(await status(`${stream}?access_token=wrong-token-0123456789`), 401);
    assert.equal(await status(stream, { authorization: `Bearer ${ADMIN_TOKEN}` }), 401);
    assert.equal(await status(stream, { "x-read-token": READ_TOKEN }), 200);
    assert.equal(await status(stream, { authorization: `Bearer ${READ_TOKEN}` }), 200);
    assert.equal(await status(`${stream}?access_token=${READ_TOKEN}`), 200);
    // The query form is for EventSource on the stream routes only.
    assert.equal(await status(`/task/${taskId}?access_token=${READ_TOKEN}`), 401);

    const all = "/events/stream";
    assert.equal(await status(all), 401);
    assert.equal(await status(all, { authorization: `Bearer ${READ_TOKEN}` }), 401);
    assert.equal(await status(all, { "x-read-token": READ_TOKEN }), 401);
    assert.equal(await status(all, { authorization: `Bearer ${ADMIN_TOKEN}` }), 200);
    assert.equal(await status(`${all}?access_token=${ADMIN_TOKEN}`), 200);
    await waitFor(() => services.feed.clients === 0, { what: "the streams to close" });
    assert.ok(
      !lines.some((l) => l.includes(READ_TOKEN) || l.includes(ADMIN_TOKEN)),
      "never logged",
    );

    await using open = await testEnv("sse-auth-off");
    const off = await open.services.app.request(all);
    assert.equal(off.status, 404, "no ADMIN_TOKEN: /events/stream does not exist, as /admin/*");
    await off.body?.cancel();
  } finally {
    const { deleteMatching } = await import("../src/projections/rebuild.ts");
    await deleteMatching(services.redis, services.keys.pattern);
    await services.close();
  }
});

Deno.test("the all-tasks stream filters by video, user and status changes, and resumes from the log", async () => {
  await using env = await testEnv("sse-all", { ADMIN_TOKEN });
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const streams = {
    all: await open(env, "/events/stream", auth),
    video: await open(env, "/events/stream?video_id=vid_a", auth),
    user: await open(env, "/events/stream?user_id=user_b", auth),
    status: await open(env, "/events/stream?status_changes=true", auth),
  };
  const a = await submit(env, { video_id: "vid_a", user_id: "user_a" });
  const b = await submit(env, { video_id: "vid_b", user_id: "user_b" });
  const consumers = await runConsumers(env);
  try {
    const { store } = env.services;
    await waitFor(async () => {
      const types = [...await store.timeline(a), ...await store.timeline(b)].map((e) => e.type);
      return types.filter((t) => t === "task.completed").length === 2;
    }, { what: "both tasks to complete" });
    const [ta, tb] = [await store.timeline(a), await store.timeline(b)];
    const completedOf = (id: string) => (e: SseEvent) =>
      e.event === "task.completed" && JSON.parse(e.data).task_id === id;
    const video = await streams.video.until(completedOf(a));
    assert.deepEqual(video.map((e) => e.id), ta.map((e) => e.id));
    const user = await streams.user.until(completedOf(b));
    assert.deepEqual(user.map((e) => e.id), tb.map((e) => e.id));
    const all = await streams.all.until((e) =>
      e.id === [...ta, ...tb].map((x) => x.id).sort(compare).at(-1)
    );
    const both = [...ta, ...tb].map((e) => e.id).sort(compare);
    assert.deepEqual(all.map((e) => e.id), both);
    const wanted = [...ta, ...tb].filter(changesStatus).map((e) => e.id).sort(compare);
    const status = await streams.status.until((e) => e.id === wanted.at(-1));
    assert.deepEqual(status.map((e) => e.id), wanted);
    assert.deepEqual(
      [...new Set(status.map((e) => e.event))].sort(),
      ["task.completed", "task.queued", "task.started"],
    );

    // Another process (its own feed, an empty directory): resumes from the log after an id, and
    // looks up the owner of a task it first sees after its task.queued.
    const other = createServices(env.config, env.log);
    try {
      const since = ta[0].id;
      const res = await other.app.request(`/events/stream?video_id=vid_a`, {
        headers: { ...auth, "last-event-id": since },
      });
      const resumed = await new SseReader(res.body!).until(completedOf(a));
      assert.deepEqual(resumed.map((e) => e.id), ta.slice(1).map((e) => e.id));
    } finally {
      await other.close();
    }
  } finally {
    for (const s of Object.values(streams)) await s.cancel();
    await consumers.stop(1_000);
  }
});

Deno.test("a slow client is dropped past its buffer while another keeps receiving every event", async () => {
  await using env = await testEnv("sse-slow", { ADMIN_TOKEN, SSE_BUFFER_EVENTS: "100" });
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    env.services.app.fetch,
  );
  const { feed, redis, keys } = env.services;
  // The slow client: asks for the stream and never reads.
  const slow = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await slow.write(new TextEncoder().encode(
      `GET /events/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${ADMIN_TOKEN}\r\n\r\n`,
    ));
    const res = await fetch(`http://127.0.0.1:${server.addr.port}/events/stream`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const fast = new SseReader(res.body!);
    await waitFor(() => feed.clients === 2, { what: "both clients to subscribe" });
    const appended: string[] = [];
    const output = { blob: "x".repeat(16_000) };
    const data = JSON.stringify({ step: "reframe", attempt: 1, duration_ms: 1, output });
    const received: string[] = [];
    const reading = (async () => {
      for (;;) {
        const event = await fast.next(30_000);
        if (!event) return;
        received.push(event.id!);
        if (event.event === "task.started") return;
      }
    })();
    // Big events until the slow client's socket buffers and then its queue are full.
    while (feed.dropped === 0 && appended.length < 3_000) {
      const pipeline = redis.pipeline();
      for (let i = 0; i < 10; i++) {
        pipeline.xadd(
          keys.eventStream,
          "*",
          "type",
          "step.completed",
          "task_id",
          "big",
          "at",
          "x",
          "data",
          data,
        );
      }
      for (const [, id] of (await pipeline.exec())!) appended.push(id as string);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(feed.dropped, 1, "the slow client was dropped");
    const marker = await redis.xadd(
      keys.eventStream,
      "*",
      "type",
      "task.started",
      "task_id",
      "big",
      "at",
      "x",
      "data",
      JSON.stringify({ attempt: 1, worker: "w" }),
    );
    await reading;
    assert.deepEqual(received, [...appended, marker], "the fast client got every event in order");
    assert.equal(feed.clients, 1);
    await fast.cancel();
  } finally {
    slow.close();
    await server.shutdown();
  }
});

Deno.test("events written by a worker process reach a serve process's stream; SIGTERM ends streams and exits 0", async () => {
  await using env = await testEnv("sse-procs");
  const port = freePort();
  const base = { ...childEnv(), KEY_PREFIX: env.prefix, LOG_LEVEL: "warn" };
  const serve = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "serve"],
    clearEnv: true,
    env: { ...base, PORT: String(port), HOST: "127.0.0.1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let worker: Deno.ChildProcess | null = null;
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(
      () => fetch(`${url}/health`).then((r) => r.body?.cancel().then(() => true), () => false),
      {
        timeoutMs: 20_000,
        what: "the serve process to listen",
      },
    );
    const body = await fixture("minimal.json");
    const accepted = await fetch(`${url}/webhook`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    const taskId = (await accepted.json()).task_id;
    const stream = new SseReader((await fetch(`${url}/task/${taskId}/stream`)).body!);
    assert.equal((await stream.next())?.event, "snapshot");
    worker = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", MAIN, "worker"],
      clearEnv: true,
      env: base,
      stdout: "null",
      stderr: "null",
    }).spawn();
    const events = await stream.until();
    assert.equal(events.at(-1)?.event, "end");
    assert.equal(taskEvents(events).at(-1)?.event, "task.completed");
    const timeline = await env.services.store.timeline(taskId);
    assert.deepEqual(taskEvents(events).map((e) => e.id), timeline.slice(1).map((e) => e.id));

    // A following client is still connected when SIGTERM comes: its stream ends, the server exits.
    const following = new SseReader(
      (await fetch(`${url}/task/${taskId}/stream?follow=true`)).body!,
    );
    assert.equal((await following.next())?.event, "snapshot");
    const t0 = Date.now();
    serve.kill("SIGTERM");
    const ended = await following.until().then(() => true, () => true);
    assert.ok(ended);
    const status = await serve.status;
    const log = await new Response(serve.stderr).text();
    assert.equal(status.code, 0, log);
    assert.ok(Date.now() - t0 < 5_000, `exited after ${Date.now() - t0} ms`);
  } finally {
    try {
      serve.kill("SIGKILL");
    } catch { /* already exited */ }
    if (worker) {
      worker.kill("SIGTERM");
      await worker.status;
    }
    await serve.status;
  }
});

Deno.test("the feed: heartbeats to idle subscribers, overflow past the buffer, close ends all", async () => {
  await using env = await testEnv("sse-feed");
  const feed = new EventFeed({
    keys: env.services.keys,
    redis: env.services.redis,
    connect: () => connectRedis(env.config.REDIS_URL, { name: "feed-test" }),
    log: env.log,
    maxClients: 10,
    bufferEvents: 2,
    heartbeatMs: 50,
  });
  try {
    const idle = feed.subscribe("t1");
    const slow = feed.subscribe("t1");
    assert.ok(typeof idle !== "string" && typeof slow !== "string");
    await idle.ready;
    assert.equal(await idle.next(), HEARTBEAT);
    const got: unknown[] = [];
    const reading = (async () => {
      while (got.length < 3) {
        const item = await idle.next();
        if (item && item !== HEARTBEAT) got.push(item);
      }
    })();
    const event = { attempt: 1, worker: "w" };
    for (let i = 0; i < 3; i++) {
      await env.services.redis.xadd(
        env.services.keys.eventStream,
        "*",
        "type",
        "task.started",
        "task_id",
        "t1",
        "at",
        "x",
        "data",
        JSON.stringify(event),
      );
    }
    await waitFor(() => slow.reason === "overflow", { what: "the slow subscriber to overflow" });
    assert.equal(feed.dropped, 1);
    await reading;
    assert.equal(got.length, 3, "the reading subscriber got every event");
  } finally {
    await feed.close();
  }
  assert.equal(feed.clients, 0);
  assert.equal(feed.subscribe("t1"), "closed");
});

Deno.test("a task's stream ends after its outcome and, with a callback_url, the callback's result", () => {
  const e = (type: string, data: object = {}) =>
    ({ id: "1-0", type, task_id: "t", at: "", data }) as StoredEvent;
  const noCallback = new StreamEnd();
  assert.equal(noCallback.see(e("task.completed", { callback: false })), true);
  const withCallback = new StreamEnd();
  assert.equal(withCallback.see(e("task.completed", { callback: true })), false);
  assert.equal(withCallback.see(e("callback.attempted")), false);
  assert.equal(withCallback.see(e("callback.delivered")), true);
  assert.equal(withCallback.see(e("task.reprocess_requested", { run: 2 })), false, "a new run");
  const failed = new StreamEnd();
  assert.equal(failed.see(e("task.failed", { final: false })), false, "retrying");
  assert.equal(failed.see(e("task.failed", { final: true, callback: false })), false);
  assert.equal(failed.see(e("task.dead_lettered")), true, "after the dead letter");
});
