import assert from "node:assert/strict";
import { fixture, FIXTURES, readStream, type TestEnv, testEnv } from "./_helpers.ts";

const GOOD = ["minimal.json", "n8n-envelope.json", "new-video.json", "revision.json"];

Deno.test("every good fixture is accepted with the seed's fields and a status link", async () => {
  await using env = await testEnv("accept");
  for (const name of GOOD) {
    const res = await env.post(await fixture(name));
    assert.equal(res.status, 202, name);
    const body = await res.json();
    assert.equal(body.status, "success");
    assert.equal(typeof body.message, "string");
    assert.match(body.task_id, /^[0-9a-f-]{36}$/);
    assert.ok(body.video_id);
    assert.ok(!Number.isNaN(Date.parse(body.timestamp)));
    assert.equal(body.duplicate, false);
    assert.equal(body.status_url, `/task/${body.task_id}`);
    assert.equal(res.headers.get("location"), body.status_url);
  }
  const work = await readStream(env.services.redis, env.services.keys.webhookStream);
  assert.equal(work.length, GOOD.length);
  const queued = await readStream(env.services.redis, env.services.keys.eventStream);
  assert.deepEqual(queued.map((e) => e.type), GOOD.map(() => "task.queued"));
});

Deno.test("the n8n envelope is unwrapped and its strings normalised", async () => {
  await using env = await testEnv("n8n");
  const res = await env.post(await fixture("n8n-envelope.json"));
  assert.equal(res.status, 202);
  const [entry] = await readStream(env.services.redis, env.services.keys.webhookStream);
  const payload = JSON.parse(entry.payload);
  assert.equal(payload.video_id, "vid_n8n_314");
  assert.equal(payload.is_revision, false);
  assert.equal(payload.request_timestamp, new Date(1764321302 * 1000).toISOString());
  assert.equal(payload.webhookUrl, "https://n8n.example.com/webhook/video-request");
  assert.equal(payload.executionMode, "production");
  assert.equal(payload.version, "2");
});

Deno.test("unknown fields are kept in the event", async () => {
  await using env = await testEnv("unknown");
  const body = JSON.parse(await fixture("minimal.json"));
  const res = await env.post({ ...body, campaign: { id: "c-9", tags: ["spring"] } });
  assert.equal(res.status, 202);
  const [entry] = await readStream(env.services.redis, env.services.keys.webhookStream);
  assert.deepEqual(JSON.parse(entry.payload).campaign, { id: "c-9", tags: ["spring"] });
});

const BAD: Record<string, { status: number; fields?: string[] }> = {
  "array-body.json": { status: 422, fields: ["(body)"] },
  "bad-email.json": { status: 422, fields: ["user_email"] },
  "bad-schemes.json": { status: 422, fields: ["image_url", "callback_url"] },
  "empty-prompt.json": { status: 422, fields: ["prompt"] },
  "image-url-not-url.json": { status: 422, fields: ["image_url"] },
  "missing-image-url.json": { status: 422, fields: ["image_url"] },
  "truncated.txt": { status: 400 },
  "wrong-types.json": { status: 422, fields: ["video_id", "user_id", "is_revision"] },
};

Deno.test("every bad fixture is rejected as problem+json naming each bad field, nothing appended", async () => {
  await using env = await testEnv("reject");
  const names = [...Deno.readDirSync(new URL("bad/", FIXTURES))].map((e) => e.name).sort();
  assert.deepEqual(names, Object.keys(BAD).sort(), "every bad fixture has an expectation");
  for (const [name, expected] of Object.entries(BAD)) {
    const res = await env.post(await fixture(`bad/${name}`));
    assert.equal(res.status, expected.status, name);
    assert.equal(res.headers.get("content-type"), "application/problem+json", name);
    const problem = await res.json();
    assert.equal(problem.status, expected.status);
    if (expected.fields) {
      const fields = problem.errors.map((e: { field: string }) => e.field);
      for (const field of expected.fields) assert.ok(fields.includes(field), `${name}: ${field}`);
      assert.equal(new Set(fields).size, expected.fields.length, `${name}: only the bad fields`);
    }
  }
  assert.equal(await env.services.redis.exists(env.services.keys.webhookStream), 0);
  assert.equal(await env.services.redis.exists(env.services.keys.eventStream), 0);
});

Deno.test("one 422 names schema and policy failures together", async () => {
  await using env = await testEnv("reject-all", { PROMPT_MAX_CHARS: "10" });
  const body = {
    ...JSON.parse(await fixture("minimal.json")),
    prompt: "a prompt longer than ten characters",
    video_id: "",
    image_url: "http://127.0.0.1/product.png",
    callback_url: "http://[::1]/hook",
  };
  const res = await env.post(body);
  assert.equal(res.status, 422);
  const fields = (await res.json()).errors.map((e: { field: string }) => e.field).sort();
  assert.deepEqual(fields, ["callback_url", "image_url", "prompt", "video_id"]);
  assert.equal(await env.services.redis.exists(env.services.keys.webhookStream), 0);
});

