import { type Config, ConfigError, loadConfig } from "./src/config.ts";
import { devRedis } from "./src/dev/dev_redis.ts";
import { MissingBinary } from "./src/dev/local_services.ts";
import { authMode } from "./src/http/auth.ts";
import { createLogger, logFormat } from "./src/log.ts";
import {
  aofEnabled,
  describeTarget,
  fewestReplicas,
  redisTarget,
  waitReady,
} from "./src/redis/client.ts";
import { PartitionCountMismatch } from "./src/partitions.ts";
import { createServices } from "./src/runtime.ts";
import { startWorkerHttp } from "./src/worker_http.ts";
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
  // `dev` brings its own Redis when none is configured or running; `serve` and `worker` never do.
  let privateRedis = null;
  if (command === "dev" && typeof redisTarget(config) === "string") {
    try {
      privateRedis = await devRedis(Deno.env.get("REDIS_URL"), {
        port: config.DEV_REDIS_PORT,
        dir: config.DEV_REDIS_DIR,
      });
    } catch (error) {
      if (!(error instanceof MissingBinary)) throw error;
      console.error(
        `No Redis runs on 127.0.0.1:${config.DEV_REDIS_PORT} and none can be started. ` +
          error.message,
      );
      return 1;
    }
    if (privateRedis) config = { ...config, REDIS_URL: privateRedis.url };
  }
  // Listen for signals before anything starts: a SIGTERM that arrives while the consumers are
  // starting (they may already run a task) must still mean a graceful stop, not the default exit.
  const stopped = Promise.withResolvers<string>();
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => stopped.resolve(signal));
  }
  const format = logFormat(config.LOG_FORMAT);
  const log = createLogger(
    config.LOG_LEVEL,
    format === "json" ? { service: "video-pipeline", role: command } : {},
    undefined,
    format,
  );
  if (privateRedis) {
    log.info(`Started a private Redis for dev (AOF on, data in ${config.DEV_REDIS_DIR})`, {
      url: privateRedis.url,
    });
  }
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
    if (!config.METRICS_TOKEN) {
      log.warn("GET /metrics is OPEN to anyone (backlogs, rates): set METRICS_TOKEN", {
        metrics_auth: "none",
      });
    }
  }
  // Fail fast with a clear message rather than after a long timeout: production connects to the
  // Redis it is given, and a wrong address should not look like a slow start.
  // The commands connection, and with ACK_REPLICAS the acknowledged ingests' connections.
  const ready = await Promise.all(
    [services.redis, ...services.partitions.ackConnections].map((c) => waitReady(c, 3_000)),
  ).then(() => true, () => false);
  if (!ready) {
    log.error(`Redis is not reachable at ${describeTarget(redisTarget(config))}`, {
      detail: command === "dev"
        ? "start it, or unset REDIS_URL to let dev start a private one"
        : "start Redis or set REDIS_URL to where it runs",
    });
    await services.close();
    await privateRedis?.stop();
    return 1;
  }
  try {
    await services.partitions.checkCount();
  } catch (error) {
    log.error(error instanceof PartitionCountMismatch ? error.message : String(error));
    await services.close();
    await privateRedis?.stop();
    return 1;
  }
  if (await aofEnabled(services.redis).catch(() => null) === false) {
    log.warn("Redis runs without AOF: an acknowledged webhook is lost if Redis restarts", {
      detail: "set appendonly yes (appendfsync everysec or always) on the Redis server",
    });
  }
  const replicas = config.ACK_REPLICAS > 0
    ? await fewestReplicas(services.redis).catch(() => null)
    : null;
  if (replicas !== null && replicas < config.ACK_REPLICAS) {
    log.warn(`ACK_REPLICAS=${config.ACK_REPLICAS} but a Redis primary has ${replicas} replica(s)`, {
      detail: "every POST /webhook to it answers 503 until enough replicas are connected",
    });
  }

  let consumers = null;
  if (command !== "serve") {
    try {
      consumers = await startConsumers(config, services, log);
    } catch (error) {
      log.error("Consumers could not start", { error: String(error) });
      await services.close();
      await privateRedis?.stop();
      return 1;
    }
  }
  const server = command === "worker" ? null : Deno.serve({
    port: config.PORT,
    hostname: config.HOST,
    // Several `serve` processes may share the port (HTTP_PROCESSES), the kernel spreads connections.
    reusePort: command === "serve" && config.HTTP_PROCESSES > 1,
    onListen: ({ hostname, port }) => {
      const url = `http://${hostname === "0.0.0.0" ? "localhost" : hostname}:${port}`;
      log.info("Listening", { url, docs: `${url}/docs` });
      if (format === "pretty" && !Deno.env.get("HTTP_PROCESS_CHILD")) {
        console.error(
          banner({ command, url, config, services, privateRedis: Boolean(privateRedis) }),
        );
      }
    },
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
  // A worker's /metrics and probes (the server has them on PORT); off with METRICS_PORT=0.
  let stopping = false;
  const probes = consumers && config.METRICS_PORT > 0
    ? startWorkerHttp({
      port: config.METRICS_PORT,
      hostname: config.HOST,
      redis: services.redis,
      metrics: services.metrics,
      sources: { redis: services.redis, keys: services.partitions.list.map((p) => p.keys) },
      token: config.METRICS_TOKEN,
      consumersRunning: () => !stopping,
      log,
    })
    : null;
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
  stopping = true;
  clearInterval(lagTimer);
  for (const sibling of siblings) sibling.kill("SIGTERM");
  // Open event streams end first (clients reconnect elsewhere with Last-Event-ID): shutdown() waits
  // for every response, and a client that stopped reading could hold it, hence the bound.
  await services.feed.close();
  if (server) await Promise.race([server.shutdown(), delay(config.SHUTDOWN_TIMEOUT_MS)]);
  await Promise.all(siblings.map((sibling) => sibling.status));
  const outcome = await consumers?.stop(config.SHUTDOWN_TIMEOUT_MS);
  if (outcome) {
    log.info("Consumers stopped", {
      ...outcome,
      projection_lag_ms: consumers!.projectionLag.summary(),
    });
  }
  await probes?.shutdown();
  await services.close();
  await privateRedis?.stop();
  return 0;
}

/** Resolves after `ms`, without holding the process open. */
function delay(ms: number): Promise<void> {
  return new Promise((resolve) => Deno.unrefTimer(setTimeout(resolve, ms)));
}

/** What runs where, for a person at a terminal (pretty logs only). */
function banner(
  options: {
    command: string;
    url: string;
    config: Config;
    services: ReturnType<typeof createServices>;
    privateRedis: boolean;
  },
): string {
  const { command, url, config, services } = options;
  const auth = authMode({
    secrets: config.WEBHOOK_SECRET,
    token: config.WEBHOOK_TOKEN,
    tokenHeader: config.WEBHOOK_TOKEN_HEADER,
  });
  const rows = [
    ["API", url],
    ["Docs", `${url}/docs`],
    ["Providers", services.mode === "offline" ? "offline (no API keys)" : "live: fal.ai, OpenAI"],
    ["Webhook auth", auth === "none" ? "none (open)" : auth],
    ["Reads", config.READ_TOKEN ? "token" : "open"],
    ["Consumers", command === "serve" ? "none (serve)" : config.CONSUMERS.join(", ")],
    [
      "Redis",
      `${describeTarget(redisTarget(config))}${options.privateRedis ? " (started by dev)" : ""}`,
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return ["", ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`), ""].join("\n");
}

if (import.meta.main) Deno.exit(await main(Deno.args[0]));
