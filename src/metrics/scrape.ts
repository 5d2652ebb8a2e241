import type { RedisClient } from "../redis/client.ts";
import { readRegistry } from "../consumer_registry.ts";
import type { Keys } from "../keys.ts";
import { oldestPendingAgeS } from "../queries.ts";
import { groupInfo } from "../redis/streams.ts";
import { CONTENT_TYPE, type Metrics, refreshProcess } from "./registry.ts";

/** What a scrape reads besides the process: Redis, and the SSE clients when the process has any. */
export interface ScrapeSources {
  redis: RedisClient;
  /** One partition's keys, or every partition's (the series then cover them all). */
  keys: Keys | readonly Keys[];
  feed?: { clients: number; dropped: number };
  /** The upload guard's counts (src/http/guard.ts). */
  uploads?: Record<"aborted" | "timedOut" | "busy" | "closed", { value: number }>;
  /** Real time (ms), as stream ids and the registry's reports are stamped. */
  nowMs?: () => number;
}

/**
 * Sets the gauges read at scrape time, then renders the registry. The consumer groups (pending,
 * lag, consumers, oldest pending entry: in the spirit of redis_exporter's `redis_stream_*`) and
 * the dead letters come from Redis, so every process reports the same values: aggregate them with
 * `max by (stream, group)`. With Redis unreachable, `redis_up` is 0 and those series are absent,
 * never stale.
 */
export async function scrape(metrics: Metrics, sources: ScrapeSources): Promise<string> {
  refreshProcess(metrics);
  if (sources.uploads) {
    const reasons = { aborted: "aborted", timedOut: "timed_out", busy: "busy", closed: "closed" };
    metrics.uploadsCut.reset();
    for (const [name, reason] of Object.entries(reasons)) {
      metrics.uploadsCut.inc({ reason }, sources.uploads[name as keyof typeof reasons].value);
    }
  }
  if (sources.feed) {
    metrics.sseClients.set(sources.feed.clients);
    metrics.sseDropped.reset();
    metrics.sseDropped.inc(sources.feed.dropped);
  }
  const redisGauges = [
    metrics.streamLength,
    metrics.groupPending,
    metrics.groupLag,
    metrics.groupConsumers,
    metrics.groupOldestPending,
    metrics.groupReportAge,
    metrics.deadLetters,
  ];
  for (const gauge of redisGauges) gauge.reset();
  try {
    await readStreams(metrics, sources);
    metrics.redisUp.set(1);
  } catch {
    for (const gauge of redisGauges) gauge.reset();
    metrics.redisUp.set(0);
  }
  return await metrics.registry.metrics();
}

export { CONTENT_TYPE };

/**
 * With several partitions, each series sums (lengths, pending, lag, dead letters) or takes the
 * worst (consumers: the fewest, the oldest pending entry) over the partitions; per-partition
 * backlogs are in /stats and /health (`consumer_groups[].partition`).
 */
async function readStreams(metrics: Metrics, { redis, keys, nowMs }: ScrapeSources) {
  const now = nowMs?.() ?? Date.now();
  const all = Array.isArray(keys) ? keys as readonly Keys[] : [keys as Keys];
  const registry = await readRegistry(redis, all[0]);
  // The last report naming each group, whichever kind made it.
  const reported = new Map<string, number>();
  for (const report of registry.values()) {
    for (const ref of report.groups) {
      const id = `${ref.stream}/${ref.group}`;
      reported.set(id, Math.max(reported.get(id) ?? 0, report.at));
    }
  }
  const lengths = new Map<string, number>();
  const groups = new Map<
    string,
    { pending: number; lag: number | null; consumers: number; oldest: number }
  >();
  let deadLetters = 0;
  await Promise.all(all.map(async (k) => {
    const streams = [
      { stream: "webhooks", key: k.webhookStream },
      { stream: "events", key: k.eventStream },
    ];
    const [dead, ...rest] = await Promise.all([
      redis.xlen(k.deadLetterStream),
      ...streams.flatMap(({ key }) => [redis.xlen(key), groupInfo(redis, key)]),
    ]);
    deadLetters += dead as number;
    const oldest: Promise<void>[] = [];
    streams.forEach(({ stream, key }, i) => {
      lengths.set(stream, (lengths.get(stream) ?? 0) + (rest[2 * i] as number));
      for (const g of rest[2 * i + 1] as Awaited<ReturnType<typeof groupInfo>>) {
        const id = `${stream}/${g.name}`;
        const seen = groups.get(id);
        const sum = seen ?? { pending: 0, lag: 0, consumers: g.consumers, oldest: 0 };
        sum.pending += g.pending;
        sum.lag = g.lag === null || sum.lag === null ? null : sum.lag + g.lag;
        sum.consumers = Math.min(sum.consumers, g.consumers);
        groups.set(id, sum);
        if (g.pending === 0) continue;
        oldest.push((async () => {
          sum.oldest = Math.max(sum.oldest, await oldestPendingAgeS(redis, key, g.name, now));
        })());
      }
    });
    await Promise.all(oldest);
  }));
  metrics.deadLetters.set(deadLetters);
  for (const [stream, length] of lengths) metrics.streamLength.set({ stream }, length);
  for (const [id, g] of groups) {
    const [stream, group] = [id.slice(0, id.indexOf("/")), id.slice(id.indexOf("/") + 1)];
    const labels = { stream, group };
    metrics.groupPending.set(labels, g.pending);
    if (g.lag !== null) metrics.groupLag.set(labels, g.lag);
    metrics.groupConsumers.set(labels, g.consumers);
    const at = reported.get(id);
    if (at !== undefined) metrics.groupReportAge.set(labels, Math.max(0, now - at) / 1000);
    metrics.groupOldestPending.set(labels, g.oldest);
  }
}
