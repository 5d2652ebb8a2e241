import type { RedisClient } from "../redis/client.ts";
import { readRegistry } from "../consumer_registry.ts";
import { idTime } from "../events.ts";
import type { Keys } from "../keys.ts";
import { groupInfo } from "../redis/streams.ts";
import { CONTENT_TYPE, type Metrics, refreshProcess } from "./registry.ts";

/** What a scrape reads besides the process: Redis, and the SSE clients when the process has any. */
export interface ScrapeSources {
  redis: RedisClient;
  keys: Keys;
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

async function readStreams(metrics: Metrics, { redis, keys, nowMs }: ScrapeSources) {
  const now = nowMs?.() ?? Date.now();
  const streams = [
    { stream: "webhooks", key: keys.webhookStream },
    { stream: "events", key: keys.eventStream },
  ];
  const [deadLetters, registry, ...rest] = await Promise.all([
    redis.xlen(keys.deadLetterStream),
    readRegistry(redis, keys),
    ...streams.flatMap(({ key }) => [redis.xlen(key), groupInfo(redis, key)]),
  ]);
  metrics.deadLetters.set(deadLetters as number);
  // The last report naming each group, whichever kind made it.
  const reported = new Map<string, number>();
  for (const report of registry.values()) {
    for (const ref of report.groups) {
      const id = `${ref.stream}/${ref.group}`;
      reported.set(id, Math.max(reported.get(id) ?? 0, report.at));
    }
  }
  const oldest: Promise<void>[] = [];
  streams.forEach(({ stream, key }, i) => {
    metrics.streamLength.set({ stream }, rest[2 * i] as number);
    for (const g of rest[2 * i + 1] as Awaited<ReturnType<typeof groupInfo>>) {
      const labels = { stream, group: g.name };
      metrics.groupPending.set(labels, g.pending);
      if (g.lag !== null) metrics.groupLag.set(labels, g.lag);
      metrics.groupConsumers.set(labels, g.consumers);
      const at = reported.get(`${stream}/${g.name}`);
      if (at !== undefined) metrics.groupReportAge.set(labels, Math.max(0, now - at) / 1000);
      if (g.pending === 0) {
        metrics.groupOldestPending.set(labels, 0);
        continue;
      }
      oldest.push((async () => {
        const [, first] = await redis.xpending(key, g.name) as [number, string | null];
        const age = first ? Math.max(0, now - idTime(first)) / 1000 : 0;
        metrics.groupOldestPending.set(labels, age);
      })());
    }
  });
  await Promise.all(oldest);
}
