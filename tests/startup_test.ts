import assert from "node:assert/strict";
import { devRedis } from "../src/dev/dev_redis.ts";
import { freePort, redisAnswers } from "../src/dev/local_services.ts";
import { childEnv, fixture, waitFor } from "./_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Runs `main.ts <command>` against an address where nothing listens. */
async function startUnreachable(command: string) {
  const url = `redis://127.0.0.1:${freePort()}`;
  const t0 = Date.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, command],
    clearEnv: true,
    env: { ...childEnv(), REDIS_URL: url, PORT: String(freePort()), LOG_FORMAT: "json" },
    stdout: "null",
    stderr: "piped",
  }).output();
  return { url, code: out.code, ms: Date.now() - t0, log: new TextDecoder().decode(out.stderr) };
}

Deno.test("serve, worker and dev with an unreachable REDIS_URL exit 1 at once, naming it", async () => {
  const runs = await Promise.all(["serve", "worker", "dev"].map(startUnreachable));
  for (const { url, code, ms, log } of runs) {
    assert.equal(code, 1, log);
    assert.ok(ms < 8_000, `failed fast (${ms} ms)`);
    assert.ok(log.includes(`Redis is not reachable at ${url}`), log);
    // dev was given an address, so it starts nothing of its own.
    assert.equal(log.includes("Started a private Redis"), false);
  }
});

Deno.test("dev with no Redis starts its own, completes a webhook, and stops it on SIGTERM", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dev-redis-" });
  const [redisPort, port] = [freePort(), freePort()];
  const dev = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "dev"],
    clearEnv: true,
    env: {
      ...childEnv(),
      DEV_REDIS_PORT: String(redisPort),
      DEV_REDIS_DIR: dir,
      PORT: String(port),
      HOST: "127.0.0.1",
      LOG_FORMAT: "json",
    },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = new Response(dev.stderr).text();
  try {
    const base = `http://127.0.0.1:${port}`;
    await waitFor(async () => {
      try {
        const res = await fetch(`${base}/health/live`);
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false;
      }
    }, { timeoutMs: 20_000, what: "dev to listen" });
    assert.ok(await redisAnswers(redisPort), "its private Redis answers");
    const body = JSON.parse(await fixture("minimal.json"));
    const accepted = await fetch(`${base}/webhook`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, callback_url: undefined }),
    });
    assert.equal(accepted.status, 202);
    const { task_id } = await accepted.json();
    await waitFor(async () => {
      const view = await (await fetch(`${base}/task/${task_id}`)).json();
      return view.status === "completed";
    }, { what: "the task to complete" });
  } finally {
    dev.kill("SIGTERM");
  }
  const status = await dev.status;
  const output = await log;
  assert.equal(status.code, 0, output);
  assert.ok(output.includes("Started a private Redis for dev"), output);
  // Stopped with dev; its data folder stays for the next start.
  assert.equal(await redisAnswers(redisPort), false, "no redis-server left running");
  assert.ok((await Array.fromAsync(Deno.readDir(dir))).some((e) => e.name === "appendonlydir"));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("dev without redis-server on PATH exits at once naming the package to install", async () => {
  const t0 = Date.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "dev"],
    clearEnv: true,
    env: { ...childEnv(), PATH: "/nonexistent", DEV_REDIS_PORT: String(freePort()) },
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  assert.notEqual(out.code, 0);
  assert.ok(Date.now() - t0 < 2_000 + 3_000, "at once (2 s, plus Deno's start-up on a busy CI)");
  assert.match(text, /apt-get install redis-server/);
  assert.match(text, /brew install redis/);
});

Deno.test("dev's Redis: none is started when one answers or REDIS_URL is set", async () => {
  const dir = "/nonexistent/never-created";
  assert.equal(await devRedis("redis://example.invalid:6379", { port: freePort(), dir }), null);
  assert.equal(await devRedis(undefined, { port: 6379, dir }), null, "the shared Redis answers");
});
