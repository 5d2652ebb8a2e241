/**
 * The baseline for the ingest benchmark: the least a webhook endpoint can do and still be
 * durable. Parse the JSON body, one XADD to a stream, answer 202. No validation, no
 * authentication, no idempotency, no rate limits, no logging.
 *
 * Environment: PORT (8001), HOST (127.0.0.1), REDIS_URL or REDIS_CLUSTER_NODES (host:port,...),
 * KEY_PREFIX (the stream is `{KEY_PREFIX}:bench:minimal`, deleted by the bench when it ends).
 */
import { Hono } from "hono";
import { Cluster, Redis } from "ioredis";

const env = (name: string, fallback: string) => Deno.env.get(name) || fallback;
const port = Number(env("PORT", "8001"));
const hostname = env("HOST", "127.0.0.1");
const stream = `{${env("KEY_PREFIX", "bench-minimal")}}:bench:minimal`;

// The same client settings as the service's command connection (src/redis/client.ts).
const options = {
  connectionName: "bench-minimal",
  commandTimeout: 1_500,
  maxRetriesPerRequest: 1,
};
const nodes = Deno.env.get("REDIS_CLUSTER_NODES");
const redis = nodes
  ? new Cluster(
    nodes.split(",").map((n) => ({ host: n.split(":")[0], port: Number(n.split(":")[1]) })),
    { enableAutoPipelining: true, redisOptions: options },
  )
  : new Redis(env("REDIS_URL", "redis://127.0.0.1:6379"), {
    ...options,
    enableAutoPipelining: true,
  });
redis.on("error", () => {});

const app = new Hono();
app.get("/health", (c) => c.json({ status: "ok" }));
app.post("/webhook", async (c) => {
  let body: unknown;
  try {
    body = await c.req.json();
  } catch {
    return c.json({ error: "invalid JSON" }, 400);
  }
  const taskId = crypto.randomUUID();
  try {
    await redis.xadd(stream, "*", "task_id", taskId, "payload", JSON.stringify(body));
  } catch {
    return c.json({ error: "Redis unavailable" }, 503);
  }
  return c.json({ status: "success", task_id: taskId }, 202);
});

const server = Deno.serve({ port, hostname, onListen: () => {} }, app.fetch);
const stopped = Promise.withResolvers<void>();
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => stopped.resolve());
}
await stopped.promise;
await server.shutdown();
redis.disconnect();
