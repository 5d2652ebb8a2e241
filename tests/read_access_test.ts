/**
 * Reads need READ_TOKEN when it is set, /health tells strangers only what they may know, and what
 * the public reads (task views, timelines) names no host, address or machine: callback errors are
 * short reasons (the detail is for the admin API) and workers are opaque ids.
 */
import assert from "node:assert/strict";
import { hostname } from "node:os";
import {
  caughtUp,
  fixture,
  runConsumers,
  type TestEnv,
  testEnv,
  testResolve,
  waitFor,
} from "./_helpers.ts";

const READ_TOKEN = "read-token-for-tests-0123456789";
const ADMIN_TOKEN = "admin-token-for-tests-0123456789";

async function submit(env: TestEnv, patch: object = {}): Promise<string> {
  const res = await env.post({ ...JSON.parse(await fixture("minimal.json")), ...patch });
  assert.equal(res.status, 202, await res.clone().text());
  return (await res.json()).task_id as string;
}

function get(env: TestEnv, path: string, headers: Record<string, string> = {}) {
  return Promise.resolve(env.services.app.request(path, { headers }));
}

/** Waits until the task is completed and its callback settled (delivered or failed). */
async function settled(env: TestEnv, taskId: string, headers: Record<string, string> = {}) {
  return await waitFor(async () => {
    const res = await get(env, `/task/${taskId}`, headers);
    if (res.status !== 200) {
      await res.body?.cancel();
      return null;
    }
    const view = await res.json();
    const callback = view.callback?.state;
    return view.status === "completed" && (callback === "delivered" || callback === "failed")
      ? view
      : null;
  }, { timeoutMs: 15_000, what: `task ${taskId} and its callback` });
}

/** Every GET route the OpenAPI document lists besides /health and the admin-protected ones. */
async function readRoutes(env: TestEnv): Promise<string[]> {
  const doc = await (await get(env, "/openapi.json")).json();
  return Object.entries(doc.paths as Record<string, { get?: { tags?: string[] } }>)
    .filter(([path, ops]) =>
      ops.get && !path.startsWith("/health") && !path.startsWith("/admin") &&
      !ops.get.tags?.includes("admin")
    )
    .map(([path]) => path)
    .sort();
}

