/**
 * The dashboard's request checks: a session for every page, a CSRF token and the admin role for
 * every mutation, and whether the request came over https (for the cookie's Secure flag).
 */
import type { Context, MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import { CSRF_FIELD, CSRF_HEADER, csrfMatches, type Session, SESSION_COOKIE } from "./session.ts";
import type { SessionStore } from "./session.ts";

export type DashboardEnv = { Variables: { session: Session; sessionId: string } };
export type DashboardContext = Context<DashboardEnv>;

/**
 * Whether the browser reached us over https: the request URL's scheme, or, behind a proxy the
 * deployment trusts (TRUST_PROXY, which also lets X-Forwarded-For name the client), the
 * X-Forwarded-Proto it sets.
 */
export function isHttps(c: Context, trustProxy: boolean): boolean {
  if (new URL(c.req.url).protocol === "https:") return true;
  if (!trustProxy) return false;
  const proto = c.req.header("x-forwarded-proto")?.split(",").at(-1)?.trim().toLowerCase();
  return proto === "https";
}

/**
 * Loads the session of the request's cookie. Without a live one, a page request is sent to the
 * sign-in page (303) and anything else (live streams, fragments, mutations) answers 401.
 */
export function requireSession(
  sessions: SessionStore,
  signInPath: string,
): MiddlewareHandler<DashboardEnv> {
  return async function dashboardSession(c, next) {
    const id = getCookie(c, SESSION_COOKIE);
    const session = await sessions.get(id);
    if (!session) {
      const page = c.req.method === "GET" && !c.req.header("x-dashboard-fragment") &&
        !c.req.path.includes("/live/");
      if (page) return c.redirect(signInPath, 303);
      return c.text("Sign in first", 401);
    }
    c.set("session", session);
    c.set("sessionId", id!);
    await next();
  };
}

/** The CSRF token a mutation sent: the header (scripts) or the form field (forms). */
async function sentCsrf(c: Context): Promise<string | null> {
  const header = c.req.header(CSRF_HEADER);
  if (header) return header;
  const type = c.req.header("content-type") ?? "";
  if (!/^(application\/x-www-form-urlencoded|multipart\/form-data)/i.test(type)) return null;
  const form = await c.req.parseBody({ all: true });
  const value = form[CSRF_FIELD];
  return typeof value === "string" ? value : null;
}

/**
 * Every mutation (POST): the session's CSRF token must come with it, and the session must be an
 * admin's; otherwise 403 and nothing happens. `allowRead` lets a read-only session through (only
 * sign-out, which changes nothing but its own session).
 */
export function requireMutation(
  forbidden: (c: DashboardContext, detail: string) => Response | Promise<Response>,
  { allowRead = false } = {},
): MiddlewareHandler<DashboardEnv> {
  return async function dashboardMutation(c, next) {
    const session = c.get("session");
    if (!csrfMatches(session, await sentCsrf(c))) {
      return forbidden(c, "The form's security token is missing or wrong: reload the page");
    }
    if (!allowRead && session.role !== "admin") {
      return forbidden(c, "A read-only session cannot change anything: sign in as an admin");
    }
    await next();
  };
}
