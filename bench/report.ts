/** The bench's verdicts against the targets, its text table and its JSON files. */
import type { BenchResult } from "./run.ts";

export interface Target {
  name: string;
  target: string;
  value: string;
  pass: boolean | null;
}

/** Each target of issue 6 with the measured value; pass is null when the run did not measure it. */
export function targets(r: BenchResult): Target[] {
  const out: Target[] = [];
  const ingest = r.ingest;
  if (ingest) {
    const top = Math.max(...ingest.points.map((p) => p.connections));
    const ratio = ingest.ratios.find((x) => x.connections === top);
    const real = ingest.points.find((p) => p.handler === "real" && p.connections === top);
    out.push({
      name: `ingest ${top} connections: requests/s vs minimal`,
      target: "≥ 0.75×",
      value: `${ratio?.rps_ratio}× (${real?.rps} req/s)`,
      pass: ratio?.rps_ratio == null ? null : ratio.rps_ratio >= 0.75,
    });
    out.push({
      name: `ingest ${top} connections: errors`,
      target: "0",
      value: String(real?.errors.total),
      pass: real ? real.errors.total === 0 : null,
    });
    out.push({
      name: `ingest ${top} connections: p99 vs minimal`,
      target: "≤ 2×",
      value: `${ratio?.p99_ratio}× (${real?.p99_ms} ms)`,
      pass: ratio?.p99_ratio == null ? null : ratio.p99_ratio <= 2,
    });
    const rss = Math.max(real?.server.peak_rss_mb ?? 0, ingest.memory?.server_peak_rss_mb ?? 0);
    out.push({
      name: `server RSS at ${top} connections`,
      target: "< 200 MB",
      value: `${rss} MB`,
      pass: real ? rss < 200 : null,
    });
  }
  const runs = r.e2e?.runs ?? [];
  const slow = runs.find((x) => x.latency_ms === 500 && x.workers === 1);
  out.push({
    name: "one worker, 500 ms per step: tasks in flight",
    target: "≥ 500",
    value: slow ? String(slow.peak_in_flight) : "not run",
    pass: slow ? slow.peak_in_flight >= 500 : null,
  });
  // The target is the lag at a steady 1,000 tasks/s: the paced run, when it offered that much and
  // the pipeline kept up. With a backlog, events queue behind the work itself (for information).
  const paced = runs.find((x) => x.offered_rate !== null);
  const steady = paced && paced.offered_rate! >= 1_000 && paced.tasks_per_s >= 0.95 * 1_000;
  out.push({
    name: "projection lag p99 at 1,000 tasks/s (steady, paced run)",
    target: "< 50 ms",
    value: paced
      ? `${paced.projection_lag_ms.p99} ms (p50 ${paced.projection_lag_ms.p50} ms) at ${paced.tasks_per_s} tasks/s offered ${paced.offered_rate}/s`
      : "not run",
    pass: paced ? Boolean(steady) && paced.projection_lag_ms.p99 < 50 : null,
  });
  const probed = runs.find((x) => x.status_freshness);
  if (probed) {
    const f = probed.status_freshness!;
    out.push({
      name: "status freshness under the burst: task.completed appended → GET /task/{id} completed",
      target: "p99 < 100 ms",
      value:
        `p99 ${f.p99_ms} ms (p50 ${f.p50_ms}, max ${f.max_ms} ms; ${f.samples} sampled, ${f.timed_out} timed out) ` +
        `at ${probed.tasks_per_s} tasks/s, projection lag p99 ${probed.projection_lag_ms.p99} ms`,
      pass: f.samples > 0 && f.timed_out === 0 && f.p99_ms < 100,
    });
  }
  const fastest = [...runs].filter((x) => x.offered_rate === null && !x.split_projections)
    .sort((a, b) => b.tasks_per_s - a.tasks_per_s)[0];
  if (fastest) {
    out.push({
      name: "projection lag p99 with every task posted at once (backlog)",
      target: "for information: events wait behind the backlog",
      value:
        `${fastest.projection_lag_ms.p99} ms at ${fastest.tasks_per_s} tasks/s (${fastest.workers} worker(s), ${fastest.latency_ms} ms)`,
      pass: null,
    });
  }
  const split = runs.find((x) => x.split_projections);
  if (split) {
    out.push({
      name: "projection lag p99 with a backlog, projections in their own process",
      target: "for information",
      value:
        `${split.projection_lag_ms.p99} ms (p50 ${split.projection_lag_ms.p50} ms) at ${split.tasks_per_s} tasks/s`,
      pass: null,
    });
  }
  out.push({
    name: "projection rebuild",
    target: "≥ 50,000 events/s",
    value: r.replay ? `${r.replay.events_per_s} events/s (${r.replay.events} events)` : "not run",
    pass: r.replay ? r.replay.events_per_s >= 50_000 : null,
  });
  if (r.soak) {
    const s = r.soak.slopes_mb_per_min;
    out.push({
      name: `soak: Redis memory slope at ${r.soak.offered_rate} tasks/s once retention trimmed`,
      target: "< 0.1 MB/min",
      value: `${s.redis_keys_but_streams} MB/min for the service's keys but its streams ` +
        `(streams' peak per trimming cycle: ${
          r.soak.trim_cycles.map((c) => c.peak_streams_mb).join(", ")
        } MB), server RSS ${s.server_rss}, worker RSS ${s.worker_rss} MB/min`,
      pass: s.redis_keys_but_streams === null ? null : s.redis_keys_but_streams < 0.1,
    });
  }
  return out;
}

