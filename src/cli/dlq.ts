import { parseArgs } from "node:util";
import { deleteDeadLetters, getDeadLetter, listDeadLetters, redrive } from "../replay/reprocess.ts";
import { connect, output, parsePartition, runMain, scopeOf, UsageError } from "./_common.ts";
import { parseCount, redriveProblem } from "./rules.ts";

export const DLQ_USAGE = `Usage: deno task dlq <command> [options]

  list [--count N]          dead letters, oldest first (default 50)
  show ID                   one dead letter, with its request
  redrive ID... | --all     move entries back to the work stream as a new run of their task;
                            each entry is redriven exactly once, even by concurrent operators
      --reason TEXT         why, recorded in the task's timeline (default "dead-letter redrive")
      --by NAME             who asks (default $USER)
      --dry-run             list what would be done and change nothing
  delete ID...              delete dead letters for good (recorded in each task's timeline);
                            takes --reason, --by and --dry-run too
  --partition N             list or redrive only partition N (PARTITIONS > 1; all by default);
                            with several partitions a dead letter's id is p<N>-<ms-seq>
  -h, --help`;

export async function dlqMain(
  args: string[],
  env: Record<string, string | undefined>,
  write: (text: string) => void,
  terminal: boolean,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        count: { type: "string" },
        all: { type: "boolean" },
        reason: { type: "string" },
        by: { type: "string" },
        "dry-run": { type: "boolean" },
        partition: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const [command, ...ids] = parsed.positionals;
  const flags = parsed.values;
  if (flags.help) {
    write(`${DLQ_USAGE}\n`);
    return 0;
  }
  if (!["list", "show", "redrive", "delete"].includes(command ?? "")) {
    throw new UsageError(command ? `Unknown command "${command}"` : "Give a command");
  }
  const count = parseCount(flags.count, 50);
  if (typeof count !== "number") throw new UsageError(`--count ${count.problem}`);
  if (command === "show" && ids.length !== 1) throw new UsageError("show takes one dead-letter id");
  const problem = command === "redrive"
    ? redriveProblem({ ids, all: Boolean(flags.all) }, (f) => f === "all" ? "--all" : f)
    : null;
  if (problem) throw new UsageError(problem);
  if (command === "delete" && ids.length === 0) {
    throw new UsageError("delete takes dead-letter ids");
  }
  const partition = parsePartition(flags.partition);
  const out = output(write, terminal);
  const { services } = await connect(env);
  try {
    const scope = scopeOf(services, partition);
    if (command === "list") {
      const letters = await listDeadLetters(scope, count);
      for (const l of letters) {
        out.line(
          `${l.id}  ${l.task_id || "(no task)"}  ${l.group}  attempts=${l.attempts}  ${l.error}`,
        );
      }
      out.line(`${letters.length} dead letter(s)`);
      return 0;
    }
    if (command === "show") {
      const letter = await getDeadLetter(scope, ids[0]);
      if (!letter) {
        out.line(`No dead letter "${ids[0]}"`);
        return 1;
      }
      let request: unknown = letter.payload;
      try {
        request = JSON.parse(letter.payload);
      } catch { /* shown as text */ }
      out.line(JSON.stringify({ ...letter, payload: request }, null, 2));
      return 0;
    }
    if (command === "delete") {
      const deletions = await deleteDeadLetters(scope, ids, {
        requestedBy: flags.by ?? env.USER ?? "operator",
        reason: flags.reason ?? "dead-letter deleted",
        dryRun: Boolean(flags["dry-run"]),
        now: new Date(),
      });
      for (const d of deletions) {
        out.line(
          d.skipped
            ? `skip      ${d.dead_letter}  ${d.task_id}  (${d.skipped})`
            : `${flags["dry-run"] ? "would delete" : "deleted"} ${d.dead_letter}  ${d.task_id}`,
        );
      }
      const done = deletions.filter((d) => !d.skipped).length;
      out.line(
        flags["dry-run"]
          ? `Dry run: ${done} dead letter(s) would be deleted; nothing changed`
          : `Deleted ${done} dead letter(s), ${deletions.length - done} skipped`,
      );
      return 0;
    }
    const outcomes = await redrive(scope, flags.all ? "all" : ids, {
      requestedBy: flags.by ?? env.USER ?? "operator",
      reason: flags.reason ?? "dead-letter redrive",
      dryRun: Boolean(flags["dry-run"]),
      now: new Date(),
      onProgress: out.progress,
    });
    out.end();
    for (const o of outcomes) {
      out.line(
        o.skipped
          ? `skip      ${o.dead_letter}  ${o.task_id}  (${o.skipped})`
          : `${flags["dry-run"] ? "would run" : "run"} ${o.run} ${o.dead_letter}  ${o.task_id}`,
      );
    }
    const moved = outcomes.filter((o) => !o.skipped).length;
    out.line(
      flags["dry-run"]
        ? `Dry run: ${moved} dead letter(s) would be redriven; nothing changed`
        : `Redrove ${moved} dead letter(s), ${outcomes.length - moved} skipped`,
    );
    return 0;
  } finally {
    await services.close();
  }
}

if (import.meta.main) await runMain(DLQ_USAGE, dlqMain);
