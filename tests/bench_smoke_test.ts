import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { type BenchResult, runBench } from "../bench/run.ts";

/** Pids of this process's children (every thread's list), from /proc. */
function childPids(): number[] {
  const pids: number[] = [];
  for (const task of Deno.readDirSync("/proc/self/task")) {
    const text = Deno.readTextFileSync(`/proc/self/task/${task.name}/children`).trim();
    if (text) pids.push(...text.split(/\s+/).map(Number));
  }
  return pids;
}

const positive = (value: unknown, what: string) =>
  assert.ok(typeof value === "number" && Number.isFinite(value) && value > 0, `${what}: ${value}`);

Deno.test("bench: a small run measures every phase, writes its JSON and leaves nothing behind", async () => {
  const outDir = await Deno.makeTempDir({ prefix: "bench-smoke-" });
  const before = new Set(childPids());
  let result: BenchResult | undefined;
  try {
    result = await runBench({
      phases: ["ingest", "e2e", "replay"],
      connections: [10],
      durationS: 1,
      warmupS: 0,
      threads: 1,
      ablations: false,
      memory: true,
      tasks: 200,
      latenciesMs: [0],
      workers: [1],
      concurrency: 100,
      enqueueConcurrency: 16,
      drainTimeoutS: 30,
      pacedRate: 0,
      freshnessEvery: 10,
      replayEvents: 1_000,
      outDir,
      quiet: true,
    });
    const { writeResult } = await import("../bench/report.ts");
    await writeResult(result, outDir);

    const saved = JSON.parse(await Deno.readTextFile(`${outDir}/latest.json`)) as BenchResult;
    assert.equal(saved.version, 1);
    assert.deepEqual(saved.errors, [], "no phase failed");
    assert.equal(saved.run_prefix, result.run_prefix);
    positive(saved.machine.cores, "cores");
    assert.ok(saved.machine.deno && saved.machine.redis);

    const ingest = saved.ingest!;
    assert.equal(ingest.points.length, 2);
    for (const p of ingest.points) {
      assert.ok(["minimal", "real"].includes(p.handler));
      positive(p.rps, `${p.handler} c=${p.connections} rps`);
      positive(p.p50_ms, "p50");
      assert.ok(p.p99_ms >= p.p50_ms, "p99 ≥ p50");
      assert.equal(p.errors.total, 0, `${p.handler} c=${p.connections} errors`);
      assert.ok(p.stored >= p.requests, `stored ${p.stored} ≥ answered ${p.requests}`);
      positive(p.server.peak_rss_mb, "server RSS");
    }
    for (const r of ingest.ratios) {
      positive(r.rps_ratio, "rps ratio");
      positive(r.p99_ratio, "p99 ratio");
    }
    positive(ingest.memory?.server_peak_rss_mb, "memory: server RSS");
    positive(ingest.memory?.worker_peak_rss_mb, "memory: worker RSS");

    const split = saved.e2e!.runs.find((x) => x.split_projections);
    assert.ok(split, "a run with the projections in their own process");
    assert.equal(split.completed, 200);
    positive(split.projection_lag_ms.count, "lag samples from the projector process");
    const [run] = saved.e2e!.runs;
    assert.equal(run.drained, true);
    assert.equal(run.tasks, 200);
    assert.equal(run.completed, 200);
    assert.equal(run.failed, 0);
    positive(run.tasks_per_s, "tasks/s");
    positive(run.peak_in_flight, "peak in flight");
    positive(run.projection_lag_ms.count, "projection lag samples");
    assert.ok(run.projection_lag_ms.p99 >= run.projection_lag_ms.p50);
    positive(run.status_freshness?.samples, "status freshness samples");
    assert.equal(run.status_freshness?.timed_out, 0);
    assert.equal(saved.e2e!.runs.filter((x) => x.status_freshness).length, 1, "first run only");

    assert.equal(saved.replay!.events, 1_000);
    positive(saved.replay!.events_per_s, "replay events/s");

    assert.ok(saved.targets.length >= 6);
    for (const t of saved.targets) assert.ok(t.pass === null || typeof t.pass === "boolean");
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }

  const redis = new Redis(Deno.env.get("REDIS_URL") || "redis://127.0.0.1:6379");
  try {
    const left: string[] = [];
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(
        cursor,
        "MATCH",
        `{${result!.run_prefix}*`,
        "COUNT",
        10_000,
      );
      cursor = next;
      left.push(...keys);
    } while (cursor !== "0");
    assert.deepEqual(left, [], "the bench deleted its keys");
  } finally {
    redis.disconnect();
  }
  const leftover = childPids().filter((pid) => !before.has(pid));
  assert.deepEqual(leftover, [], "the bench stopped its processes");
});
