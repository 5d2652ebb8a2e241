import { callWithKey, type RedisClient } from "./client.ts";

export interface StreamEntry {
  id: string;
  fields: string[];
  /** True when taken over from another consumer (XAUTOCLAIM): work on it may have begun. */
  reclaimed?: boolean;
}

/**
 * XGROUP on a stream. Its key follows the subcommand, where ioredis does not look: on a cluster,
 * `redis.xgroup` would go to a node chosen by the subcommand's name and fail with MOVED.
 */
export function xgroup(
  redis: RedisClient,
  subcommand: "CREATE" | "DESTROY" | "SETID" | "DELCONSUMER",
  stream: string,
  ...args: string[]
): Promise<unknown> {
  return callWithKey(redis, stream, "XGROUP", subcommand, stream, ...args);
}

/** Creates a consumer group (and the stream) unless it exists; new groups start at `start`. */
export async function ensureGroup(redis: RedisClient, stream: string, group: string, start = "0") {
  try {
    await xgroup(redis, "CREATE", stream, group, start, "MKSTREAM");
  } catch (error) {
    if (!String((error as Error).message).includes("BUSYGROUP")) throw error;
  }
}

/**
 * XREADGROUP for one stream. `id` ">" reads new entries; "0" re-reads this consumer's pending
 * ones. Deleted entries (nil fields) are returned with empty fields.
 */
export async function readGroup(
  redis: RedisClient,
  options: {
    stream: string;
    group: string;
    consumer: string;
    count: number;
    blockMs?: number;
    id?: string;
  },
): Promise<StreamEntry[]> {
  const args: (string | number)[] = [
    "GROUP",
    options.group,
    options.consumer,
    "COUNT",
    options.count,
  ];
  if (options.blockMs !== undefined) args.push("BLOCK", options.blockMs);
  args.push("STREAMS", options.stream, options.id ?? ">");
  // deno-lint-ignore no-explicit-any
  const reply = await (redis as any).xreadgroup(...args) as
    | [string, [string, string[] | null][]][]
    | null;
  if (!reply) return [];
  return reply[0][1].map(([id, fields]) => ({ id, fields: fields ?? [] }));
}

export interface GroupInfo {
  name: string;
  consumers: number;
  pending: number;
  lag: number | null;
  last_delivered_id: string;
}

/** XINFO GROUPS as objects; an absent stream has no groups. */
export async function groupInfo(redis: RedisClient, stream: string): Promise<GroupInfo[]> {
  let reply: unknown[][];
  try {
    reply = await callWithKey(redis, stream, "XINFO", "GROUPS", stream) as unknown[][];
  } catch (error) {
    if (String((error as Error).message).includes("no such key")) return [];
    throw error;
  }
  return parseGroupInfo(reply);
}

/** An XINFO GROUPS reply (flat field lists) as objects. */
export function parseGroupInfo(reply: unknown[][]): GroupInfo[] {
  return reply.map((flat) => {
    const info: Record<string, unknown> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) info[String(flat[i])] = flat[i + 1];
    return {
      name: String(info.name),
      consumers: Number(info.consumers),
      pending: Number(info.pending),
      lag: info.lag === null || info.lag === undefined ? null : Number(info.lag),
      last_delivered_id: String(info["last-delivered-id"]),
    };
  });
}