const pad = (cells: (string | number | null | undefined)[], widths: number[]) =>
  cells.map((c, i) => String(c ?? "–").padStart(widths[i])).join("  ");

/** The result as text tables. */
export function table(r: BenchResult): string {
  const lines: string[] = [];
  const m = r.machine;
  lines.push(
    `Machine: ${m.cores} cores, ${m.cpu_model}, Deno ${m.deno}, Redis ${m.redis}, ${m.os}`,
  );
  if (r.ingest) {
    const i = r.ingest;
    lines.push(
      "",
      `Ingest (${i.generator}, ${i.duration_s} s per point after ${i.warmup_s} s warm-up; real = token auth, validation, idempotency key, rate limits, LOG_LEVEL=${r.options.logLevel})`,
    );
    const w = [6, 20, 8, 8, 8, 7, 7, 9, 11, 10, 9, 9];
    lines.push(
      pad([
        "conns",
        "handler",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "RSS MB",
        "srv CPU%",
        "srv µs/req",
        "redis CPU%",
        "rps ratio",
        "p99 ratio",
      ], w),
    );
    for (const p of [...i.points, ...i.ablations]) {
      const ratio = p.handler === "real"
        ? i.ratios.find((x) => x.connections === p.connections)
        : null;
      const minimal = i.points.find((x) =>
        x.handler === "minimal" && x.connections === p.connections
      );
      const abl = p.handler.startsWith("real-") && minimal;
      lines.push(pad([
        p.connections,
        p.handler,
        p.rps,
        p.p50_ms,
        p.p99_ms,
        p.errors.total,
        p.server.peak_rss_mb,
        p.server.cpu_pct,
        p.server_cpu_us_per_request,
        p.redis_cpu_pct,
        ratio?.rps_ratio ?? (abl ? Math.round((p.rps / minimal.rps) * 100) / 100 : ""),
        ratio?.p99_ratio ?? (abl ? Math.round((p.p99_ms / minimal.p99_ms) * 100) / 100 : ""),
      ], w));
    }
    if (i.memory) {
      lines.push(
        `Memory under ${i.memory.connections} connections with one worker draining: server ${i.memory.server_peak_rss_mb} MB, worker ${i.memory.worker_peak_rss_mb} MB (peak RSS; ${i.memory.rps} req/s, ${i.memory.errors} errors)`,
      );
    }
  }
  if (r.e2e) {
    lines.push("", `End to end (offline providers, WORKER_CONCURRENCY ${r.options.concurrency})`);
    const w = [10, 8, 9, 7, 8, 9, 11, 9, 10, 9, 9, 11, 12];
    lines.push(
      pad([
        "latency ms",
        "workers",
        "offered/s",
        "tasks",
        "drain s",
        "tasks/s",
        "pipeline s",
        "enqueue/s",
        "in flight",
        "lag p50",
        "lag p99",
        "worker MB",
        "CPU ms/task",
      ], w),
    );
    for (const x of r.e2e.runs) {
      lines.push(pad([
        x.latency_ms,
        x.split_projections ? `${x.workers}+proj` : x.workers,
        x.offered_rate ?? "all",
        x.tasks,
        x.drained ? x.drain_s : `>${x.drain_s}`,
        x.tasks_per_s,
        x.pipeline_drain_s,
        x.enqueue_rps,
        x.peak_in_flight,
        x.projection_lag_ms.p50,
        x.projection_lag_ms.p99,
        x.worker_peak_rss_mb,
        x.worker_cpu_ms_per_task,
      ], w));
    }
    for (const x of r.e2e.runs.filter((x) => x.status_freshness)) {
      const f = x.status_freshness!;
      lines.push(
        `Status freshness (${x.latency_ms} ms, ${x.workers} worker(s), every task posted at once): task.completed appended → GET /task/{id} completed p50 ${f.p50_ms} / p99 ${f.p99_ms} / max ${f.max_ms} ms over ${f.samples} sampled tasks (${f.timed_out} timed out, ${f.requests} GETs, ${f.not_completed} not yet completed; the probe read the event p50 ${f.detect_p50_ms} / p99 ${f.detect_p99_ms} ms after its append, then GET answered completed p50 ${f.answer_p50_ms} / p99 ${f.answer_p99_ms} ms later), projection lag p99 ${x.projection_lag_ms.p99} ms`,
      );
    }
  }
  if (r.replay) {
    const x = r.replay;
    lines.push(
      "",
      `Replay: ${x.events} events rebuilt in ${x.rebuild_s} s = ${x.events_per_s} events/s (replay --projections: bulk fold, then the groups, then the swap; CPU per event ${x.projectors_cpu_us_per_event} µs in its process + ${x.redis_cpu_us_per_event} µs in Redis)`,
      ...(x.projectors_from_start
        ? [
          `        the live projectors folding the same log from its first event: ${x.projectors_from_start.events_per_s} events/s (${x.projectors_from_start.cpu_us_per_event} µs + ${x.projectors_from_start.redis_cpu_us_per_event} µs in Redis per event)`,
        ]
        : []),
    );
  }
  if (r.profile?.redis_commands) {
    const c = r.profile.redis_commands as Record<
      string,
      { client_total: number; lua_total: number }
    >;
    const f = (k: string) =>
      c[k] ? `${c[k].client_total} round trips + ${c[k].lua_total} in Lua` : "–";
    lines.push(
      "",
      `Redis commands: per webhook real ${f("per_request_real")}, minimal ${
        f("per_request_minimal")
      }; per task end to end ${f("per_task")}`,
    );
  }
  for (
    const [label, cpu] of [["server", r.profile?.cpu], ["worker", r.profile?.worker_cpu]] as const
  ) {
    if (!cpu) continue;
    const top = cpu.areas.slice(0, 10).map((a) => `${a.name} ${a.pct}%`).join(", ");
    lines.push(`CPU profile of the ${label} (self time by area): ${top}`);
  }
  if (r.peer) lines.push("", ...peerTable(r.peer));
  lines.push("", "Targets:");
  for (const t of r.targets) {
    const verdict = t.pass === null ? "n/a " : t.pass ? "PASS" : "FAIL";
    lines.push(`  ${verdict}  ${t.name}: ${t.value} (target ${t.target})`);
  }
  return lines.join("\n");
}

