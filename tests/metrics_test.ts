import assert from "node:assert/strict";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import type { ReframeOutput } from "../src/pipeline/steps/reframe.ts";
import { bindSteps, defineStep } from "../src/pipeline/step.ts";
import type { Pipeline } from "../src/pipeline/steps.ts";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import { ensureGroup } from "../src/redis/streams.ts";
import { createPipeline, createPorts } from "../src/runtime.ts";
import { startWorkerHttp } from "../src/worker_http.ts";
import {
  caughtUp,
  fixture,
  freePort,
  runConsumers,
  type TestEnv,
  testEnv,
  waitFor,
} from "./_helpers.ts";

const TOKEN = "metrics-token-0123456789";

/** Whether promtool is installed (Debian package `prometheus`; .ci/run installs it). */
const promtool = await new Deno.Command("promtool", { args: ["--version"], stdout: "null" })
  .output().then((out) => out.success, () => false);
const ignore = !promtool;
if (ignore) console.error("promtool is not installed: the promtool checks are skipped");

/** Runs promtool with `args`, `input` on stdin; fails the test with its output unless it passes. */
async function runPromtool(args: string[], input?: string): Promise<void> {
  const child = new Deno.Command("promtool", {
    args,
    stdin: input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    cwd: new URL("../", import.meta.url),
  }).spawn();
  if (input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `promtool ${args.join(" ")} failed:\n${text}`);
}

/** The samples of a text exposition as `name{labels}` → value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function scrapeApp(env: TestEnv, headers: Record<string, string> = {}) {
  const res = await env.services.app.request("/metrics", { headers });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return await res.text();
}

async function submit(env: TestEnv, patch: object = {}) {
  const body = { ...JSON.parse(await fixture("minimal.json")), ...patch };
  const res = await env.post(body);
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

/**
 * The offline pipeline with a reframe step bound through bindSteps (so its provider calls are
 * counted) that fails on cue: a prompt with "retry-once" fails its first attempt (retryable), one
 * with "give-up" fails for good.
 */
function cuedPipeline(env: TestEnv): Pipeline {
  const cued = defineStep({
    name: "reframe" as const,
    providers: { live: () => null, offline: () => null },
    run: ({ request, attempt }): Promise<ReframeOutput> => {
      if (request.prompt.includes("retry-once") && attempt === 1) {
        return Promise.reject(new RetryableError("Provider busy"));
      }
      if (request.prompt.includes("give-up")) {
        return Promise.reject(new UnrecoverableError("Provider refused the image"));
      }
      return Promise.resolve({
        image_url: request.image_url,
        reframed: false,
        provider: "offline",
      });
    },
  });
  const [reframe] = bindSteps([cued], env.config, "offline", createPorts(env.config, env.services));
  return createPipeline(env.config, env.services).map((s) => s.name === "reframe" ? reframe : s);
}

/** A callback receiver: /ok answers 200, /flaky 500 then 200, /gone 410. */
function receiver() {
  let flaky = 0;
  const port = freePort();
  const server = Deno.serve({ port, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    const path = new URL(req.url).pathname;
    if (path === "/flaky") return new Response(null, { status: flaky++ === 0 ? 500 : 200 });
    return new Response(null, { status: path === "/gone" ? 410 : 200 });
  });
  return { url: (path: string) => `http://localhost:${port}${path}`, server };
}

