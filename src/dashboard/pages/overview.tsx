/** Page 1, the overview: what /stats and /health say, with the groups' oldest pending age. */
import type { RedisClient } from "../../redis/client.ts";
import type { Partitions } from "../../partitions.ts";
import type { HealthCheck, HealthReport } from "../../http/health.ts";
import { readStats, type Stats } from "../../projections/stats/projection.ts";
import { oldestPendingAgeS } from "../../queries.ts";
import { SeriesChart } from "../chart.tsx";
import { BASE, formatAge, formatMs, Live, StatusBadge, Time } from "../ui.tsx";

export interface OverviewData {
  stats: Stats;
  health: HealthReport;
  /** Entries in the dead-letter stream now (redriven ones are gone from it). */
  deadLetters: number;
  /** Per consumer group (same order as stats.consumer_groups): oldest pending entry's age, s. */
  oldestPendingS: number[];
}

/**
 * The overview's figures, each read the way its API reads it: `readStats` (GET /stats), the
 * health check (GET /health with read access), the dead-letter stream's length and the oldest
 * pending age as /metrics reports them.
 */
export async function overviewData(
  { redis, partitions, nowMs, retentionMs, health }: {
    redis: RedisClient;
    partitions: Partitions;
    nowMs: number;
    retentionMs: number;
    health: HealthCheck;
  },
): Promise<OverviewData> {
  const all = partitions.list.map((p) => p.keys);
  const [stats, report, deadLetters] = await Promise.all([
    readStats(redis, all, nowMs, retentionMs),
    // Detailed (problems by name), without the groups: readStats has them.
    health(true, { groups: false }),
    Promise.all(all.map((k) => redis.xlen(k.deadLetterStream)))
      .then((lengths) => lengths.reduce((a, b) => a + b, 0)),
  ]);
  // A group's stream in its partition (consumer_groups name it when there are several).
  const streamKey = (stream: string, partition = 0) =>
    stream === "webhooks" ? all[partition].webhookStream : all[partition].eventStream;
  const oldestPendingS = await Promise.all(
    stats.consumer_groups.map((g) =>
      g.pending
        ? oldestPendingAgeS(redis, streamKey(g.stream, g.partition), g.group, Date.now())
        : 0
    ),
  );
  return { stats, health: report, deadLetters, oldestPendingS };
}

function Figure(
  { label, value, note, href }: { label: string; value: unknown; note?: unknown; href?: string },
) {
  return (
    <div class="figure">
      <dt>{href ? <a href={href}>{label}</a> : label}</dt>
      <dd>
        <span class="value">{value}</span>
        {note !== undefined && <span class="note">{note}</span>}
      </dd>
    </div>
  );
}

/** The part of the overview that the client script refreshes as events arrive. */
export function OverviewRegion({ data }: { data: OverviewData }) {
  const { stats, health } = data;
  const horizon = stats.replay_horizon;
  return (
    <>
      <section aria-labelledby="h-health" class="panel">
        <h2 id="h-health">
          Health <StatusBadge status={health.status} />
        </h2>
        {health.problems.length > 0 && (
          <ul class="problems">
            {health.problems.map((p) => <li>{p}</li>)}
          </ul>
        )}
        <dl class="figures">
          <Figure
            label="Redis"
            value={health.redis.ok ? "up" : "down"}
            note={health.redis.ok ? `${health.redis.latency_ms} ms ping` : undefined}
          />
          <Figure
            label="AOF"
            value={health.redis.aof === null ? "unknown" : health.redis.aof ? "on" : "off"}
            note={health.redis.aof === false ? "acknowledged work is lost on a restart" : undefined}
          />
          <Figure label="Provider mode" value={health.provider_mode} />
          <Figure label="Webhook auth" value={health.webhook_auth} />
          <Figure
            label="Scene sink"
            value={`${health.scene_sink.sink}${health.scene_sink.ok ? "" : " (failing)"}`}
          />
          <Figure
            label="Replay horizon"
            value={formatAge(horizon.stream_retention_s)}
            note={horizon.oldest_event_at
              ? (
                <>
                  oldest event <Time at={horizon.oldest_event_at} />
                </>
              )
              : "no events"}
          />
        </dl>
      </section>

      <section aria-labelledby="h-tasks" class="panel">
        <h2 id="h-tasks">Tasks</h2>
        <dl class="figures" data-testid="task-counts">
          <Figure label="Total" value={stats.total_requests} href={`${BASE}/tasks`} />
          <Figure label="Queued" value={stats.queued_tasks} href={`${BASE}/tasks?status=queued`} />
          <Figure
            label="Processing"
            value={stats.processing_tasks}
            href={`${BASE}/tasks?status=processing`}
          />
          <Figure
            label="Completed"
            value={stats.completed_tasks}
            href={`${BASE}/tasks?status=completed`}
          />
          <Figure label="Failed" value={stats.failed_tasks} href={`${BASE}/tasks?status=failed`} />
          <Figure
            label="Dead letters"
            value={data.deadLetters}
            note={`${stats.dead_lettered_tasks} tasks dead-lettered in all`}
            href={`${BASE}/dead-letters`}
          />
        </dl>
      </section>

      <section aria-labelledby="h-perf" class="panel">
        <h2 id="h-perf">Throughput and processing time</h2>
        <dl class="figures">
          <Figure
            label="Finished, last minute"
            value={stats.throughput_last_minute.finished}
            note={`${stats.throughput_last_minute.per_second}/s`}
          />
          <Figure label="Finished, last hour" value={stats.last_hour.finished} />
          <Figure
            label="p50 · p95, last hour"
            value={formatMs(stats.last_hour.processing_time_ms.p50)}
            note={formatMs(stats.last_hour.processing_time_ms.p95)}
          />
          <Figure
            label="p50 · p95, all time"
            value={formatMs(stats.processing_time_ms.p50)}
            note={formatMs(stats.processing_time_ms.p95)}
          />
          <Figure
            label="Callbacks"
            value={stats.callbacks.delivered}
            note={`delivered, ${stats.callbacks.failed} failed`}
          />
        </dl>
        <SeriesChart points={stats.last_hour.minutes} />
      </section>

      <section aria-labelledby="h-groups" class="panel">
        <h2 id="h-groups">Consumer groups</h2>
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Stream</th>
                <th scope="col">Group</th>
                <th scope="col" class="num">Pending</th>
                <th scope="col" class="num">Lag</th>
                <th scope="col" class="num">Oldest pending</th>
                <th scope="col" class="num">Consumers</th>
                <th scope="col" class="num">Stream length</th>
              </tr>
            </thead>
            <tbody>
              {stats.consumer_groups.map((g, i) => (
                <tr>
                  <td>{g.stream}</td>
                  <td>{g.group}</td>
                  <td class="num">{g.pending}</td>
                  <td class="num">{g.lag ?? "–"}</td>
                  <td class="num">{g.pending ? formatAge(data.oldestPendingS[i]) : "–"}</td>
                  <td class="num">{g.consumers}</td>
                  <td class="num">{g.stream_length}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </>
  );
}

export function OverviewPage({ data }: { data: OverviewData }) {
  return (
    <>
      <h1>Overview</h1>
      <Live
        id="overview"
        src={`${BASE}/live/events?status_changes=true`}
        refresh={BASE}
        pollMs={5_000}
      >
        <OverviewRegion data={data} />
      </Live>
    </>
  );
}
