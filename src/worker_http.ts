import type { RedisClient } from "./redis/client.ts";
import { type MetricsEndpoint, metricsHandler } from "./http/metrics_route.ts";
import type { Logger } from "./log.ts";

export interface WorkerHttpOptions extends MetricsEndpoint {
  port: number;
  hostname: string;
  redis: RedisClient;
  /** Whether this process's consumers run (started and not stopping). */
  consumersRunning(): boolean;
  log: Logger;
}

/**
 * A worker process's own small HTTP server on METRICS_PORT, for Prometheus and an orchestrator's
 * probes (a worker has no API):
 * - `GET /metrics`: as the server's (METRICS_TOKEN applies);
 * - `GET /health/live`: 200 while the process answers: nothing a restart would not fix is checked;
 * - `GET /health/ready`: 200 when Redis answers a PING within a second and this process's consumers
 *   run, else 503 with the reasons (Redis down, or starting / stopping).
 */
export function startWorkerHttp(options: WorkerHttpOptions): Deno.HttpServer<Deno.NetAddr> {
  const metrics = metricsHandler(options);
  return Deno.serve({
    port: options.port,
    hostname: options.hostname,
    onListen: ({ hostname, port }) =>
      options.log.info("Metrics and probes listening", { url: `http://${hostname}:${port}` }),
  }, async function workerHttp(request) {
    const { pathname } = new URL(request.url);
    if (pathname === "/metrics") return await metrics(request);
    if (pathname === "/health/live") return Response.json({ status: "ok" });
    if (pathname === "/health/ready") {
      const problems = await readiness(options);
      return Response.json(
        { status: problems.length ? "unavailable" : "ok", problems },
        { status: problems.length ? 503 : 200 },
      );
    }
    return Response.json({ title: "Not found", status: 404 }, { status: 404 });
  });
}

async function readiness(options: WorkerHttpOptions): Promise<string[]> {
  const problems: string[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("timeout")), 1_000);
  });
  try {
    await Promise.race([options.redis.ping(), timeout]);
  } catch {
    problems.push("Redis is unreachable");
  } finally {
    clearTimeout(timer);
  }
  if (!options.consumersRunning()) problems.push("The consumers are not running");
  return problems;
}
