import { ConfigError, loadConfig } from "./src/config.ts";
import { authMode } from "./src/http/auth.ts";
import { createLogger } from "./src/log.ts";
import { aofEnabled, waitReady } from "./src/redis/client.ts";
import { createServices } from "./src/runtime.ts";
import { startConsumers } from "./consumers/kinds.ts";
import { workerId } from "./consumers/task_worker.ts";

const USAGE = `Usage: deno run main.ts <serve|worker|dev>
  serve   the HTTP API
  worker  the task worker and the projections (start as many as you like)
  dev     both in one process, for a laptop`;

async function main(command: string | undefined): Promise<number> {
  if (!command || !["serve", "worker", "dev"].includes(command)) {
    console.error(USAGE);
    return 2;
  }
  let config;
  try {
    config = loadConfig(Deno.env.toObject());
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  }
  // Listen for signals before anything starts: a SIGTERM that arrives while the consumers are
  // starting (they may already run a task) must still mean a graceful stop, not the default exit.
  const stopped = Promise.withResolvers<string>();
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => stopped.resolve(signal));
  }
  const log = createLogger(config.LOG_LEVEL, { service: "video-pipeline", role: command });
  const services = createServices(config, log);
  const level = services.mode === "offline" ? "warn" : "info";
  log[level](`Provider mode: ${services.mode.toUpperCase()}`, {
    provider_mode: services.mode,
    detail: services.mode === "offline"
      ? "OFFLINE providers: images are not reframed and scenes are derived from the prompt"
      : "live providers: fal.ai and OpenAI",
  });
  if (command !== "worker") {
    const auth = authMode({
      secrets: config.WEBHOOK_SECRET,
      token: config.WEBHOOK_TOKEN,
      tokenHeader: config.WEBHOOK_TOKEN_HEADER,
    });
    if (auth === "none") {
      log.warn("POST /webhook is UNAUTHENTICATED: set WEBHOOK_SECRET or WEBHOOK_TOKEN", {
        webhook_auth: auth,
      });
    } else log.info("Webhook authentication on", { webhook_auth: auth });
    if (!config.READ_TOKEN) {
      log.warn("GET /task/*, /videos/* and /stats are OPEN to anyone: set READ_TOKEN", {
        read_auth: "none",
      });
    } else log.info("Read authentication on", { read_auth: "token" });
  }
  const ready = await waitReady(services.redis, 10_000).then(() => true, (error) => {
    log.warn("Redis is not reachable yet; requests answer 503 until it is", {
      error: String(error),
    });
    return false;
  });
  if (ready && await aofEnabled(services.redis).catch(() => null) === false) {
    log.warn("Redis runs without AOF: an acknowledged webhook is lost if Redis restarts", {
      detail: "set appendonly yes (appendfsync everysec or always) on the Redis server",
    });
  }

  let consumers = null;
  if (command !== "serve") {
    try {
      consumers = await startConsumers(config, services, log);
    } catch (error) {
      log.error("Consumers could not start", { error: String(error) });
      await services.close();
      return 1;
    }
  }
  const server = command === "worker" ? null : Deno.serve({
    port: config.PORT,
    hostname: config.HOST,
    // Several `serve` processes may share the port (HTTP_PROCESSES), the kernel spreads connections.
    reusePort: command === "serve" && config.HTTP_PROCESSES > 1,
    onListen: ({ hostname, port }) => log.info("Listening", { url: `http://${hostname}:${port}` }),
    onError: services.uploads.onError,
  }, services.uploads.wrap(services.app.fetch));
  const siblings = command === "serve" && !Deno.env.get("HTTP_PROCESS_CHILD")
    ? Array.from({ length: config.HTTP_PROCESSES - 1 }, () =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-net",
          "--allow-env",
          "--allow-read",
          "--allow-sys",
          import.meta.filename!,
          "serve",
        ],
        env: { HTTP_PROCESS_CHILD: "1" },
        stdin: "null",
      }).spawn())
    : [];
  if (consumers) {
    log.info("Consumers started", {
      consumer: consumers.consumer,
      // Events name the worker by this opaque id, never by the consumer name (host and pid).
      worker_id: workerId(consumers.consumer),
      consumers: config.CONSUMERS,
      concurrency: config.WORKER_CONCURRENCY,
    });
  }

  // Projection lag in the log every 10 s while there is traffic (and once more at stop).
  const lagTimer = setInterval(() => {
    const lag = consumers?.projectionLag.summary();
    if (lag?.count) log.info("Projection lag (ms)", lag);
    consumers?.projectionLag.reset();
  }, 10_000);

  const signal = await stopped.promise;
  log.info("Shutting down", { signal });
  clearInterval(lagTimer);
  for (const sibling of siblings) sibling.kill("SIGTERM");
  await server?.shutdown();
  await Promise.all(siblings.map((sibling) => sibling.status));
  const outcome = await consumers?.stop(config.SHUTDOWN_TIMEOUT_MS);
  if (outcome) {
    log.info("Consumers stopped", {
      ...outcome,
      projection_lag_ms: consumers!.projectionLag.summary(),
    });
  }
  await services.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args[0]));