Deno.test("READ_TOKEN is required on every read route, in its header or as a bearer token", async () => {
  await using env = await testEnv("read-token", { READ_TOKEN });
  const consumers = await runConsumers(env);
  try {
    const taskId = await submit(env);
    const videoId = JSON.parse(await fixture("minimal.json")).video_id;
    await waitFor(async () => {
      const res = await get(env, `/videos/${videoId}/scenes`, { "x-read-token": READ_TOKEN });
      await res.body?.cancel();
      return res.status === 200;
    }, { what: "the video's scenes" });

    const routes = await readRoutes(env);
    assert.deepEqual(routes, [
      "/stats",
      "/task/{task_id}",
      "/task/{task_id}/events",
      "/task/{task_id}/stream",
      "/tasks",
      "/videos/{video_id}/scenes",
    ]);
    const paths = routes.map((p) =>
      p.replace("{task_id}", taskId).replace("{video_id}", encodeURIComponent(videoId))
    );
    const refused: Record<string, Record<string, string>> = {
      "no token": {},
      "wrong header token": { "x-read-token": "read-token-for-tests-0123456788" },
      "a prefix of the token": { "x-read-token": READ_TOKEN.slice(0, -1) },
      "the token plus more": { "x-read-token": `${READ_TOKEN}0` },
      "wrong bearer": { authorization: "Bearer read-token-for-tests-0123456788" },
      "token under another header": { "x-webhook-token": READ_TOKEN },
      "token as Basic": { authorization: `Basic ${READ_TOKEN}` },
      "the admin token": { authorization: `Bearer ${ADMIN_TOKEN}` },
    };
    const accepted: Record<string, Record<string, string>> = {
      header: { "x-read-token": READ_TOKEN },
      bearer: { authorization: `Bearer ${READ_TOKEN}` },
      "lower-case bearer": { authorization: `bearer ${READ_TOKEN}` },
    };
    for (const path of paths) {
      for (const [what, headers] of Object.entries(refused)) {
        const res = await get(env, path, headers);
        assert.equal(res.status, 401, `${path} with ${what}`);
        assert.equal(res.headers.get("content-type"), "application/problem+json");
        assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
        const problem = await res.json();
        assert.equal(problem.status, 401);
        assert.doesNotMatch(JSON.stringify(problem), new RegExp(taskId));
      }
      const head = await env.services.app.request(path, { method: "HEAD" });
      assert.equal(head.status, 401, `HEAD ${path} without a token`);
      await head.body?.cancel();
      for (const [what, headers] of Object.entries(accepted)) {
        const res = await get(env, path, headers);
        assert.equal(res.status, 200, `${path} with ${what}`);
        await res.body?.cancel();
      }
    }
    // An unknown task or video needs the token too before it is even looked up.
    const unknown = await get(env, "/task/no-such-task");
    assert.equal(unknown.status, 401);
    await unknown.body?.cancel();
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("READ_TOKEN_HEADER names the header the read token is taken from", async () => {
  await using env = await testEnv("read-header", {
    READ_TOKEN,
    READ_TOKEN_HEADER: "X-Ops-Read",
  });
  const stats = (headers: Record<string, string>) =>
    get(env, "/stats", headers).then(async (res) => {
      await res.body?.cancel();
      return res.status;
    });
  assert.equal(await stats({ "x-ops-read": READ_TOKEN }), 200);
  assert.equal(await stats({ "x-read-token": READ_TOKEN }), 401);
  assert.equal(await stats({ authorization: `Bearer ${READ_TOKEN}` }), 200);
  const doc = await (await get(env, "/openapi.json")).json();
  assert.equal(doc.components.securitySchemes.readToken.name, "x-ops-read");
});

Deno.test("without READ_TOKEN the read routes stay open", async () => {
  await using env = await testEnv("read-open");
  const taskId = await submit(env);
  for (const path of [`/task/${taskId}`, `/task/${taskId}/events`, "/stats"]) {
    const res = await get(env, path);
    assert.equal(res.status, 200, path);
    await res.body?.cancel();
  }
  const video = await get(env, "/videos/never-seen/scenes");
  assert.equal(video.status, 404, "open, and simply not found");
  await video.body?.cancel();
  const health = await (await get(env, "/health")).json();
  assert.ok(Array.isArray(health.consumer_groups), "open reads: /health keeps its backlog");
});

Deno.test("/health tells a stranger only whether the service is up; the read token shows more", async () => {
  // A scene sink that cannot be reached: its error text names where it is.
  await using env = await testEnv("read-health", {
    READ_TOKEN,
    SUPABASE_URL: "http://127.0.0.1:9/",
    SUPABASE_SERVICE_ROLE_KEY: "service-role-key-for-tests",
  });
  const stranger = await get(env, "/health");
  assert.equal(stranger.status, 200);
  const open = await stranger.json();
  assert.equal(open.status, "ok");
  assert.equal(open.redis.ok, true);
  assert.equal(open.consumer_groups, undefined, "no backlog figures for strangers");
  assert.equal(open.scene_sink.ok, false);
  assert.equal(open.scene_sink.error, undefined, "no internal error text for strangers");
  assert.ok(!JSON.stringify(open).includes("127.0.0.1"));

  const reader = await (await get(env, "/health", { "x-read-token": READ_TOKEN })).json();
  assert.ok(Array.isArray(reader.consumer_groups));
  assert.equal(typeof reader.scene_sink.error, "string");
  assert.ok(!JSON.stringify(open).includes(reader.scene_sink.error));
});

Deno.test("a refused callback's public record names no host or address; the admin API has them", async () => {
  await using env = await testEnv("read-refused", {
    READ_TOKEN,
    ADMIN_TOKEN,
    ALLOW_PRIVATE_CALLBACKS: "false",
  });
  const auth = { "x-read-token": READ_TOKEN };
  // An internal name: resolves to loopback, which a callback must never reach.
  const host = "billing-db.corp.internal";
  const resolve = (name: string) =>
    name === host ? Promise.resolve(["127.0.0.1"]) : testResolve(name);
  const consumers = await runConsumers(env, { resolve });
  try {
    const taskId = await submit(env, { callback_url: `http://${host}:8080/hook` });
    const view = await settled(env, taskId, auth);
    await waitFor(() => caughtUp(env.services.redis, [env.services.keys.eventStream]));
    assert.equal(view.callback.state, "failed");
    assert.equal(view.callback.last_error, "refused: private address");

    const secrets = [host, "corp.internal", "127.0.0.1", "loopback", "8080", hostname()];
    const timeline = await (await get(env, `/task/${taskId}/events`, auth)).json();
    const viewText = JSON.stringify(await (await get(env, `/task/${taskId}`, auth)).json());
    for (const [what, text] of [["view", viewText], ["timeline", JSON.stringify(timeline)]]) {
      for (const secret of secrets) {
        assert.ok(!text.includes(secret), `the public ${what} names "${secret}"`);
      }
    }
    const callbackEvents = timeline.events.filter((e: { type: string }) =>
      e.type.startsWith("callback.")
    );
    assert.deepEqual(callbackEvents.map((e: { type: string }) => e.type), [
      "callback.attempted",
      "callback.failed",
    ]);
    for (const e of callbackEvents) assert.equal(e.data.error, "refused: private address");

    // The admin API shows the whole record: the name, the address and why.
    const path = `/admin/tasks/${taskId}/events`;
    const denied = await get(env, path, auth);
    assert.equal(denied.status, 401, "the read token is not an admin token");
    await denied.body?.cancel();
    const admin = await get(env, path, { authorization: `Bearer ${ADMIN_TOKEN}` });
    assert.equal(admin.status, 200);
    const full = await admin.json();
    const failed = full.events.find((e: { type: string }) => e.type === "callback.failed");
    assert.equal(failed.data.error, "refused: private address");
    assert.match(failed.data.detail, new RegExp(`${host.replaceAll(".", "\\.")}.*127\\.0\\.0\\.1`));
    assert.match(failed.data.detail, /loopback/);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("callback failures read as short reasons: HTTP status, timeout, connection, DNS", async () => {
  await using env = await testEnv("read-reasons", {
    ADMIN_TOKEN,
    ALLOW_PRIVATE_CALLBACKS: "true",
    CALLBACK_MAX_ATTEMPTS: "1",
    CALLBACK_TIMEOUT_MS: "200",
  });
  const slow = Promise.withResolvers<void>();
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      await req.body?.cancel();
      if (new URL(req.url).pathname === "/slow") await slow.promise;
      return new Response("no", { status: 503 });
    },
  );
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const base = `http://127.0.0.1:${server.addr.port}`;
  const consumers = await runConsumers(env);
  try {
    const cases: [string, string][] = [
      [`${base}/fail`, "HTTP 503"],
      [`${base}/slow`, "timeout"],
      [`http://127.0.0.1:${closedPort}/hook`, "connection failed"],
      ["http://hooks.nowhere.test/hook", "connection failed: host not found"],
    ];
    for (const [url, reason] of cases) {
      const taskId = await submit(env, { callback_url: url });
      const view = await settled(env, taskId);
      assert.equal(view.callback.state, "failed", url);
      assert.equal(view.callback.last_error, reason, url);
      const detail = await (await get(env, `/admin/tasks/${taskId}/events`, {
        authorization: `Bearer ${ADMIN_TOKEN}`,
      })).json();
      const failed = detail.events.find((e: { type: string }) => e.type === "callback.failed");
      assert.notEqual(failed.data.detail, reason, `${url}: the admin API has the full error`);
    }
  } finally {
    slow.resolve();
    await consumers.stop(1_000);
  }
});

Deno.test("task.started names the worker by an opaque id, not its hostname or pid", async () => {
  await using env = await testEnv("read-worker");
  const consumers = await runConsumers(env);
  try {
    const taskId = await submit(env);
    const timeline = await waitFor(async () => {
      const body = await (await get(env, `/task/${taskId}/events`)).json();
      return body.events?.some((e: { type: string }) => e.type === "task.started") ? body : null;
    }, { what: "task.started" });
    const started = timeline.events.find((e: { type: string }) => e.type === "task.started");
    const worker: string = started.data.worker;
    assert.match(worker, /^w-[0-9a-f]{12}$/);
    assert.ok(!worker.includes(hostname()), worker);
    assert.doesNotMatch(worker, new RegExp(`(^|\\D)${Deno.pid}(\\D|$)`));
    assert.ok(!worker.includes(consumers.consumer), "not the consumer name");
  } finally {
    await consumers.stop(1_000);
  }
});
