import { z } from "zod";

const int = (min: number, fallback: number) => z.coerce.number().int().min(min).default(fallback);

/** Every setting the service reads, validated once at start. Only this module reads the environment. */
export const ConfigSchema = z.object({
  PORT: int(0, 8000),
  HOST: z.string().min(1).default("0.0.0.0"),
  REDIS_URL: z.string().regex(/^rediss?:\/\//, "must start with redis:// or rediss://").default(
    "redis://127.0.0.1:6379",
  ),
  KEY_PREFIX: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "letters, digits, _ . - only").default(
    "vp",
  ),
  WORKER_CONCURRENCY: int(1, 50),
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
  LOG_LEVEL: z.enum(["debug", "info", "warn", "error"]).default("info"),
  FAL_KEY: z.string().optional(),
  OPENAI_API_KEY: z.string().optional(),
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
