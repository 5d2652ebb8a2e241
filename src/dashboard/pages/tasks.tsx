/** Page 2, tasks: newest first, filtered, searched, paged by cursor (the task index's query). */
import { ZodError } from "zod";
import {
  DEFAULT_PAGE,
  MAX_PAGE,
  type TaskList,
  type TaskListQuery,
} from "../../projections/task_index/query.ts";
import { indexMember, memberTime } from "../../projections/task_index/view.ts";
import type { TaskView } from "../../projections/task_view/view.ts";
import { BASE, Live, StatusBadge, Time } from "../ui.tsx";

/** The list's filters as the form and the links carry them (all strings, empty = unset). */
export interface TaskFilters {
  q: string;
  field: string;
  status: string;
  /** `datetime-local` values, read as UTC. */
  from: string;
  to: string;
  /** Tasks per page (empty: the index's default). */
  limit: string;
  cursor: string;
}

/**
 * Where a live first page is held: the index member of the last task its first render showed,
 * and whether older tasks followed it. A refresh shows everything from there up (new tasks join
 * at the top) and keeps "Older tasks" pointing below it, so paging on never shows a task twice.
 */
export interface Anchor {
  member: string;
  more: boolean;
}

const member = (t: TaskView) =>
  t.created_at ? indexMember(Date.parse(t.created_at), t.task_id) : null;

