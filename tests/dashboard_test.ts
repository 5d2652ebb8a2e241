/**
 * The dashboard's sign-in, sessions, CSRF and rate limiting, in-process (no browser): what the
 * cookie carries, what Redis keeps, and what every refusal answers.
 */
import assert from "node:assert/strict";
import {
  csrfMatches,
  roleFor,
  type Session,
  SESSION_COOKIE,
  SIGN_IN_PER_MINUTE,
} from "../src/dashboard/session.ts";
import { loadConfig } from "../src/config.ts";
import { loadTasks } from "../src/dashboard/pages/tasks.tsx";
import { waterfall } from "../src/dashboard/waterfall.ts";
import type { TaskList, TaskListQuery } from "../src/projections/task_index/query.ts";
import type { TaskView } from "../src/projections/task_view/view.ts";
import type { StoredEvent } from "../src/events.ts";
import { createLogger } from "../src/log.ts";
import { deleteMatching } from "../src/projections/rebuild.ts";
import { waitReady } from "../src/redis/client.ts";
import { createServices } from "../src/runtime.ts";
import { fixture, runConsumers, type TestEnv, testEnv, uniquePrefix, waitFor } from "./_helpers.ts";

const ADMIN = "admin-token-0123456789";
const READ = "read-token-0123456789";

function signIn(env: TestEnv, token: string, init: { url?: string; headers?: HeadersInit } = {}) {
  return env.services.app.request(init.url ?? "http://localhost/dashboard/sign-in", {
    method: "POST",
    headers: init.headers,
    body: new URLSearchParams({ token }),
  });
}

/** The session cookie's `name=value` of a sign-in answer. */
function cookieOf(res: Response): string {
  const header = res.headers.get("set-cookie") ?? "";
  assert.match(header, new RegExp(`^${SESSION_COOKIE}=`));
  return header.split(";")[0];
}

async function csrfOf(env: TestEnv, cookie: string): Promise<string> {
  const html = await (await env.services.app.request("/dashboard/replay", {
    headers: { cookie },
  })).text();
  return /name="_csrf" value="([^"]+)"/.exec(html)![1];
}

function post(env: TestEnv, path: string, cookie: string, form: Record<string, string>) {
  return env.services.app.request(path, {
    method: "POST",
    headers: { cookie },
    body: new URLSearchParams(form),
  });
}

Deno.test("roles: the admin token, the read token, nothing else; CSRF needs the exact token", () => {
  const tokens = { admin: ADMIN, read: READ };
  assert.equal(roleFor(ADMIN, tokens), "admin");
  assert.equal(roleFor(READ, tokens), "read");
  assert.equal(roleFor(`${ADMIN} `, tokens), null);
  assert.equal(roleFor("", tokens), null);
  assert.equal(roleFor(READ, { admin: ADMIN }), null);
  const session: Session = { role: "admin", csrf: "abc123", created_at: "", grant: "" };
  assert.equal(csrfMatches(session, "abc123"), true);
  assert.equal(csrfMatches(session, "abc124"), false);
  assert.equal(csrfMatches(session, ""), false);
  assert.equal(csrfMatches(session, null), false);
});

Deno.test("without ADMIN_TOKEN every /dashboard path answers 404", async () => {
  await using env = await testEnv("dash-off", { READ_TOKEN: READ });
  for (const path of ["/dashboard", "/dashboard/sign-in", "/dashboard/assets/dashboard.css"]) {
    const res = await env.services.app.request(path);
    await res.body?.cancel();
    assert.equal(res.status, 404, path);
  }
  const res = await signIn(env, READ);
  await res.body?.cancel();
  assert.equal(res.status, 404);
});

