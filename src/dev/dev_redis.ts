import {
  freePort,
  listening,
  type LocalServer,
  redisAnswers,
  startRedis,
} from "./local_services.ts";

const DEFAULT_PORT = 6379;

/**
 * For `deno task dev` only: when REDIS_URL is unset and no Redis answers on the default address,
 * starts a private `redis-server` (AOF on, data in `.dev/redis/` of the project, git-ignored, so
 * work survives a restart) on the default port, or a free one when that port is taken by something
 * else. Null when a Redis is there or one was configured. Throws MissingBinary, naming the package
 * to install, at once when redis-server is missing.
 */
export async function devRedis(
  configuredUrl: string | undefined,
  options: { defaultPort?: number; dir?: string } = {},
): Promise<LocalServer | null> {
  const { defaultPort = DEFAULT_PORT } = options;
  if (configuredUrl || await redisAnswers(defaultPort)) return null;
  const port = await listening(defaultPort) ? freePort() : defaultPort;
  const dir = options.dir ?? new URL("../../.dev/redis/", import.meta.url).pathname;
  return await startRedis({ port, dir });
}
