import assert from "node:assert/strict";
import { fixture, freePort, testEnv, waitFor } from "./_helpers.ts";

/** A private redis-server on a free port; the shared one is never touched. */
async function startRedis(port: number) {
  const child = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitFor(async () => {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return true;
    } catch {
      return false;
    }
  }, { what: `redis-server on ${port}` });
  return child;
}

Deno.test("with Redis down, webhooks get 503 with Retry-After within 2 s, and recover", async () => {
  const port = freePort();
  let redis = await startRedis(port);
  try {
    await using env = await testEnv("down", { REDIS_URL: `redis://127.0.0.1:${port}` });
    const body = await fixture("minimal.json");
    const ok = await env.post(body);
    assert.equal(ok.status, 202);
    await ok.body?.cancel();

    redis.kill("SIGKILL");
    await redis.status;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const res = await env.post(body);
      const elapsed = performance.now() - t0;
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(res.headers.get("content-type"), "application/problem+json");
      await res.body?.cancel();
      assert.ok(elapsed < 2_000, `answered in ${Math.round(elapsed)} ms`);
    }
    const t0 = performance.now();
    const health = await env.services.app.request("/health");
    assert.equal(health.status, 503);
    assert.equal((await health.json()).redis.ok, false);
    assert.ok(performance.now() - t0 < 2_000);
    const status = await env.services.app.request("/task/anything");
    assert.equal(status.status, 503);
    await status.body?.cancel();

    redis = await startRedis(port);
    await waitFor(async () => {
      const res = await env.post(body);
      await res.body?.cancel();
      return res.status === 202;
    }, { what: "ingest to recover", timeoutMs: 15_000, intervalMs: 200 });
  } finally {
    redis.kill("SIGKILL");
    await redis.status;
  }
});
