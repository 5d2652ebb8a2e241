import assert from "node:assert/strict";
import type { TaskView } from "../src/projections/task_view/view.ts";
import { readStream, runConsumers, testEnv, testResolve, waitFor } from "./_helpers.ts";
import { fixture } from "./_helpers.ts";
import { type CallbackReceiver, startCallbackReceiver } from "./fakes/callback_receiver.ts";
import { type FalFake, startFalServer } from "./fakes/fal_server.ts";
import { type OpenAIFake, startOpenAIServer } from "./fakes/openai_server.ts";
import { createTestSchema, type TestSchema } from "./fakes/postgres.ts";
import { type PostgrestFake, startPostgrest } from "./fakes/postgrest_server.ts";

const FAL_KEY = "fal-test-key";
const OPENAI_KEY = "sk-test-key";
const SERVICE_KEY = `sb_secret_${crypto.randomUUID()}`;
const CALLBACK_SECRET = `whsec_${btoa("callback-secret-for-tests-0123456789")}`;

interface Live {
  fal: FalFake;
  openai: OpenAIFake;
  db: TestSchema;
  postgrest: PostgrestFake;
  receiver: CallbackReceiver;
  env: Record<string, string>;
  rows(videoId: string): Promise<{ revision: number; scene_number: number; voiceover: string }[]>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Every provider as a local server speaking its real protocol, and the env pointing at them. */
async function liveProviders(): Promise<Live> {
  const fal = await startFalServer({ key: FAL_KEY });
  const openai = await startOpenAIServer({ apiKey: OPENAI_KEY });
  const db = await createTestSchema();
  const postgrest = await startPostgrest({
    pool: db.pool,
    schemas: [db.schema],
    serviceRoleKey: SERVICE_KEY,
    anonKey: "anon",
  });
  const receiver = startCallbackReceiver(CALLBACK_SECRET);
  return {
    fal,
    openai,
    db,
    postgrest,
    receiver,
    env: {
      PROVIDER_MODE: "live",
      FAL_KEY,
      FAL_BASE_URL: fal.url,
      OPENAI_API_KEY: OPENAI_KEY,
      OPENAI_BASE_URL: openai.url,
      SUPABASE_URL: postgrest.url,
      SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY,
      SUPABASE_SCHEMA: db.schema,
      CALLBACK_SECRET,
      ALLOW_PRIVATE_CALLBACKS: "true",
      RETRY_BASE_MS: "20",
      FAL_POLL_INTERVAL_MS: "20",
      MAX_ATTEMPTS: "3",
      CALLBACK_MAX_ATTEMPTS: "4",
    },
    async rows(videoId) {
      const { rows } = await db.pool.query(
        `select revision, scene_number, voiceover from "${db.schema}".scenes
         where video_id = $1 order by revision, scene_number`,
        [videoId],
      );
      return rows;
    },
    async [Symbol.asyncDispose]() {
      await receiver.close();
      await postgrest.close();
      await db.close();
      await openai.close();
      await fal.close();
    },
  };
}

async function post(env: Awaited<ReturnType<typeof testEnv>>, name: string, patch: object) {
  const res = await env.post({ ...JSON.parse(await fixture(name)), ...patch });
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

/** Waits until the task's outcome and, when it has a callback, its delivery are settled. */
async function settled(env: Awaited<ReturnType<typeof testEnv>>, taskId: string) {
  return await waitFor(async () => {
    const view = await (await env.services.app.request(`/task/${taskId}`)).json() as TaskView;
    const final = view.status === "completed" || view.status === "failed";
    return final && (view.callback?.state === "delivered" || view.callback?.state === "failed")
      ? view
      : null;
  }, { timeoutMs: 15_000, what: `task ${taskId} and its callback` });
}

Deno.test("live: new video, then its revision, end to end on the real clients", async () => {
  await using live = await liveProviders();
  await using env = await testEnv("live", live.env);
  const running = await runConsumers(env);
  try {
    const callback_url = live.receiver.url;
    const first = await settled(env, await post(env, "new-video.json", { callback_url }));
    assert.equal(first.status, "completed", JSON.stringify(first.error));
    assert.equal(first.result?.reframed, true);
    assert.equal(first.result?.provider.reframe, "fal:fal-ai/luma-photon/reframe");
    assert.match(first.result!.provider.scenes, /^openai:gpt-4o/);

    // fal saw the product image and 9:16, with the key.
    const submit = live.fal.requests.find((r) => r.method === "POST")!;
    assert.equal(submit.path, "/fal-ai/luma-photon/reframe");
    assert.equal(submit.auth, `Key ${FAL_KEY}`);
    const input = submit.body as Record<string, string>;
    assert.equal(input.image_url, "https://cdn.example.com/products/aerorun-pulse.jpg");
    assert.equal(input.aspect_ratio, "9:16");

    // OpenAI saw the reframed image, not the original.
    const chat = live.openai.requests.at(-1)!.body;
    const parts = chat.messages.flatMap((m: { content: unknown }) =>
      Array.isArray(m.content) ? m.content : []
    );
    const image = parts.find((p: { type: string }) => p.type === "image_url");
    assert.equal(image.image_url.url, first.result!.image_url);
    assert.notEqual(first.result!.image_url, input.image_url);
    assert.equal(chat.response_format.type, "json_schema");

    // Postgres holds the five scenes, with the prompt's voiceovers in order.
    const rows = await live.rows("vid_01JD8Q3ZK5M2A7");
    assert.equal(rows.length, 5);
    assert.ok(rows.every((r) => r.revision === 1));
    assert.equal(rows[0].voiceover, "Every run starts before the city wakes.");

    // One verified callback.
    assert.equal(live.receiver.deliveries.length, 1);
    const delivery = live.receiver.deliveries[0];
    assert.equal(delivery.verified, true);
    assert.equal(delivery.body.status, "completed");
    assert.equal(delivery.body.task_id, first.task_id);
    assert.equal((delivery.body.scenes as unknown[]).length, 5);
    assert.equal(first.callback?.webhook_id, delivery.id);

    // The revision becomes revision 2; revision 1 stays.
    const second = await settled(env, await post(env, "revision.json", { callback_url }));
    assert.equal(second.status, "completed", JSON.stringify(second.error));
    assert.equal(second.result?.video_revision, 2);
    assert.deepEqual(second.result?.changes?.map((c) => c.scene_number), [1, 2, 3, 4, 5]);
    const all = await live.rows("vid_01JD8Q3ZK5M2A7");
    assert.equal(all.filter((r) => r.revision === 1).length, 5);
    assert.equal(all.filter((r) => r.revision === 2).length, 5);
    assert.deepEqual(all.filter((r) => r.revision === 1), rows);
    const revisionChat = live.openai.requests.at(-1)!.body;
    assert.match(JSON.stringify(revisionChat.messages), /Every run starts before the city wakes/);
    assert.equal(live.receiver.deliveries.length, 2);
    const scenes = await (await env.services.app.request("/videos/vid_01JD8Q3ZK5M2A7/scenes"))
      .json();
    assert.equal(scenes.revision, 2);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("live: transient provider faults are retried to success without duplicate rows", async () => {
  await using live = await liveProviders();
  await using env = await testEnv("live-retry", live.env);
  const running = await runConsumers(env);
  try {
    live.fal.fault({ kind: "submit-500", times: 1 });
    live.openai.fault({ kind: "429", retryAfter: "0", times: 1 });
    // 503 as PostgREST answers while its database is down (a dropped connection on a POST may be
    // re-sent by the HTTP client itself, which an idempotent upsert makes harmless).
    live.postgrest.fault({ kind: "503", times: 1, method: "POST" });
    live.receiver.script([500, { status: 429, retryAfterS: 0 }]);
    const view = await settled(
      env,
      await post(env, "minimal.json", { callback_url: live.receiver.url }),
    );
    assert.equal(view.status, "completed", JSON.stringify(view.error));
    assert.equal(view.attempts, 3, "fal 500, then OpenAI 429, then success");
    assert.equal((await live.rows("vid_min_001")).length, 5);
    assert.equal(view.callback?.state, "delivered");
    assert.equal(view.callback?.attempts, 3);
    assert.deepEqual(live.receiver.deliveries.map((d) => d.status), [500, 429, 200]);
    assert.equal(new Set(live.receiver.deliveries.map((d) => d.id)).size, 1, "stable webhook-id");
    const events = await env.services.store.timeline(view.task_id);
    const persistFailures = events.filter((e) =>
      e.type === "task.failed" && e.data.step === "persist"
    );
    assert.equal(persistFailures.length, 1);
    assert.equal(await env.services.redis.xlen(env.services.keys.deadLetterStream), 0);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("live: unrecoverable and exhausted faults fail clearly and dead-letter", async () => {
  await using live = await liveProviders();
  await using env = await testEnv("live-fail", live.env);
  const running = await runConsumers(env);
  try {
    const callback_url = live.receiver.url;
    live.fal.fault("submit-422");
    const rejected = await settled(env, await post(env, "minimal.json", { callback_url }));
    assert.equal(rejected.status, "failed");
    assert.equal(rejected.attempts, 1);
    assert.match(rejected.error!.message, /fal rejected the request \(422\)/);
    live.fal.fault(null);

    live.openai.fault({ kind: "refusal" });
    const refused = await settled(
      env,
      await post(env, "minimal.json", { video_id: "refused", callback_url }),
    );
    assert.match(refused.error!.message, /Model refused/);
    live.openai.fault(null);

    live.postgrest.fault({ kind: "500", method: "POST" });
    const unstored = await settled(
      env,
      await post(env, "minimal.json", { video_id: "unstored", callback_url }),
    );
    assert.equal(unstored.status, "failed");
    assert.equal(unstored.error?.step, "persist");
    assert.equal(unstored.error?.attempt, 3);
    live.postgrest.fault(null);

    const dead = await readStream(env.services.redis, env.services.keys.deadLetterStream);
    assert.deepEqual(dead.map((d) => d.task_id), [
      rejected.task_id,
      refused.task_id,
      unstored.task_id,
    ]);
    assert.equal(dead[2].group, "scene-sink");
    assert.equal(JSON.parse(dead[2].payload).video_id, "unstored");
    // Each failure was announced, signed, to the caller.
    assert.deepEqual(live.receiver.deliveries.map((d) => [d.body.status, d.verified]), [
      ["failed", true],
      ["failed", true],
      ["failed", true],
    ]);
    assert.match(String(live.receiver.deliveries[1].body.error), /Model refused/);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("callbacks: a final 4xx and a refused address fail the callback, never the task", async () => {
  await using live = await liveProviders();
  await using env = await testEnv("callback-fail", {
    ...live.env,
    ALLOW_PRIVATE_CALLBACKS: "false",
  });
  // hooks.test resolves to loopback here: refused because private callbacks are not allowed.
  const resolve = (host: string) =>
    host === "hooks.test" ? Promise.resolve(["127.0.0.1"]) : testResolve(host);
  const running = await runConsumers(env, { resolve });
  try {
    const port = new URL(live.receiver.url).port;
    const refused = await settled(
      env,
      await post(env, "minimal.json", { callback_url: `http://hooks.test:${port}/cb` }),
    );
    assert.equal(refused.status, "completed");
    assert.equal(refused.callback?.state, "failed");
    assert.equal(refused.callback?.attempts, 1);
    // The public view says why in short; the host and address are for the log and admin API.
    assert.equal(refused.callback!.last_error, "refused: private address");
    assert.equal(live.receiver.deliveries.length, 0, "nothing reached the refused address");
  } finally {
    await running.stop(1_000);
  }
  await using allowed = await testEnv("callback-4xx", live.env);
  const again = await runConsumers(allowed);
  try {
    live.receiver.script([410]);
    const gone = await settled(
      allowed,
      await post(allowed, "minimal.json", { callback_url: live.receiver.url }),
    );
    assert.equal(gone.status, "completed");
    assert.equal(gone.callback?.state, "failed");
    assert.equal(gone.callback?.attempts, 1, "a 4xx other than 408/429 is final");
    assert.equal(gone.callback?.last_status_code, 410);
  } finally {
    await again.stop(1_000);
  }
});