Deno.test("metrics move by the right amounts as tasks complete, retry and dead-letter", async () => {
  await using env = await testEnv("metrics-flow", {
    ALLOW_PRIVATE_CALLBACKS: "true",
    CALLBACK_MAX_ATTEMPTS: "3",
    MAX_ATTEMPTS: "3",
  });
  const { redis, keys } = env.services;
  const callbacks = receiver();
  const consumers = await runConsumers(env, { pipeline: cuedPipeline(env) });
  try {
    const ids = [
      await submit(env, { callback_url: callbacks.url("/ok") }),
      await submit(env, { prompt: "retry-once please", callback_url: callbacks.url("/flaky") }),
      await submit(env, { prompt: "give-up now", callback_url: callbacks.url("/gone") }),
    ];
    // A duplicate and a refusal, for the webhook counters.
    const again = { ...JSON.parse(await fixture("minimal.json")), idempotency_key: "k-1" };
    ids.push(await submit(env, again));
    assert.equal((await env.post(again)).status, 202);
    assert.equal((await env.post({ prompt: "" })).status, 422);
    const settled = await waitFor(async () => {
      for (const id of ids) {
        const view = await readTaskView(redis, keys, id);
        if (!view || !["completed", "failed"].includes(view.status)) return null;
        const callback = view.callback?.state;
        if (callback && !["delivered", "failed"].includes(callback)) return null;
      }
      return await caughtUp(redis, [keys.webhookStream, keys.eventStream]);
    }, { what: "every task and callback settled", timeoutMs: 20_000 });
    assert.ok(settled);

    const text = await scrapeApp(env);
    const m = samples(text);
    const at = (key: string) => m.get(`video_pipeline_${key}`);
    // Four tasks ran (the idempotent one too): three completed, one dead-lettered.
    assert.equal(at('task_outcomes_total{outcome="completed"}'), 3);
    assert.equal(at('task_outcomes_total{outcome="retried"}'), 1);
    assert.equal(at('task_outcomes_total{outcome="failed"}'), 1);
    assert.equal(at('task_outcomes_total{outcome="dead_lettered"}'), 1);
    assert.equal(at("task_duration_seconds_count"), 3);
    assert.equal(at("task_queue_wait_seconds_count"), 4);
    assert.equal(at("tasks_in_progress"), 0);
    assert.equal(at('step_duration_seconds_count{step="reframe"}'), 3);
    assert.equal(at('step_duration_seconds_count{step="scenes"}'), 3);
    assert.equal(at('step_duration_seconds_count{step="persist"}'), 3);
    // Reframe: 3 successes, 1 retryable failure, 1 refusal; scenes: 3 successes.
    assert.equal(at('provider_calls_total{provider="offline",outcome="success"}'), 6);
    assert.equal(at('provider_calls_total{provider="offline",outcome="retryable_error"}'), 1);
    assert.equal(at('provider_calls_total{provider="offline",outcome="error"}'), 1);
    assert.equal(
      at('provider_call_duration_seconds_count{provider="offline",outcome="success"}'),
      6,
    );
    // Callbacks: /ok and /flaky delivered (after one retry), /gone failed; the task without a
    // callback_url sends none.
    assert.equal(at('callback_deliveries_total{result="delivered"}'), 2);
    assert.equal(at('callback_deliveries_total{result="retried"}'), 1);
    assert.equal(at('callback_deliveries_total{result="failed"}'), 1);
    assert.equal(at('callback_delivery_duration_seconds_count{result="delivered"}'), 2);
    assert.equal(at('callback_delivery_duration_seconds_count{result="retried"}'), 1);
    assert.equal(at('callback_delivery_duration_seconds_count{result="failed"}'), 1);
    // Webhooks: four accepted, one duplicate, one refused as invalid.
    assert.equal(at('webhooks_received_total{result="accepted"}'), 4);
    assert.equal(at('webhooks_received_total{result="duplicate"}'), 1);
    assert.equal(at('webhooks_received_total{result="rejected",reason="invalid"}'), 1);
    // Read from Redis at scrape time.
    assert.equal(at("dead_letters"), 1);
    assert.equal(at("redis_up"), 1);
    assert.equal(at('stream_group_messages_pending{stream="webhooks",group="workers"}'), 0);
    assert.equal(at('stream_group_lag{stream="webhooks",group="workers"}'), 0);
    assert.equal(
      at('stream_group_oldest_pending_age_seconds{stream="events",group="callbacks"}'),
      0,
    );
    assert.ok((at('stream_group_consumers{stream="webhooks",group="workers"}') ?? 0) >= 1);
    assert.ok(
      (at('stream_group_consumer_report_age_seconds{stream="webhooks",group="workers"}') ?? 99) <
        10,
    );
    assert.ok((at("projection_lag_seconds_count") ?? 0) > 0, "projection lag observed");
    // HTTP: by route pattern, never by raw path.
    assert.equal(
      at('http_request_duration_seconds_count{route="/webhook",method="POST",status_class="2xx"}'),
      5,
    );
    assert.ok(!text.includes(ids[0]), "no task id in any label");
    assert.equal(at("sse_clients"), 0);
    if (promtool) await runPromtool(["check", "metrics"], text);
  } finally {
    await consumers.stop(1_000);
    await callbacks.server.shutdown();
  }
});

