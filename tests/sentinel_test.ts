/**
 * The service on a Sentinel-managed primary (REDIS_SENTINELS / REDIS_SENTINEL_NAME): a primary,
 * its replica and one sentinel, on free ports of their own.
 */
import assert from "node:assert/strict";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import { fixture, runConsumers, type TestEnv, testEnv, waitFor } from "./_helpers.ts";
import { LocalSentinel, topologyTest } from "./support/redis_cluster.ts";

/** Posts until the service takes the webhook (503 while the primary is being replaced). */
async function submit(env: TestEnv, body: object): Promise<{ taskId: string; refused: number }> {
  let refused = 0;
  const taskId = await waitFor(async () => {
    const res = await env.post(body);
    if (res.status === 202) return (await res.json()).task_id as string;
    assert.equal(res.status, 503, "only 503 while Redis is away");
    await res.body?.cancel();
    refused++;
    return null;
  }, { timeoutMs: 20_000, intervalMs: 100, what: "a 202" });
  return { taskId, refused };
}

async function completed(env: TestEnv, taskId: string) {
  return await waitFor(async () => {
    const view = await readTaskView(env.services.redis, env.services.keys, taskId).catch(() =>
      null
    );
    return view?.status === "completed" ? view : null;
  }, { timeoutMs: 20_000, intervalMs: 50, what: `task ${taskId} completed` });
}

topologyTest("sentinel: the service follows a failover to the promoted replica", async () => {
  await using topology = await LocalSentinel.start();
  const oldPrimary = topology.primary.port;
  assert.equal(await topology.primaryPort(), oldPrimary);
  await using env = await testEnv("sentinel", {
    ...topology.env,
    PROVIDER_MODE: "offline",
    CLAIM_IDLE_MS: "1000",
  });
  const consumers = await runConsumers(env);
  try {
    const base = JSON.parse(await fixture("minimal.json"));
    const before = await submit(env, { ...base, video_id: "sentinel-before" });
    assert.equal(before.refused, 0);
    await completed(env, before.taskId);

    // kill -9 of the primary: the sentinel promotes the replica; nothing is restarted.
    await topology.kill(oldPrimary);
    await waitFor(async () => (await topology.primaryPort()) !== oldPrimary, {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: "the sentinel to promote the replica",
    });
    const after = await submit(env, { ...base, video_id: "sentinel-after" });
    const view = await completed(env, after.taskId);
    assert.equal(view.attempts, 1);
    // The task acknowledged before the failover is still there: the replica had it.
    assert.equal((await completed(env, before.taskId)).task_id, before.taskId);
    if (Deno.env.get("TEST_LOG")) console.error(`503s during the failover: ${after.refused}`);
  } finally {
    await consumers.stop(1_000);
  }
});