Deno.test("content type, size and encoding are checked before parsing", async () => {
  await using env = await testEnv("limits", { MAX_BODY_BYTES: "2048" });
  const minimal = await fixture("minimal.json");

  const text = await env.post(minimal, { "content-type": "text/plain" });
  assert.equal(text.status, 415);
  await text.body?.cancel();

  const big = JSON.parse(minimal);
  big.prompt = "x".repeat(3_000);
  const tooLarge = await env.post(big);
  assert.equal(tooLarge.status, 413);
  assert.equal((await tooLarge.json()).max_bytes, 2048);

  // Chunked, without Content-Length: counted while streaming.
  const chunk = new TextEncoder().encode(" ".repeat(1024));
  const streamed = await env.services.app.request("/webhook", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: new ReadableStream({
      pull(controller) {
        controller.enqueue(chunk);
      },
    }),
  });
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();

  const invalidUtf8 = await env.services.app.request("/webhook", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
  });
  assert.equal(invalidUtf8.status, 400);
  await invalidUtf8.body?.cancel();

  const charset = await env.post(minimal, { "content-type": "application/json; charset=utf-8" });
  assert.equal(charset.status, 202);
  await charset.body?.cancel();
  assert.equal(await env.services.redis.xlen(env.services.keys.webhookStream), 1);
});

Deno.test("is_revision and request_timestamp accept n8n strings and epochs", async () => {
  await using env = await testEnv("coerce");
  const base = JSON.parse(await fixture("minimal.json"));
  const cases: [unknown, unknown, boolean, string][] = [
    ["true", 1764321302000, true, "2025-11-28T09:15:02.000Z"],
    [false, "2026-11-28T09:15:02.331Z", false, "2026-11-28T09:15:02.331Z"],
  ];
  for (const [isRevision, timestamp, revision, iso] of cases) {
    const res = await env.post({ ...base, is_revision: isRevision, request_timestamp: timestamp });
    assert.equal(res.status, 202);
    await res.body?.cancel();
    const entries = await readStream(env.services.redis, env.services.keys.webhookStream);
    const payload = JSON.parse(entries.at(-1)!.payload);
    assert.equal(payload.is_revision, revision);
    assert.equal(payload.request_timestamp, iso);
  }
  const bad = await env.post({ ...base, request_timestamp: "yesterday" });
  assert.equal(bad.status, 422);
  assert.equal((await bad.json()).errors[0].field, "request_timestamp");
});

Deno.test("50 concurrent duplicates of one idempotency key make one task", async () => {
  await using env = await testEnv("idem");
  const body = await fixture("new-video.json");
  const responses = await Promise.all(Array.from({ length: 50 }, () => env.post(body)));
  const bodies = await Promise.all(responses.map((r) => r.json()));
  assert.ok(responses.every((r) => r.status === 202));
  assert.equal(new Set(bodies.map((b) => b.task_id)).size, 1);
  assert.equal(bodies.filter((b) => !b.duplicate).length, 1);
  assert.equal(await env.services.redis.xlen(env.services.keys.webhookStream), 1);
  assert.equal(await env.services.redis.xlen(env.services.keys.eventStream), 1);
  const ttl = await env.services.redis.ttl(
    env.services.keys.idempotency(JSON.parse(body).user_id, "vid_01JD8Q3ZK5M2A7-create-1"),
  );
  assert.ok(ttl > 86_000 && ttl <= 86_400, `ttl ${ttl}`);
});

Deno.test("an idempotency key belongs to its user: another user's same key is a new task", async () => {
  await using env = await testEnv("idem-user");
  const body = JSON.parse(await fixture("new-video.json"));
  const first = await (await env.post(body)).json();
  const other = await (await env.post({ ...body, user_id: "someone-else" })).json();
  assert.equal(other.duplicate, false);
  assert.notEqual(other.task_id, first.task_id);
  // The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
  const a = await (await env.post({ ...body, user_id: "a:b", idempotency_key: "c" })).json();
  const b = await (await env.post({ ...body, user_id: "a", idempotency_key: "b:c" })).json();
  assert.equal(b.duplicate, false);
  assert.notEqual(a.task_id, b.task_id);
  const again = await (await env.post(body)).json();
  assert.deepEqual([again.task_id, again.duplicate], [first.task_id, true]);
});

