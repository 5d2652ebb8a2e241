/** Page 3, a task: its waterfall, request (e-mail masked), result, error and callback attempts. */
import type { RedisClient } from "../../redis/client.ts";
import type { EventStore } from "../../event_store.ts";
import { requestEntryId, type StoredEvent } from "../../events.ts";
import type { Keys } from "../../keys.ts";
import { maskEmails } from "../../log.ts";
import { readTaskView } from "../../projections/task_view/projection.ts";
import { foldTaskView, type TaskView } from "../../projections/task_view/view.ts";
import type { Role } from "../session.ts";
import { type Bar, waterfall } from "../waterfall.ts";
import { BASE, formatMs, Live, StatusBadge, Time } from "../ui.tsx";

export interface TaskDetail {
  view: TaskView;
  events: StoredEvent[];
  /** The request of the latest run, e-mail masked; null once retention trimmed it. */
  request: Record<string, unknown> | null;
}

/** Operator-only fields (a callback error's `detail`) are for admins; read-only viewers see what
 * GET /task/{id}/events shows. */
function shown(event: StoredEvent, role: Role): StoredEvent {
  if (role === "admin" || !("detail" in event.data)) return event;
  const { detail: _detail, ...data } = event.data as Record<string, unknown>;
  return { ...event, data } as StoredEvent;
}

/** A request with every string's e-mail addresses masked, as the log masks them. */
function masked(value: unknown): unknown {
  if (typeof value === "string") return maskEmails(value);
  if (Array.isArray(value)) return value.map(masked);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, masked(v)]));
  }
  return value;
}

/** A task's detail, or null when unknown: the view (or its fold), the timeline and the request. */
export async function taskDetail(
  { redis, keys, store }: { redis: RedisClient; keys: Keys; store: EventStore },
  taskId: string,
  role: Role,
): Promise<TaskDetail | null> {
  const [projected, history] = await Promise.all([
    readTaskView(redis, keys, taskId),
    store.timeline(taskId),
  ]);
  if (!history.length && !projected) return null;
  // The timeline is at least as new as the projection: fold it when the view lags behind it.
  const folded = history.length ? foldTaskView(taskId, history) : null;
  const view = folded && (!projected || folded.event_count > projected.event_count)
    ? folded
    : projected!;
  const entry = requestEntryId(history);
  const raw = entry ? await store.payload(entry) : "";
  let request: Record<string, unknown> | null = null;
  try {
    request = raw ? masked(JSON.parse(raw)) as Record<string, unknown> : null;
  } catch {
    request = null;
  }
  return { view, events: history.map((e) => shown(e, role)), request };
}

const FINAL = new Set(["completed", "failed"]);

