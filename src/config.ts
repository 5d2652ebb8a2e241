import { z } from "zod";
import { secretProblem } from "./security/signature.ts";

const int = (min: number, fallback: number) => z.coerce.number().int().min(min).default(fallback);
/** A TCP port: 0 (any free port) to 65,535; Deno.serve throws a RangeError past it. */
const port = (fallback: number) => int(0, fallback).pipe(z.number().max(65_535));
const bool = (fallback: boolean) =>
  z.enum(["true", "false"]).default(String(fallback) as "true" | "false").transform((v) =>
    v === "true"
  );

/** A comma-separated list of host:port addresses (REDIS_CLUSTER_NODES, REDIS_SENTINELS). */
const hostPorts = z.string().transform((v, ctx) =>
  v.split(",").map((s) => s.trim()).filter(Boolean).map((address) => {
    const match = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/.exec(address);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65_535) {
      ctx.addIssue({ code: "custom", message: `"${address}" is not host:port` });
      return { host: "", port: 0 };
    }
    return { host: match[1].replace(/^\[|\]$/g, ""), port };
  })
).pipe(z.array(z.object({ host: z.string(), port: z.number() })).min(1, "names no host:port"));

function checkSecret(secret: string, ctx: z.RefinementCtx) {
  const problem = secretProblem(secret);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
}

/**
 * The consumer kinds a worker process can run (CONSUMERS): the task worker, the scene sink, the
 * callback sender and the projections. Each has its row in consumers/kinds.ts, typed by this list.
 */
export const CONSUMER_NAMES = ["tasks", "scenes", "callbacks", "projections"] as const;
export type ConsumerName = (typeof CONSUMER_NAMES)[number];