Deno.test("sign-in sets an HttpOnly, SameSite=Strict, expiring cookie; Secure over https", async () => {
  await using env = await testEnv("dash-cookie", {
    ADMIN_TOKEN: ADMIN,
    DASHBOARD_SESSION_TTL_S: "600",
  });
  const res = await signIn(env, ADMIN);
  assert.equal(res.status, 303);
  assert.equal(res.headers.get("location"), "/dashboard");
  const header = res.headers.get("set-cookie")!;
  assert.match(header, /; HttpOnly/);
  assert.match(header, /; SameSite=Strict/);
  assert.match(header, /; Max-Age=600/);
  assert.match(header, /; Path=\/dashboard/);
  assert.doesNotMatch(header, /Secure/);
  assert.ok(!header.includes(ADMIN), "the token is not the cookie");

  // The session is in Redis under the prefix, by the hash of its id, with the TTL.
  const id = cookieOf(res).split("=")[1];
  const stored: string[] = [];
  let cursor = "0";
  do {
    const [next, found] = await env.services.redis.scan(
      cursor,
      "MATCH",
      `{${env.prefix}}:dashboard-session:*`,
      "COUNT",
      10_000,
    );
    stored.push(...found);
    cursor = next;
  } while (cursor !== "0");
  assert.equal(stored.length, 1);
  assert.ok(!stored[0].includes(id), "the key does not hold the cookie's id");
  const ttl = await env.services.redis.ttl(stored[0]);
  assert.ok(ttl > 590 && ttl <= 600, `ttl ${ttl}`);

  const secure = await signIn(env, ADMIN, { url: "https://localhost/dashboard/sign-in" });
  assert.match(secure.headers.get("set-cookie")!, /; Secure/);
  // A proxy's word counts only with TRUST_PROXY.
  const claimed = await signIn(env, ADMIN, { headers: { "x-forwarded-proto": "https" } });
  assert.doesNotMatch(claimed.headers.get("set-cookie")!, /Secure/);
  await using proxied = await testEnv("dash-proxy", { ADMIN_TOKEN: ADMIN, TRUST_PROXY: "true" });
  const behind = await signIn(proxied, ADMIN, { headers: { "x-forwarded-proto": "https" } });
  assert.match(behind.headers.get("set-cookie")!, /; Secure/);
});

Deno.test("pages need a session; sign-out revokes it on the server", async () => {
  await using env = await testEnv("dash-session", { ADMIN_TOKEN: ADMIN });
  const app = env.services.app;
  const anonymous = await app.request("/dashboard/tasks");
  assert.equal(anonymous.status, 303);
  assert.equal(anonymous.headers.get("location"), "/dashboard/sign-in");
  const fragment = await app.request("/dashboard", { headers: { "x-dashboard-fragment": "1" } });
  assert.equal(fragment.status, 401);
  await fragment.body?.cancel();
  for (const path of ["/dashboard/live/events", "/dashboard/live/tasks/t1"]) {
    const live = await app.request(path);
    assert.equal(live.status, 401, path);
    await live.body?.cancel();
  }
  const forged = await app.request("/dashboard", {
    headers: { cookie: `${SESSION_COOKIE}=not-a-session` },
  });
  assert.equal(forged.status, 303);

  const cookie = cookieOf(await signIn(env, ADMIN));
  const overview = await app.request("/dashboard", { headers: { cookie } });
  assert.equal(overview.status, 200);
  const html = await overview.text();
  assert.match(html, /<h1>Overview<\/h1>/);
  assert.equal(overview.headers.get("cache-control"), "no-store");
  assert.match(overview.headers.get("content-security-policy")!, /script-src 'self'/);
  // A HEAD of a live stream gets its head, not a stream left open.
  const head = await app.request("/dashboard/live/events", { method: "HEAD", headers: { cookie } });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get("content-type"), "text/event-stream");
  assert.equal(await head.text(), "");

  const csrf = await csrfOf(env, cookie);
  const out = await post(env, "/dashboard/sign-out", cookie, { _csrf: csrf });
  assert.equal(out.status, 303);
  assert.match(out.headers.get("set-cookie")!, new RegExp(`^${SESSION_COOKIE}=;`));
  const after = await app.request("/dashboard", { headers: { cookie } });
  assert.equal(after.status, 303, "the old cookie no longer opens anything");
});