Deno.test("requests without an idempotency key are always new tasks", async () => {
  await using env = await testEnv("noidem");
  const body = await fixture("minimal.json");
  const [a, b] = await Promise.all([env.post(body), env.post(body)]);
  assert.notEqual((await a.json()).task_id, (await b.json()).task_id);
  assert.equal(await env.services.redis.xlen(env.services.keys.webhookStream), 2);
});

Deno.test("a task is visible as queued right after its 202, before any projection ran", async () => {
  await using env = await testEnv("visible");
  const { task_id } = await (await env.post(await fixture("minimal.json"))).json();
  const res = await env.services.app.request(`/task/${task_id}`);
  assert.equal(res.status, 200);
  const view = await res.json();
  assert.equal(view.status, "queued");
  assert.equal(view.video_id, "vid_min_001");
  const events = await (await env.services.app.request(`/task/${task_id}/events`)).json();
  assert.deepEqual(events.events.map((e: { type: string }) => e.type), ["task.queued"]);
  const missing = await env.services.app.request("/task/no-such-task");
  assert.equal(missing.status, 404);
  assert.equal(missing.headers.get("content-type"), "application/problem+json");
  await missing.body?.cancel();
});

Deno.test("a 1 MB unknown field is refused naming it, and nothing is stored", async () => {
  await using env = await testEnv("unknown-bound");
  const base = JSON.parse(await fixture("minimal.json"));
  const res = await env.post({ ...base, attachment: "x".repeat(1_000_000), note: "small" });
  assert.equal(res.status, 422);
  const problem = await res.json();
  assert.deepEqual(problem.errors.map((e: { field: string }) => e.field), ["attachment"]);
  assert.match(problem.detail, /attachment/);
  assert.equal(await env.services.redis.exists(env.services.keys.webhookStream), 0);
  assert.equal(await env.services.redis.exists(env.services.keys.eventStream), 0);
  // Within the bound (16 KiB by default) unknown fields are still kept.
  const kept = await env.post({ ...base, note: "y".repeat(16_000) });
  assert.equal(kept.status, 202);
  await kept.body?.cancel();
  const [entry] = await readStream(env.services.redis, env.services.keys.webhookStream);
  assert.equal(JSON.parse(entry.payload).note.length, 16_000);
});

Deno.test("UNKNOWN_FIELDS_MAX_BYTES=0 drops unknown fields and keeps the known ones", async () => {
  await using env = await testEnv("unknown-drop", { UNKNOWN_FIELDS_MAX_BYTES: "0" });
  const base = JSON.parse(await fixture("n8n-envelope.json"));
  base.body.campaign = { id: "c-9" };
  const res = await env.post(base);
  assert.equal(res.status, 202);
  await res.body?.cancel();
  const [entry] = await readStream(env.services.redis, env.services.keys.webhookStream);
  const payload = JSON.parse(entry.payload);
  assert.equal(payload.campaign, undefined);
  assert.equal(payload.webhookUrl, "https://n8n.example.com/webhook/video-request");
});

Deno.test("another sender cannot exhaust a user's rate limit bucket", async () => {
  const from = (env: TestEnv, address: string, body: object, headers = {}) =>
    env.post(body, { "x-forwarded-for": address, ...headers });
  const drain = async (res: Response) => {
    await res.body?.cancel();
    return res.status;
  };
  const base = JSON.parse(await fixture("minimal.json"));
  // Open endpoint: the per-user bucket is per (sender, user).
  await using open = await testEnv("rate-aim", { RATE_LIMIT_PER_MINUTE: "2", TRUST_PROXY: "true" });
  assert.equal(await drain(await from(open, "203.0.113.66", base)), 202);
  assert.equal(await drain(await from(open, "203.0.113.66", base)), 202);
  assert.equal(await drain(await from(open, "203.0.113.66", base)), 429, "the attacker's own");
  assert.equal(await drain(await from(open, "198.51.100.7", base)), 202, "the user's sender");
  assert.equal(await drain(await from(open, "198.51.100.7", base)), 202);

  // Authentication on: requests without credentials never reach the buckets.
  const token = "n8n-header-token-0123456789";
  await using authed = await testEnv("rate-aim-auth", {
    RATE_LIMIT_PER_MINUTE: "2",
    TRUST_PROXY: "true",
    WEBHOOK_TOKEN: token,
  });
  for (let i = 0; i < 5; i++) {
    assert.equal(await drain(await from(authed, "203.0.113.66", base)), 401);
  }
  const signed = { "x-webhook-token": token };
  assert.equal(await drain(await from(authed, "198.51.100.7", base, signed)), 202);
  assert.equal(await drain(await from(authed, "198.51.100.8", base, signed)), 202);
  assert.equal(await drain(await from(authed, "198.51.100.9", base, signed)), 429, "per user");
});