/** Every setting the service reads, validated once at start. Only this module reads the environment. */
export const ConfigSchema = z.object({
  PORT: port(8000),
  HTTP_PROCESSES: int(1, 1).pipe(z.number().max(64)),
  HOST: z.string().min(1).default("0.0.0.0"),
  REDIS_URL: z.string().regex(/^rediss?:\/\//, "must start with redis:// or rediss://").default(
    "redis://127.0.0.1:6379",
  ),
  // A Redis Cluster (seed nodes) or a Sentinel-managed primary instead of REDIS_URL's server; the
  // URL then only gives the credentials and TLS (rediss://) for every node.
  REDIS_CLUSTER_NODES: hostPorts.optional(),
  REDIS_SENTINELS: hostPorts.optional(),
  REDIS_SENTINEL_NAME: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "letters, digits, _ . - only")
    .optional(),
  KEY_PREFIX: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "letters, digits, _ . - only").default(
    "vp",
  ),
  // Partitions of the streams and keys, one Redis Cluster hash tag each (fixed per KEY_PREFIX: a
  // process started with another count than the one stored refuses to start).
  PARTITIONS: int(1, 1).pipe(z.number().max(1_024)),
  // POST /webhook answers 202 only once WAIT says this many replicas hold the write (0: no wait);
  // past ACK_TIMEOUT_MS it answers 503 and the sender retries with its idempotency key.
  ACK_REPLICAS: int(0, 0),
  ACK_TIMEOUT_MS: int(1, 1_000),
  WORKER_CONCURRENCY: int(1, 50),
  // Which consumers a `worker` (or `dev`) process runs; split them over processes to keep the
  // projections' lag independent of a task backlog.
  CONSUMERS: z.string().default(CONSUMER_NAMES.join(",")).transform((v) =>
    v.split(",").map((s) => s.trim()).filter(Boolean)
  ).pipe(z.array(z.enum(CONSUMER_NAMES)).min(1)),
  CLAIM_IDLE_MS: int(50, 60_000),
  MAX_ATTEMPTS: int(1, 5),
  RETRY_BASE_MS: int(0, 1_000),
  RETRY_MAX_MS: int(0, 60_000),
  SHUTDOWN_TIMEOUT_MS: int(0, 30_000),
  PROVIDER_MODE: z.enum(["auto", "live", "offline"]).default("auto"),
  OFFLINE_LATENCY_MS: int(0, 0),
  SCENE_COUNT: int(1, 5).pipe(z.number().max(20)),
  IDEMPOTENCY_TTL_S: int(1, 86_400),
  MAX_BODY_BYTES: int(64, 1_048_576),
  VIEW_RETENTION_S: int(60, 30 * 86_400),
  STREAM_RETENTION_S: int(60, 7 * 86_400),
  ADMIN_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  // How long a dashboard session lasts from its sign-in (the dashboard is on with ADMIN_TOKEN).
  DASHBOARD_SESSION_TTL_S: int(60, 8 * 3_600).pipe(z.number().max(30 * 86_400)),
  LOG_LEVEL: z.enum(["debug", "info", "warn", "error"]).default("info"),
  // auto: readable lines on a terminal, JSON otherwise (production).
  LOG_FORMAT: z.enum(["auto", "json", "pretty"]).default("auto"),
  // `dev` only: where it looks for a Redis and starts its private one when none answers, and where
  // that one keeps its data (relative to the working directory).
  DEV_REDIS_PORT: int(1, 6379).pipe(z.number().max(65_535)),
  DEV_REDIS_DIR: z.string().min(1).default(".dev/redis"),
  FAL_KEY: z.string().optional(),
  FAL_BASE_URL: z.url().optional(),
  FAL_REFRAME_MODEL: z.string().min(1).default("fal-ai/luma-photon/reframe"),
  REFRAME_ASPECT_RATIO: z.enum(["1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"]).default(
    "9:16",
  ),
  REFRAME_TIMEOUT_MS: int(1, 300_000),
  FAL_POLL_INTERVAL_MS: int(10, 1_000),
  OPENAI_API_KEY: z.string().optional(),
  OPENAI_BASE_URL: z.url().optional(),
  OPENAI_MODEL: z.string().min(1).default("gpt-4o"),
  SCENES_TIMEOUT_MS: int(1, 120_000),
  SUPABASE_URL: z.url().optional(),
  SUPABASE_SERVICE_ROLE_KEY: z.string().optional(),
  SUPABASE_SCHEMA: z.string().min(1).default("public"),
  CALLBACK_SECRET: z.string().superRefine(checkSecret).optional(),
  CALLBACK_MAX_ATTEMPTS: int(1, 5),
  CALLBACK_TIMEOUT_MS: int(1, 15_000),
  ALLOW_PRIVATE_CALLBACKS: bool(false),
  // An outcome older than this when the callback sender reaches it is recorded as expired, not sent.
  CALLBACK_MAX_AGE_S: int(1, 3_600),
  // /health answers 503 when a group this deployment runs has an entry pending longer than this,
  // or has had no consumer for longer than HEALTH_MAX_CONSUMERLESS_S.
  HEALTH_MAX_PENDING_AGE_S: int(1, 900),
  HEALTH_MAX_CONSUMERLESS_S: int(1, 300),
  // Server-Sent Events: clients one server process serves at once (past it: 503), and the events
  // a slow client may have waiting before it is disconnected.
  SSE_MAX_CLIENTS: int(1, 10_000),
  SSE_BUFFER_EVENTS: int(1, 1_000),
  // Prometheus /metrics on a worker process (0: off; the server serves it on PORT), and an optional
  // token for /metrics (Authorization: Bearer, as Prometheus's bearer_token sends it).
  METRICS_PORT: port(0),
  METRICS_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  // Several secrets, space- or comma-separated, while rotating.
  WEBHOOK_SECRET: z.string().optional()
    .transform((v) => v?.split(/[\s,]+/).filter(Boolean))
    .superRefine((secrets, ctx) => {
      if (secrets?.length === 0) ctx.addIssue({ code: "custom", message: "names no secret" });
      for (const secret of secrets ?? []) checkSecret(secret, ctx);
    })
    .transform((secrets) => secrets ?? []),
  WEBHOOK_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  WEBHOOK_TOKEN_HEADER: z.string().regex(/^[A-Za-z0-9-]+$/).default("x-webhook-token").transform((
    v,
  ) => v.toLowerCase()),
  PROMPT_MAX_CHARS: int(1, 20_000),
  // Fields the request schema does not know are kept (n8n sends extra ones), up to this many bytes
  // of JSON in all; 0 drops them.
  UNKNOWN_FIELDS_MAX_BYTES: int(0, 16_384),
  // A request's headers and body must arrive within this time, or the connection is closed.
  REQUEST_TIMEOUT_MS: int(100, 10_000),
  // Bodies being read at once: in all, and from one client address (more wait their turn: 503).
  BODY_READS_MAX: int(1, 512),
  BODY_READS_PER_ADDRESS: int(1, 64),
  // A token for GET /task/*, /videos/* and /stats (header READ_TOKEN_HEADER or Bearer).
  READ_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  READ_TOKEN_HEADER: z.string().regex(/^[A-Za-z0-9-]+$/).default("x-read-token").transform((
    v,
  ) => v.toLowerCase()),
  MAX_JSON_DEPTH: int(2, 32),
  RATE_LIMIT_PER_MINUTE: int(0, 600),
  TRUST_PROXY: bool(false),
  CORS_ORIGINS: z.string().optional().transform((v) => v?.split(/[\s,]+/).filter(Boolean) ?? []),
}).superRefine((config, ctx) => {
  if (config.RETRY_BASE_MS > config.RETRY_MAX_MS) {
    ctx.addIssue({
      code: "custom",
      path: ["RETRY_BASE_MS"],
      message: `must not be above RETRY_MAX_MS (${config.RETRY_MAX_MS})`,
    });
  }
  if (config.REDIS_CLUSTER_NODES && config.REDIS_SENTINELS) {
    ctx.addIssue({
      code: "custom",
      path: ["REDIS_SENTINELS"],
      message: "cannot be used with REDIS_CLUSTER_NODES (a cluster has no sentinels)",
    });
  }
  if (config.REDIS_SENTINELS && !config.REDIS_SENTINEL_NAME) {
    ctx.addIssue({
      code: "custom",
      path: ["REDIS_SENTINEL_NAME"],
      message: "is required when REDIS_SENTINELS is set (the primary's name in sentinel.conf)",
    });
  }
  if (config.SUPABASE_URL && !config.SUPABASE_SERVICE_ROLE_KEY) {
    ctx.addIssue({
      code: "custom",
      path: ["SUPABASE_SERVICE_ROLE_KEY"],
      message: "is required when SUPABASE_URL is set",
    });
  }
  if (config.PROVIDER_MODE === "live") {
    for (const key of ["FAL_KEY", "OPENAI_API_KEY"] as const) {
      if (!config[key]) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          message: "is required when PROVIDER_MODE=live",
        });
      }
    }
  }
});

export type Config = z.infer<typeof ConfigSchema>;

export class ConfigError extends Error {}

/** Parses the environment; the error names every bad variable. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const cleaned = Object.fromEntries(
    Object.entries(env).filter(([, v]) => v !== undefined && v !== ""),
  );
  const parsed = ConfigSchema.safeParse(cleaned);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`Invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  return parsed.data;
}

/** Which provider set runs: offline unless live is asked for, or auto finds both keys. */
export function providerMode(config: Config): "live" | "offline" {
  if (config.PROVIDER_MODE === "offline") return "offline";
  if (config.PROVIDER_MODE === "live") return "live";
  return config.FAL_KEY && config.OPENAI_API_KEY ? "live" : "offline";
}
