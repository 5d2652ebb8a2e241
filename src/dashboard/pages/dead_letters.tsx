/** Page 4, dead letters: list, inspect, and the confirmation and outcome of an action. */
import type { DeadLetter, Deletion, Outcome } from "../../replay/reprocess.ts";
import { maskEmails } from "../../log.ts";
import type { Role } from "../session.ts";
import { BASE, StatusBadge, Time } from "../ui.tsx";

/** One page of the list: oldest first, `count` at a time; `next` is the cursor of the page after. */
export function DeadLettersPage(
  { letters, role, csrf, next, after }: {
    letters: DeadLetter[];
    role: Role;
    csrf: string;
    next: string | null;
    after: string | null;
  },
) {
  const admin = role === "admin";
  return (
    <>
      <h1>Dead letters</h1>
      <p class="muted">
        Work that could not be done after its last attempt, oldest first. Redriving starts a new run
        of the task (recorded as <code>task.reprocess_requested</code>, as{" "}
        <code>deno task dlq redrive</code> does).
      </p>
      {letters.length === 0
        ? (
          <p data-testid="no-dead-letters">
            {after ? "No more dead letters." : "No dead letters."}
          </p>
        )
        : (
          <form method="post" action={`${BASE}/dead-letters/redrive`} id="dead-letters">
            <input type="hidden" name="_csrf" value={csrf} />
            <div class="scroll">
              <table>
                <thead>
                  <tr>
                    {admin && (
                      <th scope="col">
                        <input
                          type="checkbox"
                          id="select-all"
                          data-select-all="ids"
                          aria-label="Select all"
                        />
                      </th>
                    )}
                    <th scope="col">Dead letter</th>
                    <th scope="col">Task</th>
                    <th scope="col">Group</th>
                    <th scope="col" class="num">Attempts</th>
                    <th scope="col">Error</th>
                    <th scope="col">When</th>
                  </tr>
                </thead>
                <tbody>
                  {letters.map((l) => (
                    <tr data-dead-letter={l.id}>
                      {admin && (
                        <td>
                          <input
                            type="checkbox"
                            name="ids"
                            value={l.id}
                            id={`dl-${l.id}`}
                            aria-label={`Select ${l.id}`}
                          />
                        </td>
                      )}
                      <td>
                        <a href={`${BASE}/dead-letters/${l.id}`}>{l.id}</a>
                      </td>
                      <td>
                        {l.task_id
                          ? (
                            <a href={`${BASE}/tasks/${encodeURIComponent(l.task_id)}`}>
                              {l.task_id}
                            </a>
                          )
                          : <span class="muted">(no task)</span>}
                      </td>
                      <td>{l.group}</td>
                      <td class="num">{l.attempts}</td>
                      <td class="error-text">{l.error}</td>
                      <td>
                        <Time at={l.at} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            {admin && (
              <p class="actions">
                <button type="submit" name="action" value="redrive">Redrive selected…</button>
                <button
                  type="submit"
                  name="action"
                  value="delete"
                  formaction={`${BASE}/dead-letters/delete`}
                  class="danger"
                >
                  Delete selected…
                </button>
              </p>
            )}
          </form>
        )}
      <nav class="pager" aria-label="Pages">
        {after && <a href={`${BASE}/dead-letters`}>First page</a>}
        {next && <a href={`${BASE}/dead-letters?after=${encodeURIComponent(next)}`}>Next page</a>}
      </nav>
    </>
  );
}

export function DeadLetterPage(
  { letter, role, csrf }: { letter: DeadLetter; role: Role; csrf: string },
) {
  let request: string = letter.payload;
  try {
    request = JSON.stringify(JSON.parse(letter.payload), null, 2);
  } catch { /* shown as stored */ }
  return (
    <>
      <p class="crumbs">
        <a href={`${BASE}/dead-letters`}>Dead letters</a> /
      </p>
      <h1>
        Dead letter <code>{letter.id}</code>
      </h1>
      <dl class="kv">
        <dt>Task</dt>
        <dd>
          {letter.task_id
            ? <a href={`${BASE}/tasks/${encodeURIComponent(letter.task_id)}`}>{letter.task_id}</a>
            : "(none)"}
        </dd>
        <dt>Group · entry</dt>
        <dd>
          {letter.group} · <code>{letter.entry}</code>
        </dd>
        <dt>Attempts</dt>
        <dd>{letter.attempts}</dd>
        <dt>Error</dt>
        <dd class="error-text">{letter.error}</dd>
        <dt>When</dt>
        <dd>
          <Time at={letter.at} />
        </dd>
      </dl>
      {role === "admin" && (
        <form method="post" action={`${BASE}/dead-letters/redrive`} class="actions">
          <input type="hidden" name="_csrf" value={csrf} />
          <input type="hidden" name="ids" value={letter.id} />
          <button type="submit">Redrive…</button>
          <button type="submit" formaction={`${BASE}/dead-letters/delete`} class="danger">
            Delete…
          </button>
        </form>
      )}
      <h2>Request (e-mail masked)</h2>
      <pre class="json">{maskEmails(request)}</pre>
    </>
  );
}

/** One outcome line of a redrive or reprocess (or what it would do, in a dry run). */
export function OutcomeTable(
  { outcomes, dryRun }: { outcomes: (Outcome & { dead_letter?: string })[]; dryRun: boolean },
) {
  if (!outcomes.length) return <p>Nothing matched.</p>;
  return (
    <div class="scroll">
      <table data-testid="outcomes">
        <thead>
          <tr>
            {outcomes.some((o) => o.dead_letter) && <th scope="col">Dead letter</th>}
            <th scope="col">Task</th>
            <th scope="col">Status</th>
            <th scope="col">{dryRun ? "Would" : "Did"}</th>
          </tr>
        </thead>
        <tbody>
          {outcomes.map((o) => (
            <tr>
              {outcomes.some((x) => x.dead_letter) && <td>{o.dead_letter}</td>}
              <td>
                {o.task_id
                  ? <a href={`${BASE}/tasks/${encodeURIComponent(o.task_id)}`}>{o.task_id}</a>
                  : "–"}
              </td>
              <td>
                <StatusBadge status={o.status} />
              </td>
              <td>{o.skipped ? `skip: ${o.skipped}` : `start run ${o.run}`}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** What deleting dead letters did (or would do). */
export function DeletionTable({ deletions, dryRun }: { deletions: Deletion[]; dryRun: boolean }) {
  return (
    <div class="scroll">
      <table data-testid="deletions">
        <thead>
          <tr>
            <th scope="col">Dead letter</th>
            <th scope="col">Task</th>
            <th scope="col">{dryRun ? "Would" : "Did"}</th>
          </tr>
        </thead>
        <tbody>
          {deletions.map((d) => (
            <tr>
              <td>{d.dead_letter}</td>
              <td>
                {d.task_id
                  ? <a href={`${BASE}/tasks/${encodeURIComponent(d.task_id)}`}>{d.task_id}</a>
                  : "–"}
              </td>
              <td>{d.skipped ? `skip: ${d.skipped}` : dryRun ? "delete" : "deleted"}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
