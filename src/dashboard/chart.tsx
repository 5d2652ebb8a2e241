/**
 * A hand-written SVG chart: tasks finished per minute as bars, p50 and p95 processing time as
 * lines on their own scale. No library: a chart this simple is less code than any library's setup,
 * and it needs no script, so it renders (and refreshes) with the server's HTML.
 */
import type { MinuteStats } from "../projections/stats/projection.ts";
import { formatMs } from "./ui.tsx";

/** One minute of GET /stats's `last_hour`. */
export type SeriesPoint = MinuteStats;

const W = 1000;
const H = 180;
const PAD = { left: 34, right: 56, top: 10, bottom: 20 };

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceMax(max: number): number {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

const hhmm = (minute: string) => minute.slice(11, 16);

export function SeriesChart({ points }: { points: SeriesPoint[] }) {
  if (points.length === 0) return <p class="muted">No data for the last hour.</p>;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const maxFinished = niceMax(Math.max(...points.map((p) => p.finished)));
  const maxMs = niceMax(Math.max(0, ...points.map((p) => p.p95_ms ?? p.p50_ms ?? 0)));
  const slot = plotW / points.length;
  const x = (i: number) => PAD.left + i * slot;
  const yCount = (n: number) => PAD.top + plotH - (n / maxFinished) * plotH;
  const yMs = (ms: number) => PAD.top + plotH - (ms / maxMs) * plotH;
  const line = (pick: (p: SeriesPoint) => number | null) => {
    let d = "";
    let pen = false;
    points.forEach((p, i) => {
      const v = pick(p);
      if (v === null) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${(x(i) + slot / 2).toFixed(1)},${yMs(v).toFixed(1)}`;
      pen = true;
    });
    return d;
  };
  const total = points.reduce((sum, p) => sum + p.finished, 0);
  const last = points.findLast((p) => p.p50_ms !== null);
  const summary = `${total} tasks finished in the last ${points.length} minutes` +
    (last ? `; latest p50 ${formatMs(last.p50_ms)}, p95 ${formatMs(last.p95_ms)}` : "");
  const ticks = [0, Math.floor(points.length / 2), points.length - 1];
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary}>
        <title>{summary}</title>
        <g class="grid">
          {[0, 0.5, 1].map((f) => (
            <line
              x1={PAD.left}
              x2={W - PAD.right}
              y1={PAD.top + plotH * f}
              y2={PAD.top + plotH * f}
            />
          ))}
        </g>
        <g class="bars">
          {points.map((p, i) =>
            p.finished > 0
              ? (
                <rect
                  x={(x(i) + 0.5).toFixed(1)}
                  y={yCount(p.finished).toFixed(1)}
                  width={Math.max(1, slot - 1).toFixed(1)}
                  height={(PAD.top + plotH - yCount(p.finished)).toFixed(1)}
                >
                  <title>{`${hhmm(p.minute)}: ${p.finished} finished`}</title>
                </rect>
              )
              : null
          )}
        </g>
        <path class="p50" d={line((p) => p.p50_ms)} />
        <path class="p95" d={line((p) => p.p95_ms)} />
        {(["p50", "p95"] as const).map((name) => (
          <g class={name}>
            {points.map((p, i) => {
              const v = name === "p50" ? p.p50_ms : p.p95_ms;
              return v === null
                ? null
                : <circle cx={(x(i) + slot / 2).toFixed(1)} cy={yMs(v).toFixed(1)} r="3" />;
            })}
          </g>
        ))}
        <g class="axis">
          <text x={PAD.left - 4} y={PAD.top + 8} text-anchor="end">{maxFinished}</text>
          <text x={PAD.left - 4} y={PAD.top + plotH} text-anchor="end">0</text>
          <text x={W - PAD.right + 4} y={PAD.top + 8}>{formatMs(maxMs)}</text>
          {ticks.map((i) => (
            <text x={x(i) + slot / 2} y={H - 4} text-anchor="middle">{hhmm(points[i].minute)}</text>
          ))}
        </g>
      </svg>
      <figcaption>
        <span class="key key-bars">finished per minute</span>
        <span class="key key-p50">p50</span>
        <span class="key key-p95">p95</span>
      </figcaption>
    </figure>
  );
}
