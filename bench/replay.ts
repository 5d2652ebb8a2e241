/**
 * Replay: how fast the projectors fold the task event log into the views. The first `events`
 * entries of an end-to-end run's event stream are copied (same ids) under a prefix of their own;
 * the projections are reset and the projectors alone fold the log, timed until caught up.
 */
import { loadConfig } from "../src/config.ts";
import { createKeys } from "../src/keys.ts";
import { createLogger } from "../src/log.ts";
import { createProjections } from "../src/projections/projections.ts";
import { resetProjections } from "../src/projections/rebuild.ts";
import { waitReady } from "../src/redis/client.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { createServices, startConsumers } from "../src/runtime.ts";
import { type BenchContext, newPrefix } from "./context.ts";
import { round, sampleProcesses, until } from "./procs.ts";
import { copyStream, deletePrefix, REDIS_URL } from "./redis_tools.ts";

export async function replayPhase(ctx: BenchContext, sourcePrefix: string, events: number) {
  const prefix = newPrefix(ctx, "replay");
  const config = loadConfig({ KEY_PREFIX: prefix, REDIS_URL, LOG_LEVEL: "warn" });
  const log = createLogger("warn", { service: "bench-replay" }, (line) => ctx.say(line));
  const services = createServices(config, log);
  try {
    await waitReady(services.redis);
    const copied = await copyStream(
      ctx.redis,
      createKeys(sourcePrefix).eventStream,
      services.keys.eventStream,
      events,
    );
    await deletePrefix(ctx.redis, sourcePrefix);
    const projections = () =>
      createProjections({
        redis: services.redis,
        keys: services.keys,
        viewTtlS: config.VIEW_RETENTION_S,
      });
    const groups = projections().map((p) => (p as { group?: string }).group ?? p.name);
    const caughtUp = async () => {
      const info = await groupInfo(services.redis, services.keys.eventStream);
      return groups.every((name) => {
        const g = info.find((i) => i.name === name);
        return g !== undefined && g.lag === 0 && g.pending === 0;
      });
    };
    /** Starts only the projectors and times them until every projection group is caught up. */
    const fold = async () => {
      const t0 = performance.now();
      const consumers = await startConsumers(config, services, log, {
        worker: false,
        sink: false,
        callbacks: false,
      });
      try {
        await until(caughtUp, "the projections to catch up", {
          timeoutMs: 300_000,
          intervalMs: 10,
          signal: ctx.signal,
        });
        return (performance.now() - t0) / 1000;
      } finally {
        await consumers.stop(1_000);
      }
    };
    // The log is there, the views are not: reset (as a rebuild does), then fold it all, timed.
    const r0 = performance.now();
    await resetProjections(services.redis, services.keys, projections());
    const resetMs = performance.now() - r0;
    const pids: Record<string, number> = { projectors: Deno.pid };
    if (ctx.redisPid) pids.redis = ctx.redisPid;
    const usage = sampleProcesses(pids);
    const rebuildS = await fold().finally(() => usage.stop());
    const cpu = usage.stop();
    const result = {
      events: copied,
      reset_ms: round(resetMs, 0),
      rebuild_s: round(rebuildS, 2),
      events_per_s: round(copied / rebuildS, 0),
      /** CPU share of the process running the projectors (this one) and of Redis, in %. */
      projectors_cpu_pct: cpu.projectors.cpu_pct,
      redis_cpu_pct: cpu.redis?.cpu_pct ?? null,
      /** CPU per event (all three projections), in the projectors' process and in Redis. */
      projectors_cpu_us_per_event: round(
        ((cpu.projectors.cpu_pct ?? 0) * 10_000) / (copied / rebuildS),
        1,
      ),
      redis_cpu_us_per_event: round(((cpu.redis?.cpu_pct ?? 0) * 10_000) / (copied / rebuildS), 1),
    };
    ctx.say(
      `  ${copied} events rebuilt in ${result.rebuild_s} s: ${result.events_per_s} events/s (CPU: projectors ${result.projectors_cpu_pct}%, Redis ${result.redis_cpu_pct}%)`,
    );
    return result;
  } finally {
    await deletePrefix(ctx.redis, prefix);
    await services.close();
  }
}
