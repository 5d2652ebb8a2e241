import assert from "node:assert/strict";
import pg from "pg";
import { freePort, redisAnswers, startPostgres, startRedis } from "../src/dev/local_services.ts";
import { closeRedis, connectRedis, waitReady } from "../src/redis/client.ts";

Deno.test("a private Redis starts with AOF in its folder, keeps data across a restart, and stops", async () => {
  const dir = await Deno.makeTempDir({ prefix: "local-redis-" });
  const port = freePort();
  try {
    let server = await startRedis({ port, dir });
    let redis = connectRedis(server.url);
    await waitReady(redis);
    assert.deepEqual(await redis.config("GET", "appendonly"), ["appendonly", "yes"]);
    await redis.set("kept", "1");
    await closeRedis(redis);
    await server.stop();
    assert.equal(await redisAnswers(port), false);
    server = await startRedis({ port, dir });
    redis = connectRedis(server.url);
    await waitReady(redis);
    assert.equal(await redis.get("kept"), "1");
    await closeRedis(redis);
    await server.stop();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a private PostgreSQL starts with its database and trust auth, and stops", async () => {
  const dir = await Deno.makeTempDir({ prefix: "local-postgres-" });
  try {
    const server = await startPostgres({ port: freePort(), dir, database: "test" });
    try {
      const client = new pg.Client({ connectionString: server.url });
      await client.connect();
      const { rows } = await client.query("select current_database() as db");
      assert.equal(rows[0].db, "test");
      await client.end();
    } finally {
      await server.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
