import { Cluster, Command, Redis, type RedisOptions as IoRedisOptions } from "ioredis";

/**
 * A connection to Redis: one server (REDIS_URL), a Sentinel-managed primary (also a `Redis`), or
 * a Redis Cluster. The service's commands are the same on all three; what differs (keyless
 * commands such as XINFO and INFO, SCAN) goes through the helpers below.
 */
export type RedisClient = Redis | Cluster;

/** A `host:port` address, as REDIS_CLUSTER_NODES and REDIS_SENTINELS list them. */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * Where Redis runs: a redis:// or rediss:// URL, the seed nodes of a Redis Cluster, or the
 * sentinels that know a primary's address. For a cluster or sentinels, `url` only gives the
 * username, password and TLS (rediss://) used for every node; its host is not used.
 */
export type RedisTarget =
  | string
  | { url?: string; cluster: readonly HostPort[] }
  | { url?: string; sentinels: readonly HostPort[]; name: string };

/** The target the configuration names: REDIS_CLUSTER_NODES, else REDIS_SENTINELS, else REDIS_URL. */
export function redisTarget(config: {
  REDIS_URL: string;
  REDIS_CLUSTER_NODES?: readonly HostPort[];
  REDIS_SENTINELS?: readonly HostPort[];
  REDIS_SENTINEL_NAME?: string;
}): RedisTarget {
  const url = config.REDIS_URL;
  if (config.REDIS_CLUSTER_NODES?.length) return { url, cluster: config.REDIS_CLUSTER_NODES };
  if (config.REDIS_SENTINELS?.length) {
    return { url, sentinels: config.REDIS_SENTINELS, name: config.REDIS_SENTINEL_NAME ?? "" };
  }
  return url;
}

/** The target for messages: the URL without its password, or the nodes. */
export function describeTarget(target: RedisTarget): string {
  const list = (nodes: readonly HostPort[]) => nodes.map((n) => `${n.host}:${n.port}`).join(",");
  if (typeof target === "string") return redactUrl(target);
  if ("cluster" in target) return `Redis Cluster ${list(target.cluster)}`;
  return `Sentinel primary "${target.name}" via ${list(target.sentinels)}`;
}

/** A Redis URL with its credentials (if any) replaced by `***`. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, "//***@");
}

export interface RedisOptions {
  /**
   * Fail a command after this long instead of waiting for a reconnect (not for blocking reads).
   * A connection with a timeout also fails fast while it is known to be down: see connectRedis.
   */
  commandTimeoutMs?: number;
  name?: string;
}

/** The longest pause between reconnect attempts: Redis back means commands back within it. */
const RECONNECT_MAX_MS = 200;

/** 50, 100, 200, 200, ... ms: a returning Redis is used again within RECONNECT_MAX_MS. */
const reconnectDelay = (times: number) => Math.min(25 * 2 ** times, RECONNECT_MAX_MS);

/**
 * Opens a Redis connection (a new client on each call: a blocking reader needs its own). Commands
 * fail fast when Redis is unreachable: the HTTP layer answers 503 rather than holding requests open
 * while ioredis reconnects in the background.
 *
 * A connection with a command timeout (the commands connection) answers every command at once with
 * an error while it is not connected: no offline queue, and what was in flight when the connection
 * dropped is rejected on the spot. Nothing then waits for a timeout, its own or (with
 * auto-pipelining, which runs one batch at a time) that of a batch ahead of it. The timeout only
 * remains for a Redis that is connected but does not answer (a stalled server, a half-open
 * connection): there a batch still waits for the one ahead of it, so up to two timeouts.
 *
 * On a Redis Cluster the same holds per node: a command for a master that is down fails at once
 * (no retry on "Connection is closed" for a connection with a timeout), and the client learns the
 * promoted replica from the next MOVED reply, a CLUSTERDOWN retry or its slot refresh (every
 * second). Connections without a timeout (blocking readers) retry through a failover instead.
 * On Sentinel the client asks the sentinels for the primary on every reconnect, and reconnects
 * when a demoted primary answers READONLY.
 */
export function connectRedis(target: RedisTarget, options: RedisOptions = {}): RedisClient {
  const failFast = options.commandTimeoutMs !== undefined;
  const common = {
    connectionName: options.name,
    commandTimeout: options.commandTimeoutMs,
    // 0: commands in flight are rejected when the connection closes; 1: after a failed reconnect.
    maxRetriesPerRequest: failFast ? 0 : 1,
    // On a connection with a command timeout, a command in flight when the connection drops fails
    // instead of being sent again after the reconnect: its caller has already moved on (a 503
    // answered), and a late ingest or append would happen behind its back. Blocking connections
    // (no timeout) keep resending: ioredis would otherwise leave their lost command unsettled, and
    // every later command queued behind it.
    autoResendUnfulfilledCommands: !failFast,
    // A Redis still loading its AOF is polled again this soon (ioredis waits up to 1 s by default).
    maxLoadingRetryTime: 100,
  } satisfies IoRedisOptions;
  const redis = typeof target === "string"
    ? new Redis(target, single(common, failFast))
    : "cluster" in target
    ? new Cluster(target.cluster.map(({ host, port }) => ({ host, port })), {
      // Commands issued while the cluster is (re)connecting fail instead of being queued.
      enableOfflineQueue: !failFast,
      enableAutoPipelining: true,
      clusterRetryStrategy: reconnectDelay,
      // See above: a fail-fast connection does not resend what was in flight on a lost master.
      retryDelayOnFailover: failFast ? 0 : 100,
      retryDelayOnClusterDown: 100,
      retryDelayOnTryAgain: 100,
      // The commands connection finds the promoted replica of a lost master within a second even
      // without traffic; blocking readers (one client each, many per process) retry through a
      // failover and refresh on MOVED, so they poll CLUSTER SLOTS at ioredis' default pace.
      slotsRefreshInterval: failFast ? 1_000 : 5_000,
      redisOptions: { ...common, ...credentials(target.url) },
    })
    : new Redis({
      ...single(common, failFast),
      ...credentials(target.url),
      sentinels: target.sentinels.map(({ host, port }) => ({ host, port })),
      name: target.name,
      sentinelRetryStrategy: reconnectDelay,
      // No +switch-master subscription (failoverDetector): with it, a failover sometimes left the
      // connection stuck (tests/sentinel_test.ts failed 3 runs in 10); the lost primary's closed
      // connection already makes ioredis ask the sentinels again on every reconnect.
      failoverDetector: false,
      // A primary demoted to replica (it came back after a failover) answers READONLY.
      reconnectOnError: (error) => error.message.startsWith("READONLY"),
    });
  // Connection errors surface on the commands that fail; without a listener ioredis logs each one.
  redis.on("error", () => {});
  return redis;
}