/** A `datetime-local` value read as UTC; undefined when empty, null when not a date. */
export function utcDate(value: string): Date | undefined | null {
  if (!value) return undefined;
  const ms = Date.parse(/Z$|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`);
  return Number.isFinite(ms) ? new Date(ms) : null;
}

/**
 * One page of the list for `filters` (a live refresh of the first page when `anchor` is given),
 * or why the filters are not valid.
 */
export async function loadTasks(
  query: (q: TaskListQuery) => Promise<TaskList>,
  filters: TaskFilters,
  anchor: Anchor | null,
): Promise<{ list: TaskList; error?: string; gap?: boolean }> {
  const empty: TaskList = { items: [], next_cursor: null, matched: [] };
  const from = utcDate(filters.from);
  const to = utcDate(filters.to);
  if (from === null || to === null) return { list: empty, error: "A time is not a date" };
  const base: TaskListQuery = {
    q: filters.q || undefined,
    field: filters.field as TaskListQuery["field"],
    status: (filters.status || undefined) as TaskListQuery["status"],
    from: from?.getTime(),
    to: to?.getTime(),
  };
  try {
    if (!anchor || filters.cursor) {
      return {
        list: await query({
          ...base,
          cursor: filters.cursor || undefined,
          limit: filters.limit || undefined,
        }),
      };
    }
    const floor = Math.max(from?.getTime() ?? 0, memberTime(anchor.member));
    const list = await query({ ...base, from: floor, limit: MAX_PAGE });
    const items = list.items.filter((t) => (member(t) ?? "") >= anchor.member);
    // More new tasks than a page holds: the ones between are not shown (a reload shows them).
    const gap = list.next_cursor !== null && list.next_cursor > anchor.member;
    return { list: { ...list, items, next_cursor: anchor.more ? anchor.member : null }, gap };
  } catch (error) {
    if (!(error instanceof ZodError)) throw error;
    const detail = error.issues.map((i) => `${i.path.join(".") || "query"} ${i.message}`);
    return { list: empty, error: detail.join("; ") };
  }
}

const FIELDS = [
  ["any", "anything"],
  ["task_id", "task id"],
  ["video_id", "video id"],
  ["user_id", "user id"],
  ["idempotency_key", "idempotency key"],
  ["prompt", "prompt text"],
] as const;
const STATUSES = ["queued", "processing", "completed", "failed"] as const;

/** The list's URL for `filters`, with `cursor` replaced (null: the first page). */
export function tasksUrl(filters: TaskFilters, cursor: string | null): string {
  const params = new URLSearchParams();
  for (const name of ["q", "field", "status", "from", "to", "limit"] as const) {
    const value = filters[name];
    if (value && !(name === "field" && value === "any")) params.set(name, value);
  }
  if (cursor) params.set("cursor", cursor);
  const query = params.toString();
  return query ? `${BASE}/tasks?${query}` : `${BASE}/tasks`;
}

export function TasksRegion(
  { list, filters, gap = false }: { list: TaskList; filters: TaskFilters; gap?: boolean },
) {
  // A prompt search looks at a bounded number of tasks a page: it may stop short with more to see.
  const short = list.next_cursor !== null &&
    list.items.length < (Number(filters.limit) || DEFAULT_PAGE);
  const searchedTo = short ? new Date(memberTime(list.next_cursor!)).toISOString() : null;
  return (
    <>
      {gap && (
        <p class="notice notice-info" role="status">
          More than {MAX_PAGE} new tasks arrived: <a href={tasksUrl(filters, null)}>reload</a>{" "}
          to page through all of them.
        </p>
      )}
      {searchedTo && (
        <p class="muted">
          Searched back to <Time at={searchedTo} />; older tasks may match too: see "Older tasks".
        </p>
      )}
      {list.items.length === 0
        ? <p data-testid="no-tasks">{searchedTo ? "No match so far." : "No tasks match."}</p>
        : (
          <div class="scroll">
            <table data-testid="tasks">
              <thead>
                <tr>
                  <th scope="col">Created (UTC)</th>
                  <th scope="col">Task</th>
                  <th scope="col">Video</th>
                  <th scope="col">User</th>
                  <th scope="col">Status</th>
                  <th scope="col">Step</th>
                  <th scope="col">Updated</th>
                </tr>
              </thead>
              <tbody>
                {list.items.map((t) => (
                  <tr data-task={t.task_id}>
                    <td>
                      <Time at={t.created_at} />
                    </td>
                    <td>
                      <a href={`${BASE}/tasks/${encodeURIComponent(t.task_id)}`}>
                        <code>{t.task_id}</code>
                      </a>
                    </td>
                    <td>{t.video_id}</td>
                    <td>{t.user_id}</td>
                    <td>
                      <StatusBadge status={t.status} />
                      {t.retrying && <span class="note">retrying</span>}
                    </td>
                    <td>{t.current_step ?? ""}</td>
                    <td>
                      <Time at={t.updated_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      {list.matched.length > 0 && (
        <p class="muted">Matched by {list.matched.join(", ").replaceAll("_", " ")}.</p>
      )}
      <nav class="pager" aria-label="Pages">
        {filters.cursor && <a href={tasksUrl(filters, null)}>Newest</a>}
        {list.next_cursor && (
          <a href={tasksUrl(filters, list.next_cursor)} rel="next" data-testid="older">
            Older tasks
          </a>
        )}
      </nav>
    </>
  );
}

export function TasksPage(
  { list, filters, error }: { list: TaskList; filters: TaskFilters; error?: string },
) {
  const last = list.items.at(-1);
  const anchor = last && member(last);
  const url = tasksUrl(filters, null) +
    (anchor
      ? `${
        filters.q || filters.status || filters.from || filters.to || filters.limit ? "&" : "?"
      }${new URLSearchParams({ anchor, more: list.next_cursor ? "1" : "0" })}`
      : "");
  const region = <TasksRegion list={list} filters={filters} />;
  return (
    <>
      <h1>Tasks</h1>
      <form method="get" action={`${BASE}/tasks`} class="filters" role="search">
        <p class="search">
          <label for="q">Search</label>
          <input
            type="search"
            id="q"
            name="q"
            value={filters.q}
            placeholder="task, video, user id, idempotency key or prompt text"
          />
        </p>
        <p>
          <label for="field">In</label>
          <select id="field" name="field">
            {FIELDS.map(([value, label]) => (
              <option value={value} selected={filters.field === value}>{label}</option>
            ))}
          </select>
        </p>
        <p>
          <label for="status">Status</label>
          <select id="status" name="status">
            <option value="">any</option>
            {STATUSES.map((s) => <option value={s} selected={filters.status === s}>{s}</option>)}
          </select>
        </p>
        <p>
          <label for="from">Created from (UTC)</label>
          <input type="datetime-local" id="from" name="from" value={filters.from} />
        </p>
        <p>
          <label for="to">to (UTC)</label>
          <input type="datetime-local" id="to" name="to" value={filters.to} />
        </p>
        {filters.limit && <input type="hidden" name="limit" value={filters.limit} />}
        <p>
          <button type="submit" class="primary">Search</button>
        </p>
      </form>
      {error && <p class="notice notice-error" role="alert">{error}</p>}
      {filters.cursor
        // An older page stays as it is: new tasks belong on the first page.
        ? <div id="tasks">{region}</div>
        : (
          <Live id="tasks" src={`${BASE}/live/events?status_changes=true`} refresh={url}>
            {region}
          </Live>
        )}
    </>
  );
}