Deno.test("mutations need the session's CSRF token and an admin session", async () => {
  await using env = await testEnv("dash-csrf", { ADMIN_TOKEN: ADMIN, READ_TOKEN: READ });
  const admin = cookieOf(await signIn(env, ADMIN));
  const csrf = await csrfOf(env, admin);
  const forms: Record<string, string>[] = [{}, { _csrf: "" }, { _csrf: `${csrf}x` }];
  for (const form of forms) {
    const res = await post(env, "/dashboard/replay/rebuild", admin, form);
    assert.equal(res.status, 403, JSON.stringify(form));
    assert.match(await res.text(), /security token/);
  }
  // Another session's token is no good either.
  const other = cookieOf(await signIn(env, ADMIN));
  const crossed = await post(env, "/dashboard/replay/rebuild", admin, {
    _csrf: await csrfOf(env, other),
  });
  assert.equal(crossed.status, 403);
  await crossed.body?.cancel();
  // The right token: the confirmation page (nothing done yet).
  const ok = await post(env, "/dashboard/replay/rebuild", admin, { _csrf: csrf });
  assert.equal(ok.status, 200);
  assert.match(await ok.text(), /Rebuild every projection\?/);
  // As a header too (scripts).
  const header = await env.services.app.request("/dashboard/replay/rebuild", {
    method: "POST",
    headers: { cookie: admin, "x-csrf-token": csrf },
  });
  assert.equal(header.status, 200);
  await header.body?.cancel();

  // A read-only session: no mutation forms, and its own CSRF token does not make it an admin.
  const reader = cookieOf(await signIn(env, READ));
  const page = await (await env.services.app.request("/dashboard/replay", {
    headers: { cookie: reader },
  })).text();
  assert.doesNotMatch(page, /replay\/rebuild/);
  assert.match(page, /read-only/);
  const refused = await post(env, "/dashboard/replay/rebuild", reader, {
    _csrf: await csrfOf(env, reader),
    confirm: "yes",
  });
  assert.equal(refused.status, 403);
  assert.match(await refused.text(), /read-only session/);
  // It may still sign itself out.
  const out = await post(env, "/dashboard/sign-out", reader, { _csrf: await csrfOf(env, reader) });
  assert.equal(out.status, 303);
});

Deno.test("wrong tokens are rate-limited per address, with Retry-After", async () => {
  const lines: string[] = [];
  await using env = await testEnv("dash-rate", { ADMIN_TOKEN: ADMIN, TRUST_PROXY: "true" });
  const from = (address: string) => ({ headers: { "x-forwarded-for": address } });
  for (let i = 0; i < SIGN_IN_PER_MINUTE; i++) {
    const res = await signIn(env, `wrong-token-${i}`, from("203.0.113.9"));
    assert.equal(res.status, 401);
    lines.push(await res.text());
  }
  const limited = await signIn(env, ADMIN, from("203.0.113.9"));
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  assert.equal(limited.headers.get("set-cookie"), null, "not even the right token gets in");
  await limited.body?.cancel();
  // Another address has its own budget.
  const other = await signIn(env, ADMIN, from("203.0.113.10"));
  assert.equal(other.status, 303);
  for (const page of lines) assert.doesNotMatch(page, /wrong-token-/, "the token is not echoed");
});

Deno.test("the tokens never reach the log, a URL or a page", async () => {
  const prefix = uniquePrefix("dash-log");
  const config = loadConfig({ KEY_PREFIX: prefix, ADMIN_TOKEN: ADMIN, READ_TOKEN: READ });
  const lines: string[] = [];
  const services = createServices(config, createLogger("debug", {}, (line) => lines.push(line)));
  try {
    await waitReady(services.redis);
    const app = services.app;
    const sign = (token: string) =>
      app.request("/dashboard/sign-in", {
        method: "POST",
        body: new URLSearchParams({ token }),
      });
    const wrong = await sign(`${ADMIN}-almost`);
    const wrongPage = await wrong.text();
    const right = await sign(ADMIN);
    const cookie = right.headers.get("set-cookie")!.split(";")[0];
    const pages = await Promise.all(
      ["/dashboard", "/dashboard/tasks", "/dashboard/dead-letters", "/dashboard/replay"].map(
        async (path) => await (await app.request(path, { headers: { cookie } })).text(),
      ),
    );
    assert.ok(lines.some((l) => l.includes("Dashboard sign-in refused")));
    assert.ok(lines.some((l) => l.includes("Dashboard session started")));
    for (const text of [...lines, wrongPage, right.headers.get("location")!, ...pages]) {
      assert.ok(!text.includes(ADMIN) && !text.includes(READ), text.slice(0, 200));
    }
  } finally {
    await deleteMatching(services.redis, services.keys.pattern);
    await services.close();
  }
});

