/**
 * The argument rules the replay and dead-letter tools share with the admin API, so a request the
 * CLI refuses (exit 2) is refused by HTTP too (400), with the same sentence. `name` spells a field
 * as the caller's user writes it: `--task` on the command line, `"tasks"` in a JSON body.
 */

/** The fields a replay request selects with. */
export type ReplayField = "projections" | "tasks" | "since" | "until" | "status";

export interface ReplaySelection {
  projections: boolean;
  taskIds: readonly string[];
  since?: Date;
  until?: Date;
  status?: string;
}

/** Why a replay request cannot run as given; null when it can. */
export function replayProblem(
  request: ReplaySelection,
  name: (field: ReplayField) => string,
): string | null {
  const { since, until } = request;
  if (since && until && since > until) {
    return `${name("since")} must not be after ${name("until")}`;
  }
  const selects = request.taskIds.length > 0 || since || until || request.status;
  if (!request.projections && !selects) {
    return `Nothing to do: give ${name("projections")}, ${name("tasks")}, ${name("since")}/${
      name("until")
    } or ${name("status")}`;
  }
  if (request.taskIds.length && (since || until)) {
    return `Give either ${name("tasks")} or ${name("since")}/${name("until")}, not both`;
  }
  return null;
}

/** Why a redrive cannot run as given (ids and all are exclusive, one is needed); null when it can. */
export function redriveProblem(
  request: { ids: readonly string[]; all: boolean },
  name: (field: "ids" | "all") => string,
): string | null {
  if (!request.all && request.ids.length === 0) {
    return `redrive takes dead-letter ${name("ids")} or ${name("all")}`;
  }
  if (request.all && request.ids.length) {
    return `Give either ${name("ids")} or ${name("all")}, not both`;
  }
  return null;
}

/** How many dead letters one listing returns at most over HTTP (the CLI has no cap). */
export const MAX_LIST_COUNT = 1_000;

/**
 * A dead-letter listing's count: a positive integer (at most `max`), or the fallback when absent;
 * a string saying why otherwise.
 */
export function parseCount(
  raw: string | undefined,
  fallback: number,
  max = Infinity,
): number | { problem: string } {
  if (raw === undefined) return fallback;
  const count = /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(count) || count < 1) {
    return { problem: `must be a positive integer, got "${raw}"` };
  }
  if (count > max) return { problem: `must be at most ${max}, got "${raw}"` };
  return count;
}