/** The side-by-side rows: ours and the Hono + BullMQ peer end to end, then the three ingest rows. */
function peerTable(p: NonNullable<BenchResult["peer"]>): string[] {
  if (p.skipped !== null) return [`Side by side with Hono + BullMQ: skipped (${p.skipped})`];
  const s = p.settings;
  const lines = [
    `Side by side with Hono + BullMQ (bullmq ${p.versions.bullmq}, Node ${p.versions.node}): ${s.server_processes} server + ${s.worker_processes} worker process, concurrency ${s.worker_concurrency}, ${s.step_ms} ms steps, ${s.tasks} tasks posted at once over ${s.enqueue_connections} connections`,
  ];
  const w = [6, 7, 8, 8, 10, 10, 12, 10];
  lines.push(
    pad([
      "stack",
      "tasks",
      "drain s",
      "tasks/s",
      "enqueue/s",
      "in flight",
      "CPU ms/task",
      "worker MB",
    ], w),
  );
  for (const x of [p.e2e.ours, p.e2e.peer]) {
    lines.push(pad([
      x.stack,
      x.tasks,
      x.drained ? x.drain_s : `>${x.drain_s}`,
      x.tasks_per_s,
      x.enqueue_rps,
      x.peak_in_flight,
      x.worker_cpu_ms_per_task,
      x.worker_peak_rss_mb,
    ], w));
  }
  lines.push(`end to end ours/peer: ${p.e2e.ratio}×`);
  const i = p.ingest;
  lines.push(
    `Ingest side by side (${i.generator}, ${i.duration_s} s per point after ${i.warmup_s} s warm-up; real = ours with every check on, peer = Hono on Node + zod + BullMQ queue.add)`,
  );
  const wi = [6, 8, 8, 8, 8, 7, 7, 11, 10, 10];
  lines.push(
    pad([
      "conns",
      "handler",
      "req/s",
      "p50 ms",
      "p99 ms",
      "errors",
      "RSS MB",
      "srv µs/req",
      "rps ratio",
      "p99 ratio",
    ], wi),
  );
  for (const x of i.points) {
    const r = i.ratios.find((y) => y.connections === x.connections);
    const vs = x.handler === "real"
      ? r?.ours_vs_minimal
      : x.handler === "peer"
      ? r?.peer_vs_minimal
      : null;
    lines.push(pad([
      x.connections,
      x.handler,
      x.rps,
      x.p50_ms,
      x.p99_ms,
      x.errors.total,
      x.server.peak_rss_mb,
      x.server_cpu_us_per_request,
      vs?.rps ?? "",
      vs?.p99 ?? "",
    ], wi));
  }
  for (const r of i.ratios) {
    lines.push(
      `ingest ${r.connections} connections ours/peer: ${r.ours_vs_peer.rps}× req/s, ${r.ours_vs_peer.p99}× p99 (ratios above: against the minimal handler)`,
    );
  }
  return lines;
}

/** Writes `<dir>/<timestamp>.json` and `<dir>/latest.json`; returns the first path. */
export async function writeResult(r: BenchResult, dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const stamp = r.started_at.replace(/[:.]/g, "-");
  const path = `${dir}/${stamp}.json`;
  // Paths of this machine stay out of the committed results.
  const root = new URL("..", import.meta.url).pathname;
  const text = JSON.stringify(r, null, 2).replaceAll(root, "") + "\n";
  await Deno.writeTextFile(`${path}.tmp`, text);
  await Deno.rename(`${path}.tmp`, path);
  await Deno.writeTextFile(`${dir}/latest.json.tmp`, text);
  await Deno.rename(`${dir}/latest.json.tmp`, `${dir}/latest.json`);
  return path;
}