/** Options of a one-server connection (a URL, or the primary Sentinel points to). */
function single(common: IoRedisOptions, failFast: boolean): IoRedisOptions {
  return {
    ...common,
    // Commands issued while connecting or reconnecting fail instead of being queued for later.
    enableOfflineQueue: !failFast,
    enableAutoPipelining: true,
    retryStrategy: reconnectDelay,
    lazyConnect: false,
  };
}

/** Username, password, database and TLS from a URL, for cluster nodes and Sentinel primaries. */
function credentials(url: string | undefined): IoRedisOptions {
  if (!url) return {};
  const parsed = new URL(url);
  const decode = (value: string) => value ? decodeURIComponent(value) : undefined;
  return {
    username: decode(parsed.username),
    password: decode(parsed.password),
    ...(parsed.protocol === "rediss:" ? { tls: {} } : {}),
  };
}

/** Waits until the connection is ready, or throws after `timeoutMs`. */
export async function waitReady(redis: RedisClient, timeoutMs = 5_000): Promise<void> {
  if (redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Redis not ready after ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off("ready", onReady);
    };
    redis.on("ready", onReady);
  });
}

/** Closes a connection, waiting for queued replies; never throws. */
export async function closeRedis(redis: RedisClient): Promise<void> {
  try {
    if (redis.status === "ready") await redis.quit();
    else redis.disconnect();
  } catch {
    redis.disconnect();
  }
}

/** The servers that hold data: every master of a cluster, else the one server. */
export function dataNodes(redis: RedisClient): Redis[] {
  return redis instanceof Cluster ? redis.nodes("master") : [redis];
}

/**
 * Whether Redis appends every write to its AOF, from INFO persistence: without it, webhooks
 * acknowledged since the last RDB snapshot are lost when Redis restarts. On a cluster, false when
 * any master runs without it. Null when the server does not say (some managed services hide INFO
 * sections).
 */
export async function aofEnabled(redis: RedisClient): Promise<boolean | null> {
  const answers = await Promise.all(
    dataNodes(redis).map(async (node) => {
      const match = /^aof_enabled:(\d)/m.exec(await node.info("persistence"));
      return match ? match[1] === "1" : null;
    }),
  );
  if (answers.includes(false)) return false;
  return answers.length && answers.every((a) => a === true) ? true : null;
}

/** The fewest replicas connected to any primary (INFO replication), for ACK_REPLICAS. */
export async function fewestReplicas(redis: RedisClient): Promise<number | null> {
  const counts = await Promise.all(
    dataNodes(redis).map(async (node) => {
      const match = /^connected_slaves:(\d+)/m.exec(await node.info("replication"));
      return match ? Number(match[1]) : null;
    }),
  );
  const known = counts.filter((n): n is number => n !== null);
  return known.length ? Math.min(...known) : null;
}

/**
 * Runs a command that names its key after a subcommand (XINFO GROUPS key, MEMORY USAGE key), which
 * ioredis does not recognise as a key: on a cluster it is sent to the node holding `key` rather
 * than to a random one (that would answer MOVED).
 */
export function callWithKey(
  redis: RedisClient,
  key: string,
  command: string,
  ...args: (string | number)[]
): Promise<unknown> {
  const call = new Command(command, args, { replyEncoding: "utf8" });
  call.getKeys = () => [key];
  return redis.sendCommand(call) as Promise<unknown>;
}

/**
 * Every key matching a SCAN pattern, in batches (on a cluster, from every master: each holds only
 * its own slots).
 */
export async function* scanKeys(
  redis: RedisClient,
  pattern: string,
  count = 1_000,
): AsyncGenerator<string[]> {
  for (const node of dataNodes(redis)) {
    let cursor = "0";
    do {
      const [next, found] = await node.scan(cursor, "MATCH", pattern, "COUNT", count);
      cursor = next;
      if (found.length) yield found;
    } while (cursor !== "0");
  }
}

/** Deletes keys (on a cluster one UNLINK per key, as they may lie in different slots). */
export async function unlinkKeys(redis: RedisClient, keys: readonly string[]): Promise<number> {
  if (!keys.length) return 0;
  if (!(redis instanceof Cluster)) return await redis.unlink(...keys);
  const counts = await Promise.all(keys.map((key) => redis.unlink(key)));
  return counts.reduce((sum, n) => sum + n, 0);
}
