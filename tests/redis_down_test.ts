import assert from "node:assert/strict";
import { spawnRedis } from "../src/dev/local_services.ts";
import { childEnv, fixture, freePort, testEnv, waitFor } from "./_helpers.ts";

/** A private redis-server on a free port (AOF in `dir` when given); the shared one is untouched. */
const startRedis = (port: number, aof?: { dir: string }) => spawnRedis({ port, dir: aof?.dir });

/** Sends one request and measures it; the body is discarded. */
async function timed(request: () => Response | Promise<Response>) {
  const t0 = performance.now();
  const res = await request();
  const ms = performance.now() - t0;
  await res.body?.cancel();
  return { status: res.status, ms, headers: res.headers };
}

Deno.test("with Redis down, 20 webhooks get 503 within 1 s each, health at once; 202 within 0.5 s of its return", async () => {
  const port = freePort();
  let redis = await startRedis(port);
  let closeEnv = () => Promise.resolve();
  try {
    // Closed, not disposed: its keys go with the private server, and a failed assertion is not
    // hidden behind a clean-up that cannot reach a stopped Redis.
    const env = await testEnv("down", { REDIS_URL: `redis://127.0.0.1:${port}` });
    closeEnv = () => env.services.close();
    const body = await fixture("minimal.json");
    const ok = await env.post(body);
    assert.equal(ok.status, 202);
    await ok.body?.cancel();

    redis.kill("SIGKILL");
    await redis.status;
    // Ten at once (one auto-pipelined batch must not wait for another's timeout), ten in a row.
    const together = await Promise.all(
      Array.from({ length: 10 }, () => timed(() => env.post(body))),
    );
    const inRow = [];
    for (let i = 0; i < 10; i++) inRow.push(await timed(() => env.post(body)));
    for (const [i, res] of [...together, ...inRow].entries()) {
      assert.equal(res.status, 503, `request ${i}`);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(res.headers.get("content-type"), "application/problem+json");
      assert.ok(res.ms < 1_000, `request ${i} answered in ${Math.round(res.ms)} ms`);
    }
    const health = await timed(() => env.services.app.request("/health"));
    assert.equal(health.status, 503);
    assert.ok(health.ms < 250, `/health answered in ${Math.round(health.ms)} ms`);
    const status = await timed(() => env.services.app.request("/task/anything"));
    assert.equal(status.status, 503);
    assert.ok(status.ms < 1_000, `/task answered in ${Math.round(status.ms)} ms`);
    // Still down a while later: the reconnect attempts in between change nothing.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const later = await timed(() => env.post(body));
    assert.equal(later.status, 503);
    assert.ok(later.ms < 1_000, `answered in ${Math.round(later.ms)} ms`);

    redis = await startRedis(port);
    const back = performance.now();
    await waitFor(async () => (await timed(() => env.post(body))).status === 202, {
      what: "ingest to recover",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    const recoveredMs = performance.now() - back;
    assert.ok(recoveredMs < 500, `first 202 ${Math.round(recoveredMs)} ms after Redis was back`);
    assert.equal((await timed(() => env.services.app.request("/health"))).status, 200);
  } finally {
    await closeEnv();
    try {
      redis.kill("SIGKILL");
    } catch {
      // Already killed: an assertion failed while Redis was down.
    }
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
