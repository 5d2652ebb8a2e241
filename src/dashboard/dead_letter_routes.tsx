/** Page 4's routes: the dead letters, inspected, redriven or deleted (each confirmed first). */
import type { Hono } from "hono";
import { deleteDeadLetters, getDeadLetter, listDeadLetters, redrive } from "../replay/reprocess.ts";
import { redriveProblem } from "../cli/rules.ts";
import { type DashboardEnv, requireMutation } from "./auth.ts";
import { ConfirmPage, replayable } from "./pages/confirm.tsx";
import {
  DeadLetterPage,
  DeadLettersPage,
  DeletionTable,
  OutcomeTable,
} from "./pages/dead_letters.tsx";
import { forbidden, list, notFound, page, text } from "./respond.tsx";
import type { DashboardDeps } from "./routes.tsx";
import { BASE, Notice } from "./ui.tsx";

/** A dead letter's id: `ms-seq`, with several partitions `p<N>-ms-seq`. */
const DEAD_LETTER_ID = /^(p\d+-)?\d+-\d+$/;

/** Dead letters per page. */
const PAGE_SIZE = 50;

export function deadLetterRoutes(
  dash: Hono<DashboardEnv>,
  { partitions, now }: DashboardDeps,
): void {
  // Every partition; with several, a dead letter's id is p<N>-<ms-seq>.
  const store = partitions.scope();
  dash.get("/dead-letters", async (c) => {
    const session = c.get("session");
    const after = c.req.query("after") ?? null;
    if (after !== null && !DEAD_LETTER_ID.test(after)) return notFound(c, "No such page");
    const letters = await listDeadLetters(store, PAGE_SIZE + 1, after ? `(${after}` : "-");
    const shown = letters.slice(0, PAGE_SIZE);
    const next = letters.length > PAGE_SIZE ? shown.at(-1)!.id : null;
    return page(
      c,
      "Dead letters",
      "dead-letters",
      <DeadLettersPage
        letters={shown}
        role={session.role}
        csrf={session.csrf}
        next={next}
        after={after}
      />,
    );
  });

  dash.get("/dead-letters/:id", async (c) => {
    const session = c.get("session");
    const id = c.req.param("id");
    const letter = DEAD_LETTER_ID.test(id) ? await getDeadLetter(store, id) : null;
    if (!letter) return notFound(c, "No such dead letter (redriven or deleted?)");
    return page(
      c,
      `Dead letter ${id}`,
      "dead-letters",
      <DeadLetterPage letter={letter} role={session.role} csrf={session.csrf} />,
    );
  });

  dash.post("/dead-letters/redrive", requireMutation(forbidden), async (c) => {
    const form = await c.req.parseBody({ all: true });
    const ids = list(form.ids).filter((id) => DEAD_LETTER_ID.test(id));
    const problem = redriveProblem({ ids, all: false }, () => "selected dead letters");
    if (problem) {
      return page(
        c,
        "Redrive",
        "dead-letters",
        <Notice kind="error">Select dead letters first</Notice>,
        400,
      );
    }
    const confirmed = form.confirm === "yes";
    const reason = text(form.reason) || "dashboard redrive";
    const outcomes = await redrive(store, ids, {
      requestedBy: "dashboard",
      reason,
      dryRun: !confirmed,
      now: now(),
    });
    if (confirmed) {
      return page(
        c,
        "Redriven",
        "dead-letters",
        <>
          <h1>Redrive</h1>
          <Notice kind="ok">
            Redrove {outcomes.filter((o) => !o.skipped).length} dead letter(s),{" "}
            {outcomes.filter((o) => o.skipped).length} skipped
          </Notice>
          <OutcomeTable outcomes={outcomes} dryRun={false} />
          <p>
            <a href={`${BASE}/dead-letters`}>Back to the dead letters</a>
          </p>
        </>,
      );
    }
    return page(
      c,
      "Redrive",
      "dead-letters",
      <ConfirmPage
        title={`Redrive ${ids.length} dead letter(s)?`}
        action={`${BASE}/dead-letters/redrive`}
        fields={replayable(form).filter(([name]) => name === "ids")}
        csrf={c.get("session").csrf}
        cancel={`${BASE}/dead-letters`}
        reason={reason}
        button="Redrive"
      >
        <OutcomeTable outcomes={outcomes} dryRun />
      </ConfirmPage>,
    );
  });

  dash.post("/dead-letters/delete", requireMutation(forbidden), async (c) => {
    const form = await c.req.parseBody({ all: true });
    const ids = list(form.ids).filter((id) => DEAD_LETTER_ID.test(id));
    if (!ids.length) {
      return page(
        c,
        "Delete",
        "dead-letters",
        <Notice kind="error">Select dead letters first</Notice>,
        400,
      );
    }
    const confirmed = form.confirm === "yes";
    const reason = text(form.reason) || "dead-letter deleted";
    const deletions = await deleteDeadLetters(store, ids, {
      requestedBy: "dashboard",
      reason,
      dryRun: !confirmed,
      now: now(),
    });
    if (confirmed) {
      const done = deletions.filter((d) => !d.skipped).length;
      return page(
        c,
        "Deleted",
        "dead-letters",
        <>
          <h1>Delete</h1>
          <Notice kind="ok">
            Deleted {done} dead letter(s), {deletions.length - done} skipped
          </Notice>
          <DeletionTable deletions={deletions} dryRun={false} />
          <p>
            <a href={`${BASE}/dead-letters`}>Back to the dead letters</a>
          </p>
        </>,
      );
    }
    return page(
      c,
      "Delete",
      "dead-letters",
      <ConfirmPage
        title={`Delete ${ids.length} dead letter(s) for good?`}
        action={`${BASE}/dead-letters/delete`}
        fields={ids.map((id) => ["ids", id])}
        csrf={c.get("session").csrf}
        cancel={`${BASE}/dead-letters`}
        reason={reason}
        button="Delete"
        danger
      >
        <p>
          Their tasks stay failed; they can still be reprocessed (Replay) while their request is in
          the log.
        </p>
        <DeletionTable deletions={deletions} dryRun />
      </ConfirmPage>,
    );
  });
}