Deno.test("waterfall: queue wait, then each step attempt on the run's time axis, failures marked", () => {
  const at = (ms: number) => new Date(Date.UTC(2026, 11, 1, 12, 0, 0, ms)).toISOString();
  let n = 0;
  const e = (ms: number, type: string, data: Record<string, unknown>) =>
    ({ id: `${++n}-0`, task_id: "t1", type, at: at(ms), data }) as unknown as StoredEvent;
  const history = [
    e(0, "task.queued", { video_id: "v", user_id: "u", is_revision: false, webhook_entry: "1-0" }),
    e(40, "task.started", { attempt: 1, worker: "w" }),
    e(40, "step.started", { step: "reframe", attempt: 1 }),
    e(140, "task.failed", {
      error: "timeout",
      step: "reframe",
      retryable: true,
      attempt: 1,
      final: false,
    }),
    e(300, "task.started", { attempt: 2, worker: "w" }),
    e(300, "step.started", { step: "reframe", attempt: 2 }),
    e(350, "step.completed", { step: "reframe", attempt: 2, duration_ms: 48, output: {} }),
    e(350, "step.started", { step: "scenes", attempt: 2 }),
  ];
  const w = waterfall(history);
  assert.equal(w.run, 1);
  assert.deepEqual(
    w.bars.map((b) => [b.label, b.attempt, b.startMs, b.endMs, b.state]),
    [
      ["queue", null, 0, 40, "done"],
      ["reframe", 1, 40, 140, "failed"],
      ["reframe", 2, 300, 350, "done"],
      ["scenes", 2, 350, null, "running"],
    ],
  );
  assert.equal(w.bars[1].note, "timeout");
  assert.equal(w.spanMs, 350);
  // A reprocess starts a new run: only its events count, from its request.
  const rerun = waterfall([
    ...history,
    e(1000, "task.reprocess_requested", {
      run: 2,
      requested_by: "maya",
      reason: "r",
      source: "replay",
    }),
    e(1010, "task.started", { attempt: 1, worker: "w" }),
  ]);
  assert.equal(rerun.run, 2);
  assert.deepEqual(rerun.bars.map((b) => [b.label, b.startMs, b.endMs]), [["queue", 0, 10]]);
});

Deno.test("with Redis unreachable the dashboard answers a 503 page, not a stack trace", async () => {
  const config = loadConfig({
    KEY_PREFIX: uniquePrefix("dash-down"),
    ADMIN_TOKEN: ADMIN,
    REDIS_URL: "redis://127.0.0.1:1",
  });
  const services = createServices(config, createLogger("error", {}, () => {}));
  try {
    const res = await services.app.request("/dashboard/sign-in", {
      method: "POST",
      body: new URLSearchParams({ token: ADMIN }),
    });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("retry-after"), "1");
    assert.match(res.headers.get("content-type")!, /text\/html/);
    assert.match(await res.text(), /unreachable/);
  } finally {
    await services.close();
  }
});

Deno.test("a live first page keeps its place: new tasks join on top, older ones stay paged", async () => {
  const view = (ms: number, id: string) =>
    ({ task_id: id, created_at: new Date(ms).toISOString() }) as TaskView;
  const member = (ms: number, id: string) => `${String(ms).padStart(13, "0")}:${id}`;
  const asked: TaskListQuery[] = [];
  // The index now: two new tasks (300, 400) above the first render's last one (200).
  const query = (q: TaskListQuery): Promise<TaskList> => {
    asked.push(q);
    const items = [view(400, "d"), view(300, "c"), view(200, "b"), view(100, "a")]
      .filter((t) => Date.parse(t.created_at!) >= Number(q.from ?? 0));
    return Promise.resolve({ items, next_cursor: null, matched: [] });
  };
  const filters = { q: "", field: "any", status: "", from: "", to: "", limit: "", cursor: "" };
  const { list, gap } = await loadTasks(query, filters, { member: member(200, "b"), more: true });
  assert.deepEqual(list.items.map((t) => t.task_id), ["d", "c", "b"]);
  assert.equal(list.next_cursor, member(200, "b"), "Older tasks still starts below b");
  assert.equal(gap, false);
  assert.equal(asked[0].from, 200);
  assert.equal(asked[0].limit, 100);
  // Without older tasks at the first render, there is still no "older" link.
  const last = await loadTasks(query, filters, { member: member(200, "b"), more: false });
  assert.equal(last.list.next_cursor, null);
  // A bad time is said, not thrown.
  const bad = await loadTasks(query, { ...filters, from: "yesterday" }, null);
  assert.equal(bad.error, "A time is not a date");
});

