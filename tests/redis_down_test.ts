import assert from "node:assert/strict";
import { childEnv, fixture, freePort, testEnv, waitFor } from "./_helpers.ts";

/** A private redis-server on a free port; the shared one is never touched. */
async function startRedis(port: number, aof?: { dir: string }) {
  const persistence = aof ? ["--appendonly", "yes", "--dir", aof.dir] : ["--appendonly", "no"];
  const child = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", ...persistence],
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

Deno.test("health and the start-up log say whether Redis keeps an append-only file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vp-aof-" });
  const [plainPort, aofPort] = [freePort(), freePort()];
  const plain = await startRedis(plainPort);
  const durable = await startRedis(aofPort, { dir });
  try {
    for (const [port, aof] of [[plainPort, false], [aofPort, true]] as const) {
      await using env = await testEnv("aof", { REDIS_URL: `redis://127.0.0.1:${port}` });
      const health = await (await env.services.app.request("/health")).json();
      assert.equal(health.redis.aof, aof, `port ${port}`);
    }
    const worker = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", new URL("../main.ts", import.meta.url).pathname, "worker"],
      clearEnv: true,
      env: {
        ...childEnv(),
        REDIS_URL: `redis://127.0.0.1:${plainPort}`,
        KEY_PREFIX: "aof",
        LOG_LEVEL: "warn",
      },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // Never hang on a worker that keeps running without the line.
    const timer = setTimeout(() => worker.kill("SIGKILL"), 20_000);
    let log = "";
    const reader = worker.stderr.pipeThrough(new TextDecoderStream()).getReader();
    try {
      while (!log.includes("without AOF")) {
        const { value, done } = await reader.read();
        if (done) break;
        log += value;
      }
    } finally {
      clearTimeout(timer);
      try {
        worker.kill("SIGTERM");
      } catch {
        // Already exited: the assertion below says why.
      }
      await reader.cancel();
      await worker.status;
    }
    assert.match(log, /"level":"warn","msg":"Redis runs without AOF/);
  } finally {
    for (const child of [plain, durable]) {
      child.kill("SIGTERM");
      await child.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
});
