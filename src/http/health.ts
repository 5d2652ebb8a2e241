import type { Partitions } from "../partitions.ts";
import type { RedisClient } from "../redis/client.ts";
import { groupProblems, type KindReport, readRegistry } from "../consumer_registry.ts";
import type { Keys } from "../keys.ts";
import { consumerGroups, type GroupStats } from "../queries.ts";
import { aofEnabled } from "../redis/client.ts";

export interface HealthDeps {
  redis: RedisClient;
  /** Partition 0's keys: the consumer registry. */
  keys: Keys;
  /** Every partition's groups are checked. */
  partitions: Partitions;
  providerMode: "live" | "offline";
  /** How POST /webhook authenticates (`authMode`). */
  webhookAuth: string;
  sceneSink: { name: string; check(): Promise<{ ok: true } | { ok: false; error: string }> } | null;
  bounds: { maxConsumerlessMs: number; maxPendingAgeMs: number };
}

export interface HealthReport {
  status: "ok" | "degraded" | "unavailable";
  problems: string[];
  redis: { ok: boolean; latency_ms: number | null; aof: boolean | null };
  provider_mode: "live" | "offline";
  webhook_auth: string;
  scene_sink: { enabled: boolean; sink: string; ok: boolean; error?: string };
  consumer_groups?: GroupStats[];
}

/**
 * The health report; `groups` (default: `detailed`) adds the consumer groups' backlogs, which a
 * caller that reads them anyway (the dashboard, from /stats) leaves out.
 */
export type HealthCheck = (detailed: boolean, options?: { groups?: boolean }) => Promise<
  HealthReport
>;

/**
 * The readiness report of GET /health (and the dashboard's overview): Redis, the consumer groups
 * of the deployment, provider mode, webhook auth and the scene sink. `detailed` (read access)
 * adds the groups' names, backlogs and the scene sink's error, which strangers do not see.
 */
export function healthCheck(deps: HealthDeps): HealthCheck {
  const { redis, keys, partitions } = deps;
  // The kinds the deployment runs, as the consumer registry said when last read here: kept, so a
  // Redis that lost its data (and the registry with it) cannot make /health forget them.
  const expected = new Map<string, KindReport>();
  return async function health(detailed, { groups = detailed } = {}) {
    const sink = deps.sceneSink;
    const checked = sink ? await sink.check() : null;
    const sceneSink = sink
      ? {
        enabled: true,
        sink: sink.name,
        ok: checked!.ok,
        ...(detailed && checked && !checked.ok ? { error: checked.error } : {}),
      }
      : { enabled: false, sink: "redis-view", ok: true };
    const common = {
      provider_mode: deps.providerMode,
      webhook_auth: deps.webhookAuth,
      scene_sink: sceneSink,
    };
    const t0 = performance.now();
    try {
      await redis.ping();
      const latency = Math.round((performance.now() - t0) * 100) / 100;
      const aof = await aofEnabled(redis).catch(() => null);
      const registry = await readRegistry(redis, keys);
      for (const [kind, report] of registry) expected.set(kind, report);
      // Every partition has the same groups; each is checked, and named when there are several.
      const problems = (await Promise.all(partitions.list.map(async (p) => {
        const found = await groupProblems(redis, p.keys, expected, registry, {
          ...deps.bounds,
          // Real time, as the registry's reports are stamped.
          nowMs: Date.now(),
        });
        return partitions.count === 1 ? found : found.map((m) => `Partition ${p.index}: ${m}`);
      }))).flat();
      return {
        status: problems.length ? "degraded" : "ok",
        // Which groups and how far behind: for whoever may read backlogs, not for strangers.
        problems: detailed ? problems : problems.map(() => "A consumer group is not healthy"),
        redis: { ok: true, latency_ms: latency, aof },
        ...common,
        ...(groups
          ? { consumer_groups: await consumerGroups(redis, partitions.list.map((p) => p.keys)) }
          : {}),
      };
    } catch {
      return {
        status: "unavailable",
        problems: ["Redis is unreachable"],
        redis: { ok: false, latency_ms: null, aof: null },
        ...common,
        ...(groups ? { consumer_groups: [] } : {}),
      };
    }
  };
}