Deno.test("the task list filters by status and creation time, and says what is wrong", async () => {
  await using env = await testEnv("dash-filters", { ADMIN_TOKEN: ADMIN });
  const consumers = await runConsumers(env);
  try {
    const ids: string[] = [];
    for (const video of ["vid-f-1", "vid-f-2"]) {
      const res = await env.post({ ...JSON.parse(await fixture("minimal.json")), video_id: video });
      ids.push((await res.json()).task_id);
    }
    const cookie = cookieOf(await signIn(env, ADMIN));
    const listed = async (query: string) => {
      const res = await env.services.app.request(`/dashboard/tasks${query}`, {
        headers: { cookie },
      });
      const html = await res.text();
      return {
        status: res.status,
        html,
        ids: [...html.matchAll(/<tr data-task="([^"]+)"/g)].map((m) => m[1]),
      };
    };
    await waitFor(async () => (await listed("?status=completed")).ids.length === 2, {
      what: "both tasks completed in the index",
    });
    assert.deepEqual((await listed("?status=completed")).ids, [...ids].reverse(), "newest first");
    assert.deepEqual((await listed("?status=failed")).ids, []);
    const hour = new Date(Date.now() + 3_600_000).toISOString().slice(0, 16);
    assert.deepEqual((await listed(`?from=${hour}`)).ids, []);
    assert.equal((await listed(`?to=${hour}`)).ids.length, 2);
    const bad = await listed("?from=soon");
    assert.equal(bad.status, 400);
    assert.match(bad.html, /A time is not a date/);
    const badStatus = await listed("?status=lost");
    assert.equal(badStatus.status, 400);
    assert.match(badStatus.html, /role="alert"/);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a session ends when the token that granted it changes or is removed", async () => {
  await using env = await testEnv("dash-grant", { ADMIN_TOKEN: ADMIN, READ_TOKEN: READ });
  const admin = cookieOf(await signIn(env, ADMIN));
  const read = cookieOf(await signIn(env, READ));
  for (const cookie of [admin, read]) {
    const res = await env.services.app.request("/dashboard", { headers: { cookie } });
    await res.body?.cancel();
    assert.equal(res.status, 200);
  }
  // The same Redis and prefix, restarted with a new ADMIN_TOKEN and no READ_TOKEN.
  const config = loadConfig({ KEY_PREFIX: env.prefix, ADMIN_TOKEN: "rotated-admin-token-0123" });
  const services = createServices(config, createLogger("error"));
  try {
    await waitReady(services.redis);
    for (const cookie of [admin, read]) {
      const res = await services.app.request("/dashboard", { headers: { cookie } });
      await res.body?.cancel();
      assert.equal(res.status, 303, "the old session no longer opens anything");
      assert.equal(res.headers.get("location"), "/dashboard/sign-in");
    }
    // The old app, with its tokens unchanged, still honours its sessions.
    const res = await env.services.app.request("/dashboard", { headers: { cookie: admin } });
    await res.body?.cancel();
    assert.equal(res.status, 200);
  } finally {
    await services.close();
  }
});

Deno.test("a sign-in posted from another site is refused and spends no attempt", async () => {
  await using env = await testEnv("dash-cross-site", { ADMIN_TOKEN: ADMIN });
  for (let i = 0; i < SIGN_IN_PER_MINUTE + 2; i++) {
    const res = await signIn(env, "wrong-token-0123456789", {
      headers: { "sec-fetch-site": "cross-site", origin: "https://evil.example" },
    });
    await res.body?.cancel();
    assert.equal(res.status, 403);
  }
  const ok = await signIn(env, ADMIN, { headers: { "sec-fetch-site": "same-origin" } });
  await ok.body?.cancel();
  assert.equal(ok.status, 303, "the operator can still sign in");
});
