import assert from "node:assert/strict";
import { devRedis } from "../src/dev/dev_redis.ts";
import { freePort, redisAnswers } from "../src/dev/local_services.ts";
import { childEnv } from "./_helpers.ts";

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

Deno.test("dev's Redis: none is started when one answers or REDIS_URL is set; else a private one with AOF", async () => {
  assert.equal(await devRedis("redis://example.invalid:6379"), null);
  assert.equal(await devRedis(undefined, { defaultPort: 6379 }), null, "the shared Redis answers");
  const dir = await Deno.makeTempDir({ prefix: "dev-redis-" });
  const port = freePort();
  try {
    const server = await devRedis(undefined, { defaultPort: port, dir });
    assert.equal(server?.url, `redis://127.0.0.1:${port}`);
    assert.ok(await redisAnswers(port));
    await server!.stop();
    assert.equal(await redisAnswers(port), false);
    assert.ok((await Array.fromAsync(Deno.readDir(dir))).some((e) => e.name === "appendonlydir"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
