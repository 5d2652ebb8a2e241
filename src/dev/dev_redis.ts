import {
  freePort,
  listening,
  type LocalServer,
  redisAnswers,
  startRedis,
} from "./local_services.ts";

/**
 * For `deno task dev` only: when REDIS_URL is unset and no Redis answers on 127.0.0.1:`port`
 * (DEV_REDIS_PORT, 6379), starts a private `redis-server` there (AOF on, data in `dir`,
 * DEV_REDIS_DIR, git-ignored `.dev/redis` by default, so work survives a restart), or on a free port
 * when that one is taken by something else. Null when a Redis is there or one was configured.
 * Throws MissingBinary, naming the package to install, at once when redis-server is missing.
 */
export async function devRedis(
  configuredUrl: string | undefined,
  options: { port: number; dir: string },
): Promise<LocalServer | null> {
  if (configuredUrl || await redisAnswers(options.port)) return null;
  const port = await listening(options.port) ? freePort() : options.port;
  return await startRedis({ port, dir: options.dir });
}
