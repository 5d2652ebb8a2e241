import type { RedisClient } from "./redis/client.ts";
import { type Keys, projectionGroup } from "./keys.ts";
import { PROJECTION_NAMES } from "./projections/registry.ts";
import { viewGeneration } from "./queries.ts";
import { groupInfo } from "./redis/streams.ts";

/**
 * Which consumer kinds the deployment runs, as the processes running them report it: a hash of
 * kind → `{at, groups}` (the last report's time in ms, and the consumer groups the kind reads),
 * written every REPORT_MS by every worker process for each kind it runs. /health expects these
 * groups to exist and be consumed; retention stops waiting for a group nobody reports running.
 *
 * Redis stream consumers cannot tell liveness themselves: Redis 7.0 creates a consumer only when
 * it is handed an entry and refreshes its idle time only then, so a quiet group looks abandoned.
 */
export const REPORT_MS = 1_000;

/** The registry's key. */
export const registryKey = (keys: Keys) => keys.consumerKinds;

/** A consumer group by its stream's short name ("webhooks" or "events"), as /stats names it. */
export interface GroupRef {
  stream: "webhooks" | "events";
  group: string;
}

export interface KindReport {
  /** When a process last said it runs the kind (ms). */
  at: number;
  groups: GroupRef[];
}

/** Records that this process runs `kinds` (each with the groups it reads) as of `nowMs`. */
export async function reportRunning(
  redis: RedisClient,
  keys: Keys,
  kinds: Record<string, GroupRef[]>,
  nowMs: number,
): Promise<void> {
  const fields = Object.entries(kinds).flatMap(([kind, groups]) => [
    kind,
    JSON.stringify({ at: nowMs, groups } satisfies KindReport),
  ]);
  if (fields.length) await redis.hset(registryKey(keys), ...fields);
}

/** The registry as kind → report (unreadable fields are skipped). */
export async function readRegistry(
  redis: RedisClient,
  keys: Keys,
): Promise<Map<string, KindReport>> {
  const raw = await redis.hgetall(registryKey(keys));
  const out = new Map<string, KindReport>();
  for (const [kind, value] of Object.entries(raw)) {
    try {
      const report = JSON.parse(value) as KindReport;
      if (typeof report.at === "number" && Array.isArray(report.groups)) out.set(kind, report);
    } catch {
      // Not ours; ignored.
    }
  }
  return out;
}

/** The stream key of a group reference. */
export function streamKey(keys: Keys, ref: GroupRef): string {
  return ref.stream === "webhooks" ? keys.webhookStream : keys.eventStream;
}

/**
 * Whether Redis says a consumer group (or its stream) does not exist: NOGROUP, or a blocked read
 * released because the stream key was deleted (FLUSHALL, DEL).
 */
export function isMissingGroup(error: unknown): boolean {
  const message = String((error as Error)?.message ?? error);
  return message.includes("NOGROUP") || message.includes("no longer exists");
}

export interface HealthBounds {
  maxConsumerlessMs: number;
  maxPendingAgeMs: number;
}

/**
 * What /health reports about the consumer groups the deployment runs: every kind in `expected`
 * (kind → what it was last seen running), checked against Redis. A kind's projection groups are
 * those of the view generation readers use now (the report may predate a rebuild's swap). Each
 * problem is one sentence naming the group.
 */
export async function groupProblems(
  redis: RedisClient,
  keys: Keys,
  expected: Map<string, KindReport>,
  registry: Map<string, KindReport>,
  bounds: HealthBounds & { nowMs: number },
): Promise<string[]> {
  const { nowMs } = bounds;
  const problems: string[] = [];
  const generation = await viewGeneration(redis, keys);
  const info = new Map<string, Awaited<ReturnType<typeof groupInfo>>>();
  const groupsOf = async (stream: string) => {
    if (!info.has(stream)) info.set(stream, await groupInfo(redis, stream));
    return info.get(stream)!;
  };
  for (const [kind, report] of expected) {
    const current = currentGroups(report.groups, generation);
    // A kind missing from the registry (Redis lost it, or nothing reported yet) counts from the
    // last report this process remembers.
    const at = registry.get(kind)?.at ?? report.at;
    const consumerless = nowMs - at;
    for (const ref of current) {
      const stream = streamKey(keys, ref);
      const group = (await groupsOf(stream)).find((g) => g.name === ref.group);
      if (!group) {
        problems.push(`Consumer group "${ref.group}" (${kind}) is missing`);
        continue;
      }
      if (consumerless > bounds.maxConsumerlessMs) {
        problems.push(
          `Consumer group "${ref.group}" (${kind}) has had no consumer for ` +
            `${Math.round(consumerless / 1000)} s`,
        );
      }
      if (group.pending > 0) {
        // Idle time, not age: a running task refreshes its claim, so only an entry nobody has
        // touched for that long (its consumer is gone and nobody reclaimed it) counts. A backlog
        // being worked through after an outage does not.
        const [stuck] = await redis.xpending(
          stream,
          ref.group,
          "IDLE",
          bounds.maxPendingAgeMs,
          "-",
          "+",
          1,
        ) as [string, string, number, number][];
        if (stuck) {
          problems.push(
            `Consumer group "${ref.group}" (${kind}) has an entry untouched for ` +
              `${Math.round(stuck[2] / 1000)} s`,
          );
        }
      }
    }
  }
  return problems;
}

/** Projection groups moved to `generation` (reports name the generation their runner followed). */
function currentGroups(groups: GroupRef[], generation: number): GroupRef[] {
  return groups.map((ref) => {
    const name = ref.group.split("@")[0];
    if (!(PROJECTION_NAMES as readonly string[]).includes(name)) return ref;
    return { ...ref, group: projectionGroup(name, generation) };
  });
}
