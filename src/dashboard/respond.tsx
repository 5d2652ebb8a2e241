/** How the dashboard's handlers answer: a whole page, a refusal, or a live region alone. */
import type { Context } from "hono";
import type { Child } from "hono/jsx";
import type { DashboardContext } from "./auth.ts";
import { Layout, Notice, type PageId } from "./ui.tsx";

/** A page in the frame (navigation, the session's role and sign-out). */
export function page(c: DashboardContext, title: string, id: PageId, body: Child, status = 200) {
  return c.html(
    <Layout title={title} page={id} session={c.get("session")}>
      {body}
    </Layout>,
    status as 200,
  );
}

export function notFound(c: DashboardContext, detail: string) {
  return page(c, "Not found", "overview", <Notice kind="error">{detail}</Notice>, 404);
}

/** A refused mutation: 403, and why. */
export function forbidden(c: DashboardContext, detail: string) {
  return page(c, "Not allowed", "overview", <Notice kind="error">{detail}</Notice>, 403);
}

/** A request for a live region alone (the client script's refresh). */
export const fragment = (c: Context) => c.req.header("x-dashboard-fragment") === "1";

/** A form field as trimmed text ("" when absent or a file). */
export const text = (value: unknown) => typeof value === "string" ? value.trim() : "";

/** A form field that may repeat (checkboxes), as its string values. */
export const list = (value: unknown): string[] =>
  (Array.isArray(value) ? value : value === undefined ? [] : [value]).filter((v): v is string =>
    typeof v === "string"
  );
