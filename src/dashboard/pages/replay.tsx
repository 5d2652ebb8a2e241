/** Page 5, replay: rebuild the projections (with progress) and reprocess tasks by window/status. */
import type { RebuildJob } from "../rebuild_jobs.ts";
import type { Role } from "../session.ts";
import { BASE, Live, Time } from "../ui.tsx";

function JobRow({ job }: { job: RebuildJob }) {
  const pct = job.total ? Math.min(100, Math.round((job.applied / job.total) * 100)) : 0;
  const state = job.error ? "refused or failed" : job.finished_at ? "done" : "running";
  return (
    <li data-job={job.id} data-state={state}>
      <Time at={job.started_at} /> {job.force && "(forced) "}
      <strong>{state}</strong> {!job.error && (
        <>
          <progress max={100} value={job.finished_at && !job.error ? 100 : pct}>{pct}%</progress>
          {" "}
          {job.applied} / {job.total} events
        </>
      )}
      {job.result && (
        <span class="muted">
          , generation {job.result.from_generation} → {job.result.generation}, {job.result.seconds}
          {" "}
          s ({job.result.events_per_second}/s)
        </span>
      )}
      {job.error && <span class="error-text">{job.error}</span>}
    </li>
  );
}

/** What the page knows of rebuilds: this process's jobs, and the lock any process's holds. */
export interface RebuildState {
  jobs: RebuildJob[];
  /** The rebuild lock is held: a rebuild runs (maybe started by another process or the CLI). */
  elsewhere: boolean;
  /** The view generation readers use now. */
  generation: number;
}

export function RebuildRegion({ jobs, elsewhere, generation }: RebuildState) {
  const mine = jobs.some((j) => !j.finished_at);
  return (
    <>
      {!mine && !elsewhere && <span data-live-idle hidden></span>}
      <p>
        Views in use: generation {generation}.{" "}
        {elsewhere && !mine && <strong>A rebuild is running (started elsewhere).</strong>}
      </p>
      {jobs.length
        ? (
          <ul class="jobs" data-testid="rebuild-jobs">
            {jobs.map((job) => <JobRow job={job} />)}
          </ul>
        )
        : <p class="muted">No rebuild started from this server process yet.</p>}
    </>
  );
}

export function ReplayPage(
  { role, csrf, eventCount, ...state }: RebuildState & {
    role: Role;
    csrf: string;
    eventCount: number;
  },
) {
  const admin = role === "admin";
  const running = state.elsewhere || state.jobs.some((j) => !j.finished_at);
  return (
    <>
      <h1>Replay</h1>
      <section class="panel" aria-labelledby="h-rebuild">
        <h2 id="h-rebuild">Rebuild the projections</h2>
        <p class="muted">
          Folds the whole event log ({eventCount}{" "}
          events) into a new generation of views while the live ones keep answering, then switches
          readers to it (as <code>deno task replay --projections</code>).
        </p>
        {admin && (
          <form method="post" action={`${BASE}/replay/rebuild`} class="actions">
            <input type="hidden" name="_csrf" value={csrf} />
            <label>
              <input type="checkbox" name="force" value="true" />{" "}
              Force (the log was trimmed: views of older tasks are lost)
            </label>
            <button type="submit">Rebuild…</button>
          </form>
        )}
        <Live id="rebuilds" refresh={`${BASE}/replay`} pollMs={running ? 500 : undefined}>
          <RebuildRegion {...state} />
        </Live>
      </section>
      {admin && (
        <section class="panel" aria-labelledby="h-reprocess">
          <h2 id="h-reprocess">Reprocess tasks</h2>
          <p class="muted">
            Starts a new run of each task queued in the window (times in UTC) that has the status;
            tasks still queued or processing are skipped. The next page lists what would be
            reprocessed, and nothing happens until you confirm there.
          </p>
          <form method="post" action={`${BASE}/replay/reprocess`} class="grid-form">
            <input type="hidden" name="_csrf" value={csrf} />
            <p>
              <label for="since">Queued since</label>
              <input type="datetime-local" id="since" name="since" step="1" />
            </p>
            <p>
              <label for="until">Queued until</label>
              <input type="datetime-local" id="until" name="until" step="1" />
            </p>
            <p>
              <label for="status">Status</label>
              <select id="status" name="status">
                <option value="">any</option>
                <option value="failed">failed</option>
                <option value="dead_lettered">dead-lettered</option>
                <option value="completed">completed</option>
              </select>
            </p>
            <p class="actions">
              <button type="submit">Show what would be reprocessed…</button>
            </p>
          </form>
        </section>
      )}
    </>
  );
}
