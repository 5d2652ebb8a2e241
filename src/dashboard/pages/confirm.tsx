/**
 * The confirmation step every mutation goes through: what would be done (a dry run of the very
 * function that then does it), a reason to record, and a button that posts the same fields again
 * with `confirm=yes`. Without JavaScript, without dialogs: a page, keyboard-usable.
 */
import type { Child } from "hono/jsx";
import { CSRF_FIELD } from "../session.ts";

export function ConfirmPage(
  { title, action, fields, csrf, cancel, reason, children, button, danger }: {
    title: string;
    action: string;
    /** The request's fields, posted again as they came. */
    fields: [string, string][];
    csrf: string;
    cancel: string;
    /** The default reason recorded with the action; null when the action records none. */
    reason: string | null;
    children: Child;
    button: string;
    danger?: boolean;
  },
) {
  return (
    <>
      <h1>{title}</h1>
      {children}
      <form method="post" action={action} class="confirm" data-testid="confirm">
        <input type="hidden" name={CSRF_FIELD} value={csrf} />
        <input type="hidden" name="confirm" value="yes" />
        {fields.map(([name, value]) => <input type="hidden" name={name} value={value} />)}
        {reason !== null && (
          <p>
            <label for="reason">Reason (recorded with the action)</label>
            <input id="reason" name="reason" value={reason} maxlength={500} required />
          </p>
        )}
        <p class="actions">
          <button type="submit" class={danger ? "danger" : "primary"} autofocus>{button}</button>
          <a href={cancel} class="button">Cancel</a>
        </p>
      </form>
    </>
  );
}

/** The fields of a posted form except the CSRF token, the confirmation and the reason. */
export function replayable(form: Record<string, string | File | (string | File)[]>) {
  const out: [string, string][] = [];
  for (const [name, value] of Object.entries(form)) {
    if (name === CSRF_FIELD || name === "confirm" || name === "reason") continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      if (typeof v === "string") out.push([name, v]);
    }
  }
  return out;
}
