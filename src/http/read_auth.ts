import type { MiddlewareHandler } from "hono";
import { ProblemError } from "../errors.ts";
import { tokenMatcher } from "../security/signature.ts";
import { bearerToken } from "./auth.ts";

/** How the read routes (`/task/*`, `/videos/*`, `/stats`) authenticate. */
export interface ReadAuthOptions {
  /** READ_TOKEN; without it the read routes are open. */
  token?: string;
  /** READ_TOKEN_HEADER (lower case); `Authorization: Bearer <token>` works too. */
  tokenHeader: string;
}

export interface ReadAuth {
  /** "none": reads are open (READ_TOKEN unset). */
  mode: "none" | "token";
  /** Whether a request may read: the token in the header or as a bearer, or no token set. */
  allows(headers: Headers): boolean;
  /** Middleware answering 401 problem+json to a request that may not read. */
  guard: MiddlewareHandler;
  /**
   * The guard of the SSE streams: also accepts the token as the `access_token` query parameter,
   * for `EventSource`, which cannot set headers. Only the stream routes take it; nothing logs a
   * request's query string.
   */
  streamGuard: MiddlewareHandler;
}

/** The query parameter carrying a token on the SSE routes (`?access_token=`). */
export const ACCESS_TOKEN_PARAM = "access_token";

/** The `access_token` query parameter of a request, if any. */
export function queryToken(url: string): string | null {
  return new URL(url).searchParams.get(ACCESS_TOKEN_PARAM);
}

/**
 * The read token check, in constant time (`tokenMatcher`), like the webhook token: the token in
 * `tokenHeader` or as `Authorization: Bearer <token>`; either is enough.
 */
export function readAuth(options: ReadAuthOptions): ReadAuth {
  const matches = options.token ? tokenMatcher(options.token) : null;
  const allows = (headers: Headers): boolean => {
    if (!matches) return true;
    const sent = headers.get(options.tokenHeader);
    if (sent !== null && matches(sent)) return true;
    const bearer = bearerToken(headers);
    return bearer !== undefined && matches(bearer);
  };
  const refuse = (): never => {
    throw new ProblemError(401, "Unauthorized", "A valid read token is required");
  };
  return {
    mode: matches ? "token" : "none",
    allows,
    guard: async function readTokenAuth(c, next) {
      if (!allows(c.req.raw.headers)) {
        c.header("www-authenticate", 'Bearer realm="read"');
        refuse();
      }
      await next();
    },
    streamGuard: async function readTokenStreamAuth(c, next) {
      if (!allows(c.req.raw.headers)) {
        const sent = queryToken(c.req.url);
        if (sent === null || !matches!(sent)) {
          c.header("www-authenticate", 'Bearer realm="read"');
          refuse();
        }
      }
      await next();
    },
  };
}
