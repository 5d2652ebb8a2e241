/** Page 5's routes: rebuild the projections (in the background, with progress), reprocess tasks. */
import type { Hono } from "hono";
import { replayProblem } from "../cli/rules.ts";
import { viewGeneration } from "../queries.ts";
import { reprocessTasks, type StatusFilter } from "../replay/reprocess.ts";
import { type DashboardEnv, requireMutation } from "./auth.ts";
import { ConfirmPage, replayable } from "./pages/confirm.tsx";
import { OutcomeTable } from "./pages/dead_letters.tsx";
import { RebuildRegion, ReplayPage } from "./pages/replay.tsx";
import { utcDate } from "./pages/tasks.tsx";
import { RebuildJobs } from "./rebuild_jobs.ts";
import { forbidden, fragment, page, text } from "./respond.tsx";
import type { DashboardDeps } from "./routes.tsx";
import { BASE, Notice } from "./ui.tsx";

/** The reprocess form's fields, as a refusal names them. */
const FIELD_NAMES: Record<string, string> = {
  since: "“Queued since”",
  until: "“Queued until”",
  status: "a status",
};

export function replayRoutes(dash: Hono<DashboardEnv>, deps: DashboardDeps): void {
  const { redis, partitions, now } = deps;
  const jobs = new RebuildJobs(deps.rebuild, now);
  const all = partitions.list.map((p) => p.keys);
  /** Events in every partition's log. */
  const eventTotal = async () =>
    (await Promise.all(all.map((k) => redis.xlen(k.eventStream)))).reduce((a, b) => a + b, 0);

  dash.get("/replay", async (c) => {
    const session = c.get("session");
    // Whatever process runs it, a rebuild holds the lock; the generation says where readers are.
    // With several partitions: a lock held in any partition, the highest generation.
    const [locks, generations, eventCount] = await Promise.all([
      Promise.all(all.map((k) => redis.exists(k.rebuildLock))),
      Promise.all(all.map((k) => viewGeneration(redis, k))),
      eventTotal(),
    ]);
    const state = {
      jobs: jobs.list(),
      elsewhere: locks.some((locked) => locked === 1),
      generation: Math.max(...generations),
    };
    if (fragment(c)) return c.html(<RebuildRegion {...state} />);
    return page(
      c,
      "Replay",
      "replay",
      <ReplayPage {...state} role={session.role} csrf={session.csrf} eventCount={eventCount} />,
    );
  });

  dash.post("/replay/rebuild", requireMutation(forbidden), async (c) => {
    const form = await c.req.parseBody({ all: true });
    const force = form.force === "true";
    if (form.confirm !== "yes") {
      const events = await eventTotal();
      return page(
        c,
        "Rebuild",
        "replay",
        <ConfirmPage
          title="Rebuild every projection?"
          action={`${BASE}/replay/rebuild`}
          fields={force ? [["force", "true"]] : []}
          csrf={c.get("session").csrf}
          cancel={`${BASE}/replay`}
          reason={null}
          button="Rebuild"
        >
          <p>
            {events} events will be folded into a new generation of views
            {force && ", although retention has trimmed the log (older tasks' views are lost)"}.
          </p>
        </ConfirmPage>,
      );
    }
    jobs.start(force);
    return c.redirect(`${BASE}/replay`, 303);
  });

  dash.post("/replay/reprocess", requireMutation(forbidden), async (c) => {
    const form = await c.req.parseBody({ all: true });
    const since = utcDate(text(form.since));
    const until = utcDate(text(form.until));
    const status = (["failed", "dead_lettered", "completed"] as const).find((s) =>
      s === text(form.status)
    ) as StatusFilter | undefined;
    if (since === null || until === null) {
      return page(
        c,
        "Reprocess",
        "replay",
        <Notice kind="error">A time is not a date</Notice>,
        400,
      );
    }
    const bad = replayProblem(
      { projections: false, taskIds: [], since, until, status },
      (field) => FIELD_NAMES[field] ?? field,
    );
    if (bad) return page(c, "Reprocess", "replay", <Notice kind="error">{bad}</Notice>, 400);
    const confirmed = form.confirm === "yes";
    const reason = text(form.reason) || "dashboard reprocess";
    const outcomes = await reprocessTasks(partitions.scope(), { since, until, status }, {
      requestedBy: "dashboard",
      reason,
      dryRun: !confirmed,
      now: now(),
    });
    const started = outcomes.filter((o) => !o.skipped).length;
    if (confirmed) {
      return page(
        c,
        "Reprocessed",
        "replay",
        <>
          <h1>Reprocess</h1>
          <Notice kind="ok">
            Reprocessing {started} task(s), {outcomes.length - started} skipped
          </Notice>
          <OutcomeTable outcomes={outcomes} dryRun={false} />
        </>,
      );
    }
    return page(
      c,
      "Reprocess",
      "replay",
      <ConfirmPage
        title={`Reprocess ${started} task(s)?`}
        action={`${BASE}/replay/reprocess`}
        fields={replayable(form)}
        csrf={c.get("session").csrf}
        cancel={`${BASE}/replay`}
        reason={reason}
        button="Reprocess"
      >
        <p>Dry run: nothing has changed yet.</p>
        <OutcomeTable outcomes={outcomes} dryRun />
      </ConfirmPage>,
    );
  });

  // A page, not problem+json: a refusal says why; anything else is Redis failing (as the API's
  // fromRedis treats it), answered 503 with Retry-After.
}