Deno.test("an entry taken over from a stalled consumer counts as a reclaim", async () => {
  await using env = await testEnv("metrics-reclaim", { CLAIM_IDLE_MS: "200" });
  const { redis, keys } = env.services;
  // A consumer that read a work entry and died, before this process's consumers start.
  await ensureGroup(redis, keys.webhookStream, "workers", "0");
  await redis.xadd(keys.webhookStream, "*", "task_id", "t-stalled", "payload", "{nope");
  await redis.xreadgroup(
    "GROUP",
    "workers",
    "gone",
    "COUNT",
    1,
    "STREAMS",
    keys.webhookStream,
    ">",
  );
  const consumers = await runConsumers(env, { run: ["tasks"] });
  try {
    const text = await waitFor(async () => {
      const text = await scrapeApp(env);
      return samples(text).get(
          'video_pipeline_stream_group_reclaims_total{stream="webhooks",group="workers"}',
        ) === 1
        ? text
        : null;
    }, { what: "a reclaim", timeoutMs: 5_000 });
    assert.ok(text);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a worker's METRICS_PORT serves /metrics, liveness and readiness", async () => {
  await using env = await testEnv("metrics-worker", { METRICS_TOKEN: TOKEN });
  const consumers = await runConsumers(env);
  let running = true;
  const port = freePort();
  const server = startWorkerHttp({
    port,
    hostname: "127.0.0.1",
    redis: env.services.redis,
    metrics: env.services.metrics,
    sources: { redis: env.services.redis, keys: env.services.keys },
    token: TOKEN,
    consumersRunning: () => running,
    log: env.log,
  });
  const url = (path: string) => `http://127.0.0.1:${port}${path}`;
  try {
    const taskId = await submit(env);
    await waitFor(async () =>
      (await readTaskView(env.services.redis, env.services.keys, taskId))
        ?.status === "completed", { what: "task completed" });
    const refused = await fetch(url("/metrics"));
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
    const wrong = await fetch(url("/metrics"), { headers: { authorization: "Bearer nope" } });
    assert.equal(wrong.status, 401);
    await wrong.body?.cancel();
    const res = await fetch(url("/metrics"), { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.equal(
      samples(text).get('video_pipeline_task_outcomes_total{outcome="completed"}'),
      1,
    );
    if (promtool) await runPromtool(["check", "metrics"], text);

    const live = await fetch(url("/health/live"));
    assert.equal(live.status, 200);
    await live.body?.cancel();
    const ready = await fetch(url("/health/ready"));
    assert.equal(ready.status, 200);
    assert.deepEqual((await ready.json()).problems, []);
    running = false;
    const stopping = await fetch(url("/health/ready"));
    assert.equal(stopping.status, 503);
    assert.deepEqual((await stopping.json()).problems, ["The consumers are not running"]);
  } finally {
    await server.shutdown();
    await consumers.stop(1_000);
  }
});

Deno.test("the server's /metrics needs METRICS_TOKEN as a bearer token when it is set", async () => {
  await using env = await testEnv("metrics-token", { METRICS_TOKEN: TOKEN });
  const refused = await env.services.app.request("/metrics");
  assert.equal(refused.status, 401);
  assert.equal(refused.headers.get("www-authenticate"), 'Bearer realm="metrics"');
  await refused.body?.cancel();
  const text = await scrapeApp(env, { authorization: `Bearer ${TOKEN}` });
  assert.match(text, /^video_pipeline_build_info\{version="[^"]+",deno="[^"]+"/m);
  if (promtool) await runPromtool(["check", "metrics"], text);
  const post = await env.services.app.request("/metrics", { method: "POST" });
  assert.equal(post.status, 405);
  await post.body?.cancel();
});

Deno.test({
  name: "the ops/ alert rules pass promtool check rules and their unit tests",
  ignore,
  async fn() {
    await runPromtool(["check", "rules", "ops/prometheus/alerts.yml"]);
    await runPromtool(["test", "rules", "ops/prometheus/alerts_test.yml"]);
  },
});

Deno.test("the Grafana dashboard queries only metrics the service exports", async () => {
  const dashboard = await Deno.readTextFile(
    new URL("../ops/grafana/video-pipeline.json", import.meta.url),
  );
  const registry = await Deno.readTextFile(
    new URL("../src/metrics/registry.ts", import.meta.url),
  );
  const exported = new Set(
    [...registry.matchAll(/(?:counter|gauge|histogram)\(\s*"([a-z_]+)"/g)].map((m) => m[1]),
  );
  const used = new Set(
    [...dashboard.matchAll(/video_pipeline_([a-z_]+?)(?:_bucket|_count|_sum)?\b/g)].map((m) =>
      m[1]
    ),
  );
  assert.ok(used.size > 10);
  for (const name of used) assert.ok(exported.has(name), `the dashboard uses unknown ${name}`);
});
