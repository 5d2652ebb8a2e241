import assert from "node:assert/strict";
import type { RedisClient } from "../src/redis/client.ts";
import { closeRedis, connectRedis, waitReady } from "../src/redis/client.ts";
import { Lease } from "../src/redis/lease.ts";
import { buildScriptSource, NamedScript, type ScriptDefinition } from "../src/redis/script.ts";
import { ingestScript, projectScript, settleScript } from "../src/redis/scripts.ts";

const REDIS_URL = "redis://127.0.0.1:6379";

async function withRedis(name: string, run: (redis: RedisClient, prefix: string) => Promise<void>) {
  const redis = connectRedis(REDIS_URL);
  const prefix = `test-${name}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await waitReady(redis);
    await run(redis, prefix);
  } finally {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
    await closeRedis(redis);
  }
}

const ECHO = `--[[
  Echoes its KEYS and ARGV, for tests.

  Input:
    KEYS.first
    KEYS.second
    KEYS[3..]     more keys

    ARGV.alpha
    ARGV.beta
    ARGV[3..]     more args

  Output:
    {KEYS, ARGV, {KEY.first, KEY.second, ARG.alpha, ARG.beta}}
]]
return {KEYS, ARGV, {KEY.first, KEY.second, ARG.alpha, ARG.beta, EXTRA_KEYS_FROM, EXTRA_ARGS_FROM}}
`;

const echo = {
  name: "echo",
  keys: ["first", "second"],
  args: ["alpha", "beta"],
  extra: { keys: true, args: true },
} as const satisfies ScriptDefinition<readonly string[], readonly string[]>;

Deno.test("named keys and args reach the script in declared order, extras after them", async () => {
  await withRedis("script-order", async (redis, prefix) => {
    const script = new NamedScript(echo, buildScriptSource(echo, ECHO));
    // Given in another order than declared: the declaration decides the positions.
    const reply = await script.run(redis, {
      args: { beta: 2, alpha: "a" },
      keys: { second: `${prefix}:2`, first: `${prefix}:1` },
    }, { keys: [`${prefix}:3`], args: ["x", "y"] });
    assert.deepEqual(reply, [
      [`${prefix}:1`, `${prefix}:2`, `${prefix}:3`],
      ["a", "2", "x", "y"],
      [`${prefix}:1`, `${prefix}:2`, "a", "2", 3, 3],
    ]);
  });
});

Deno.test("a missing or misspelt name is a type error, and refused at run time", async () => {
  await withRedis("script-names", async (redis, prefix) => {
    const script = new NamedScript(echo, buildScriptSource(echo, ECHO));
    const call = () =>
      script.run(redis, {
        keys: { first: `${prefix}:1`, second: `${prefix}:2` },
        // @ts-expect-error: "alhpa" is not declared, and "alpha" is missing
        args: { alhpa: "a", beta: "b" },
      });
    await assert.rejects(call, /Script "echo" needs arg "alpha"/);
    const noExtra = new NamedScript(
      { ...echo, extra: {} },
      buildScriptSource({ ...echo, extra: {} }, ECHO.replace(/^\s*(KEYS|ARGV)\[3\.\.\].*$/gm, "")),
    );
    await assert.rejects(
      () =>
        noExtra.run(redis, {
          keys: { first: "a", second: "b" },
          args: { alpha: 1, beta: 2 },
        }, { keys: ["c"] }),
      /takes no extra keys/,
    );
  });
});

Deno.test("a header that documents other names than the declaration is refused", () => {
  const refused = (
    definition: ScriptDefinition<readonly string[], readonly string[]>,
    text = ECHO,
  ) => assert.throws(() => buildScriptSource(definition, text), /Script "echo"/);
  refused({ ...echo, keys: ["second", "first"] }); // order drifted
  refused({ ...echo, args: ["alpha"] }); // an arg documented but not declared
  refused({ ...echo, args: ["alpha", "beta", "gamma"] }); // declared but not documented
  refused({ ...echo, extra: { keys: true } }); // extra args documented, not declared
  refused(echo, ECHO.replace("KEYS[3..]", "KEYS[4..]")); // extras' position drifted
  refused(echo, ECHO.replace("Output:", "Reply")); // reply not documented
  refused(echo, ECHO.replace("ARG.beta,", "ARG.bta,")); // the Lua reads an undeclared name
  refused(echo, ECHO.replace(/^--\[\[[\s\S]*?\]\]/, "")); // no header at all
  refused({ ...echo, keys: ["first", "end"] }, ECHO.replace("KEYS.second", "KEYS.end"));
});

Deno.test("includes are spliced in once, and constants and names defined before them", () => {
  const text = ECHO.replace("]]\n", ']]\n--- @include "helper"\n--- @include "helper"\n');
  const source = buildScriptSource(
    { ...echo, constants: { TOKEN: 60_000 } },
    text,
    (name) => `-- ${name}\nlocal function helper() return TOKEN end\n`,
  );
  assert.equal(source.match(/local function helper/g)?.length, 1);
  assert.ok(!source.includes("@include"));
  const lines = source.split("\n");
  assert.equal(lines[0], "local KEY = {first = KEYS[1], second = KEYS[2]}");
  assert.equal(lines[1], "local ARG = {alpha = ARGV[1], beta = ARGV[2]}");
  assert.ok(source.indexOf("local TOKEN = 60000") < source.indexOf("local function helper"));
});

Deno.test("every script file matches its declaration (loaded at start-up)", () => {
  // Importing scripts.ts already read and checked them; spot-check the generated names.
  assert.match(ingestScript.source, /local KEY = \{idempotency = KEYS\[1\], webhooks = KEYS\[2\]/);
  assert.match(ingestScript.source, /local TOKEN = 60000/);
  assert.match(ingestScript.source, /local function bucket_refill/);
  assert.match(settleScript.source, /local EXTRA_KEYS_FROM = 3\nlocal EXTRA_ARGS_FROM = 2\n/);
  assert.match(projectScript.source, /local EXTRA_KEYS_FROM = 4/);
  assert.match(projectScript.source, /local EXTRA_ARGS_FROM = 4/);
});

Deno.test("a lease has one holder; only it renews or releases", async () => {
  await withRedis("lease", async (redis, prefix) => {
    const key = `${prefix}:lease`;
    const first = new Lease(redis, key, "first", 5_000);
    const second = new Lease(redis, key, "second", 5_000);
    assert.equal(await first.acquire(), true);
    assert.equal(await second.acquire(), false);
    assert.equal(await first.acquire(), false); // not re-entrant: SET NX
    assert.equal(await second.renew(), false);
    await second.release();
    assert.equal(await redis.get(key), "first");

    await redis.pexpire(key, 1_000);
    assert.equal(await first.renew(), true);
    const ttl = await redis.pttl(key);
    assert.ok(ttl > 4_000 && ttl <= 5_000, `pttl ${ttl}`);

    await first.release();
    assert.equal(await redis.exists(key), 0);
    assert.equal(await first.renew(), false); // expired or released: gone for good
    assert.equal(await second.acquire(), true);
  });
});

Deno.test("release swallows errors", async () => {
  const redis = connectRedis("redis://127.0.0.1:1", { commandTimeoutMs: 200 });
  try {
    await new Lease(redis, "unreachable", "owner", 1_000).release();
  } finally {
    await closeRedis(redis);
  }
});

Deno.test("keepAlive keeps the lease past its ttl, and reports its loss once", async () => {
  await withRedis("lease-keepalive", async (redis, prefix) => {
    const key = `${prefix}:lease`;
    const lease = new Lease(redis, key, "me", 300);
    assert.equal(await lease.acquire(), true);
    let lost = 0;
    const stop = lease.keepAlive(() => lost++);
    try {
      await waitFor(async () => (await redis.pttl(key)) > 250, "a renewal");
      const until = Date.now() + 700;
      await waitFor(() => Promise.resolve(Date.now() > until), "more than two ttls");
      assert.equal(await redis.get(key), "me");
      assert.equal(lost, 0);

      await redis.set(key, "someone else", "PX", 5_000);
      await waitFor(() => Promise.resolve(lost > 0), "the loss");
      const after = Date.now() + 300;
      await waitFor(() => Promise.resolve(Date.now() > after), "later renewals");
      assert.equal(lost, 1);
      assert.equal(await redis.get(key), "someone else");
    } finally {
      stop();
    }
  });
});

Deno.test("keepAlive's stop() ends renewals, so the lease runs out", async () => {
  await withRedis("lease-stop", async (redis, prefix) => {
    const key = `${prefix}:lease`;
    const lease = new Lease(redis, key, "me", 200);
    assert.equal(await lease.acquire(), true);
    let lost = 0;
    const stop = lease.keepAlive(() => lost++);
    stop();
    stop(); // idempotent
    await waitFor(async () => (await redis.exists(key)) === 0, "the lease to expire");
    assert.equal(lost, 0);
  });
});

async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!await condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