function WaterfallTable({ events }: { events: StoredEvent[] }) {
  const w = waterfall(events);
  const scale = (ms: number) => (ms / w.spanMs) * 100;
  const bar = (b: Bar) => {
    const end = b.endMs ?? w.spanMs;
    return (
      <svg viewBox="0 0 100 10" preserveAspectRatio="none" class="wf" aria-hidden="true">
        <rect
          class={`wf-${b.state}`}
          x={scale(b.startMs).toFixed(2)}
          y="1"
          width={Math.max(0.6, scale(end - b.startMs)).toFixed(2)}
          height="8"
        />
      </svg>
    );
  };
  return (
    <div class="scroll">
      <table class="waterfall" data-testid="waterfall">
        <caption>
          Run {w.run}
          {w.startedAt && (
            <>
              , from <Time at={w.startedAt} />
            </>
          )}
        </caption>
        <thead>
          <tr>
            <th scope="col">Step</th>
            <th scope="col" class="num">Attempt</th>
            <th scope="col" class="num">Start</th>
            <th scope="col" class="num">Duration</th>
            <th scope="col" class="bar-col">Timeline</th>
          </tr>
        </thead>
        <tbody>
          {w.bars.map((b) => (
            <tr class={`wf-row wf-row-${b.state}`} data-step={b.label}>
              <th scope="row">
                {b.label} <span class="muted">{b.state}</span>
              </th>
              <td class="num">{b.attempt ?? "–"}</td>
              <td class="num">+{formatMs(b.startMs)}</td>
              <td class="num">
                {b.endMs === null ? "…" : formatMs(b.endMs - b.startMs)}
                {b.state === "failed" && b.note && <div class="error-text">{b.note}</div>}
              </td>
              <td class="bar-col">{bar(b)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function RequestTable({ request }: { request: Record<string, unknown> | null }) {
  if (!request) {
    return <p class="muted">The request is no longer in the log (stream retention).</p>;
  }
  return (
    <dl class="kv">
      {Object.entries(request).map(([k, v]) => (
        <>
          <dt>{k}</dt>
          <dd>
            {k === "prompt"
              ? <pre class="prompt">{String(v)}</pre>
              : typeof v === "string"
              ? v
              : JSON.stringify(v)}
          </dd>
        </>
      ))}
    </dl>
  );
}

function Result({ view, request }: { view: TaskView; request: Record<string, unknown> | null }) {
  const result = view.result;
  if (!result) return <p class="muted">No result yet.</p>;
  const before = typeof request?.image_url === "string" ? request.image_url : null;
  return (
    <>
      <div class="images">
        <figure>
          {before ? <img src={before} alt="The image as sent" loading="lazy" /> : <p>–</p>}
          <figcaption>Before</figcaption>
        </figure>
        <figure>
          <img src={result.image_url} alt="The image after reframing" loading="lazy" />
          <figcaption>
            After {result.reframed ? "(reframed 9:16)" : "(not reframed: offline provider)"}
          </figcaption>
        </figure>
      </div>
      <p class="muted">
        {result.provider.reframe} · {result.provider.scenes} · video revision{" "}
        {result.video_revision}
      </p>
      <div class="scroll">
        <table data-testid="scenes">
          <caption>Scenes</caption>
          <thead>
            <tr>
              <th scope="col" class="num">#</th>
              <th scope="col">Visual</th>
              <th scope="col">Voiceover</th>
              <th scope="col">Shot</th>
              <th scope="col">Sound</th>
              <th scope="col">Music</th>
              <th scope="col" class="num">Seconds</th>
            </tr>
          </thead>
          <tbody>
            {result.scenes.map((s) => (
              <tr>
                <td class="num">{s.scene_number}</td>
                <td>{s.visual_description}</td>
                <td>{s.voiceover}</td>
                <td>{s.shot_type}</td>
                <td>{s.sound_effects}</td>
                <td>{s.music_direction}</td>
                <td class="num">{s.duration_seconds}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}

function Callbacks({ events }: { events: StoredEvent[] }) {
  const attempts = events.filter((e) => e.type.startsWith("callback."));
  if (!attempts.length) return <p class="muted">No callback attempts.</p>;
  return (
    <div class="scroll">
      <table>
        <thead>
          <tr>
            <th scope="col">When</th>
            <th scope="col">Event</th>
            <th scope="col" class="num">Attempt</th>
            <th scope="col" class="num">Status</th>
            <th scope="col">Error</th>
          </tr>
        </thead>
        <tbody>
          {attempts.map((e) => {
            const d = e.data as Record<string, unknown>;
            return (
              <tr>
                <td>
                  <Time at={e.at} />
                </td>
                <td>{e.type}</td>
                <td class="num">{String(d.attempt ?? d.attempts ?? "")}</td>
                <td class="num">{d.status_code == null ? "–" : String(d.status_code)}</td>
                <td>
                  {d.error == null ? "" : String(d.error)}
                  {typeof d.detail === "string" && <div class="muted">{d.detail}</div>}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/** The live part of the task page: refreshed on each of the task's events until it ends. */
export function TaskRegion(
  { detail, role, csrf }: { detail: TaskDetail; role: Role; csrf: string },
) {
  const { view } = detail;
  const path = `${BASE}/tasks/${encodeURIComponent(view.task_id)}`;
  return (
    <>
      {role === "admin" && FINAL.has(view.status) && (
        <form method="post" action={`${path}/reprocess`} class="actions">
          <input type="hidden" name="_csrf" value={csrf} />
          <button type="submit" id="reprocess">Reprocess…</button>
        </form>
      )}
      <dl class="figures">
        <div class="figure">
          <dt>Status</dt>
          <dd>
            <span data-testid="task-status">
              <StatusBadge status={view.status} />
            </span>
            {view.retrying && <span class="note">retrying</span>}
          </dd>
        </div>
        <div class="figure">
          <dt>Current step</dt>
          <dd>{view.current_step ?? "–"}</dd>
        </div>
        <div class="figure">
          <dt>Run · attempts</dt>
          <dd>
            {view.run} · {view.attempts}
          </dd>
        </div>
        <div class="figure">
          <dt>Created</dt>
          <dd>
            <Time at={view.created_at} />
          </dd>
        </div>
        <div class="figure">
          <dt>Updated</dt>
          <dd>
            <Time at={view.updated_at} />
          </dd>
        </div>
      </dl>
      {view.error && (
        <section class="panel error-panel" aria-labelledby="h-error">
          <h2 id="h-error">Error</h2>
          <p class="error-text">{view.error.message}</p>
          <p class="muted">
            step {view.error.step ?? "–"}, attempt {view.error.attempt},{" "}
            {view.error.retryable ? "retryable" : "not retryable"}
            {view.dead_letter_entry && (
              <>
                {" "}· <a href={`${BASE}/dead-letters/${view.dead_letter_entry}`}>dead letter</a>
              </>
            )}
          </p>
        </section>
      )}
      <section class="panel" aria-labelledby="h-steps">
        <h2 id="h-steps">Steps</h2>
        <WaterfallTable events={detail.events} />
      </section>
      <section class="panel" aria-labelledby="h-request">
        <h2 id="h-request">Request</h2>
        <RequestTable request={detail.request} />
      </section>
      <section class="panel" aria-labelledby="h-result">
        <h2 id="h-result">Result</h2>
        <Result view={view} request={detail.request} />
      </section>
      <section class="panel" aria-labelledby="h-callback">
        <h2 id="h-callback">Callback</h2>
        {view.callback && (
          <p>
            <StatusBadge status={view.callback.state} /> webhook-id{" "}
            <code>{view.callback.webhook_id}</code>
          </p>
        )}
        <Callbacks events={detail.events} />
      </section>
      <section class="panel" aria-labelledby="h-events">
        <details>
          <summary>
            <h2 id="h-events">All {detail.events.length} events</h2>
          </summary>
          <ol class="events">
            {detail.events.map((e) => (
              <li>
                <Time at={e.at} /> <code>{e.type}</code>{" "}
                <span class="muted">{JSON.stringify(e.data).slice(0, 300)}</span>
              </li>
            ))}
          </ol>
        </details>
      </section>
    </>
  );
}

export function TaskPage(
  { detail, role, csrf }: { detail: TaskDetail; role: Role; csrf: string },
) {
  const { view } = detail;
  const path = `${BASE}/tasks/${encodeURIComponent(view.task_id)}`;
  const live = !FINAL.has(view.status);
  return (
    <>
      <p class="crumbs">
        <a href={`${BASE}/tasks`}>Tasks</a> /
      </p>
      <h1>
        Task <code>{view.task_id}</code>
      </h1>
      <p class="muted">
        video <code>{view.video_id}</code> · user <code>{view.user_id}</code>
        {view.is_revision && " · revision"}
      </p>
      <Live
        id="task"
        src={live ? `${BASE}/live/tasks/${encodeURIComponent(view.task_id)}` : undefined}
        refresh={path}
      >
        <TaskRegion detail={detail} role={role} csrf={csrf} />
      </Live>
    </>
  );
}
