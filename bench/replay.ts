/**
 * Replay: how fast the task event log folds into the views. The first `events` entries of an
 * end-to-end run's event stream are copied (same ids) under a prefix of their own; the live
 * projectors alone fold the log from its start, timed until caught up, then an operator's rebuild
 * (`rebuildProjections`) is timed until its views are swapped in.
 */
import { loadConfig } from "../src/config.ts";
import { createKeys } from "../src/keys.ts";
import { createLogger } from "../src/log.ts";
import { createProjections } from "../src/projections/registry.ts";
import { rebuildProjections, resetProjections } from "../src/projections/rebuild.ts";
import { waitReady } from "../src/redis/client.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { createServices } from "../src/runtime.ts";
import { startConsumers } from "../consumers/kinds.ts";
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
      const consumers = await startConsumers(config, services, log, { run: ["projections"] });
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
    // The log is there, the views are not: reset, then let the live projectors (consumer groups)
    // fold it all from the first event, timed. Then rebuild every view as an operator does
    // (`deno task replay --projections`: bulk fold into the next generation, groups take over,
    // swap), timed the same way.
    const r0 = performance.now();
    await resetProjections(services.redis, services.keys, projections());
    const resetMs = performance.now() - r0;
    const pids: Record<string, number> = { projectors: Deno.pid };
    if (ctx.redisPid) pids.redis = ctx.redisPid;
    const cpuPerEvent = (pct: number | null | undefined, perS: number) =>
      round(((pct ?? 0) * 10_000) / perS, 1);

    let usage = sampleProcesses(pids);
    const foldS = await fold().finally(() => usage.stop());
    let cpu = usage.stop();
    const projectors = {
      seconds: round(foldS, 2),
      events_per_s: round(copied / foldS, 0),
      cpu_us_per_event: cpuPerEvent(cpu.projectors.cpu_pct, copied / foldS),
      redis_cpu_us_per_event: cpuPerEvent(cpu.redis?.cpu_pct, copied / foldS),
    };

    usage = sampleProcesses(pids);
    const rebuilt = await rebuildProjections({
      redis: services.redis,
      redisTarget: REDIS_URL,
      keys: services.keys,
      log,
      viewTtlS: config.VIEW_RETENTION_S,
      owner: "bench",
      signal: ctx.signal,
    }).finally(() => usage.stop());
    cpu = usage.stop();
    const rebuildS = rebuilt.seconds;
    const result = {
      events: copied,
      reset_ms: round(resetMs, 0),
      /** `rebuildProjections`, the operator's rebuild: from the start to the swapped-in views. */
      rebuild_s: round(rebuildS, 2),
      events_per_s: round(copied / rebuildS, 0),
      /** CPU share of the process running the rebuild (this one) and of Redis, in %. */
      projectors_cpu_pct: cpu.projectors.cpu_pct,
      redis_cpu_pct: cpu.redis?.cpu_pct ?? null,
      /** CPU per event (all three projections), in the rebuilding process and in Redis. */
      projectors_cpu_us_per_event: cpuPerEvent(cpu.projectors.cpu_pct, copied / rebuildS),
      redis_cpu_us_per_event: cpuPerEvent(cpu.redis?.cpu_pct, copied / rebuildS),
      /** The live projectors (three consumer groups) folding the same log from its first event. */
      projectors_from_start: projectors,
    };
    ctx.say(
      `  ${copied} events rebuilt in ${result.rebuild_s} s: ${result.events_per_s} events/s (CPU: rebuild ${result.projectors_cpu_pct}%, Redis ${result.redis_cpu_pct}%); live projectors from the start: ${projectors.events_per_s} events/s`,
    );
    return result;
  } finally {
    await deletePrefix(ctx.redis, prefix);
    await services.close();
  }
}
