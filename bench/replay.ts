/**
 * Replay: how fast the projectors fold the task event log into the views. The first `events`
 * entries of an end-to-end run's event stream are copied (same ids) under a prefix of their own;
 * the projections are built once from them, then reset and rebuilt, both timed.
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
import { round, until } from "./procs.ts";
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
    const buildS = await fold();
    const r0 = performance.now();
    await resetProjections(services.redis, services.keys, projections());
    const resetMs = performance.now() - r0;
    const rebuildS = await fold();
    const result = {
      events: copied,
      build_s: round(buildS, 2),
      build_events_per_s: round(copied / buildS, 0),
      reset_ms: round(resetMs, 0),
      rebuild_s: round(rebuildS, 2),
      events_per_s: round(copied / rebuildS, 0),
    };
    ctx.say(
      `  ${copied} events: build ${result.build_s} s (${result.build_events_per_s}/s), reset ${result.reset_ms} ms, rebuild ${result.rebuild_s} s (${result.events_per_s} events/s)`,
    );
    return result;
  } finally {
    await deletePrefix(ctx.redis, prefix);
    await services.close();
  }
}
