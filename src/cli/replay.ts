import { parseArgs } from "node:util";
import { rebuildPartitions } from "../projections/rebuild.ts";
import { reprocessTasks, type StatusFilter } from "../replay/reprocess.ts";
import { consumerName } from "../runtime.ts";
import { createLogger } from "../log.ts";
import { redisTarget } from "../redis/client.ts";
import {
  connect,
  output,
  parseDate,
  parsePartition,
  runMain,
  scopeOf,
  UsageError,
} from "./_common.ts";
import { type ReplayField, replayProblem } from "./rules.ts";

export const REPLAY_USAGE = `Usage: deno task replay [options]

Rebuild views or reprocess tasks from the event log (Redis settings from the environment).

  --projections          rebuild every view (task status, stats, video scenes) from the task
                         event stream; live views keep answering until the new ones caught up
  --task ID              reprocess this task (repeat, or separate ids with commas)
  --since ISO --until ISO
                         reprocess the tasks queued in this time window
  --status STATUS        only tasks that are failed, dead_lettered or completed
  --reason TEXT          why, recorded in each task's timeline (default "manual replay")
  --by NAME              who asks, recorded too (default $USER)
  --force                with --projections: rebuild even though retention has trimmed the
                         log (views of tasks whose events are gone are lost)
  --partition N          only partition N (PARTITIONS > 1; all by default)
  --dry-run              list what would be done and change nothing
  -h, --help             this text

Tasks still queued or processing are skipped. Each reprocess is a new run of the task: its scenes
are upserted (never duplicated) and its callback carries a new webhook-id.`;

const STATUSES = ["failed", "dead_lettered", "completed"];
const FLAGS: Record<ReplayField, string> = {
  projections: "--projections",
  tasks: "--task",
  since: "--since",
  until: "--until",
  status: "--status",
};

export function parseReplayArgs(args: string[]) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        projections: { type: "boolean" },
        task: { type: "string", multiple: true },
        since: { type: "string" },
        until: { type: "string" },
        status: { type: "string" },
        reason: { type: "string" },
        by: { type: "string" },
        "dry-run": { type: "boolean" },
        force: { type: "boolean" },
        partition: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: false,
    }).values;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const taskIds = (parsed.task ?? []).flatMap((t) => t.split(",")).map((t) => t.trim()).filter(
    Boolean,
  );
  const since = parseDate("since", parsed.since);
  const until = parseDate("until", parsed.until);
  if (parsed.status !== undefined && !STATUSES.includes(parsed.status)) {
    throw new UsageError(`--status must be one of ${STATUSES.join(", ")}, got "${parsed.status}"`);
  }
  const selects = taskIds.length > 0 || since || until || parsed.status;
  const problem = parsed.help ? null : replayProblem(
    { projections: Boolean(parsed.projections), taskIds, since, until, status: parsed.status },
    (field) => FLAGS[field],
  );
  if (problem) throw new UsageError(problem);
  return {
    help: Boolean(parsed.help),
    projections: Boolean(parsed.projections),
    selection: selects
      ? { taskIds, since, until, status: parsed.status as StatusFilter | undefined }
      : null,
    reason: parsed.reason ?? "manual replay",
    by: parsed.by ?? Deno.env.get("USER") ?? "operator",
    dryRun: Boolean(parsed["dry-run"]),
    force: Boolean(parsed.force),
    partition: parsePartition(parsed.partition),
  };
}

export async function replayMain(
  args: string[],
  env: Record<string, string | undefined>,
  write: (text: string) => void,
  terminal: boolean,
): Promise<number> {
  const options = parseReplayArgs(args);
  if (options.help) {
    write(`${REPLAY_USAGE}\n`);
    return 0;
  }
  const out = output(write, terminal);
  const { services, config } = await connect(env);
  try {
    const scope = scopeOf(services, options.partition);
    if (options.projections) {
      if (options.dryRun) {
        let events = 0;
        for (const p of scope.partitions) events += await services.redis.xlen(p.keys.eventStream);
        out.line(`Would rebuild every view from ${events} events (dry run: nothing changed)`);
      } else {
        out.line("Rebuilding projections...");
        // Ctrl-C stops the rebuild cleanly: the half-built generation is dropped.
        const abort = new AbortController();
        const interrupt = () => abort.abort(new Error("Rebuild interrupted"));
        Deno.addSignalListener("SIGINT", interrupt);
        const result = await rebuildPartitions({
          redis: services.redis,
          redisTarget: redisTarget(config),
          log: createLogger("error"),
          viewTtlS: config.VIEW_RETENTION_S,
          owner: `replay-${consumerName()}`,
          onProgress: out.progress,
          signal: abort.signal,
          force: options.force,
        }, scope.partitions.map((p) => p.keys)).finally(() =>
          Deno.removeSignalListener("SIGINT", interrupt)
        );
        out.end();
        out.line(
          `Rebuilt views generation ${result.generation} from ${result.events} events in ${result.seconds} s (${result.events_per_second} events/s)`,
        );
      }
    }
    if (options.selection) {
      const outcomes = await reprocessTasks(scope, options.selection, {
        requestedBy: options.by,
        reason: options.reason,
        dryRun: options.dryRun,
        now: new Date(),
        onProgress: out.progress,
      });
      out.end();
      for (const o of outcomes) {
        out.line(
          o.skipped
            ? `skip      ${o.task_id}  (${o.status}: ${o.skipped})`
            : `${options.dryRun ? "would run" : "run"} ${o.run} ${o.task_id}  (was ${o.status})`,
        );
      }
      const started = outcomes.filter((o) => !o.skipped).length;
      out.line(
        options.dryRun
          ? `Dry run: ${started} task(s) would be reprocessed, ${
            outcomes.length - started
          } skipped; nothing changed`
          : `Reprocessing ${started} task(s), ${outcomes.length - started} skipped`,
      );
    }
    return 0;
  } finally {
    await services.close();
  }
}

if (import.meta.main) await runMain(REPLAY_USAGE, replayMain);
