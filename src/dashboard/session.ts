/**
 * Dashboard sessions: a sign-in exchanges ADMIN_TOKEN (full access) or READ_TOKEN (read-only) for
 * a random session id in an HttpOnly, SameSite=Strict cookie. The session lives in Redis under the
 * SHA-256 of its id (a copy of Redis holds no usable cookie) with a TTL, and sign-out deletes it,
 * so a session ends server-side whatever the browser keeps. Each session has its own CSRF token,
 * which every mutation must send back (form field or header), compared in constant time. A session
 * also records a digest of the token that granted it and is only valid while that token is still
 * the configured one: changing (or removing) a leaked ADMIN_TOKEN or READ_TOKEN ends its sessions.
 */
import { Buffer } from "node:buffer";
import type { RedisClient } from "../redis/client.ts";
import { z } from "zod";
import type { Keys } from "../keys.ts";
import { tokensEqual } from "../security/signature.ts";

export const RoleSchema = z.enum(["admin", "read"]);
/** "admin": everything; "read": viewing only (no mutation buttons, mutations answer 403). */
export type Role = z.infer<typeof RoleSchema>;

const SessionSchema = z.object({
  role: RoleSchema,
  csrf: z.string().min(1),
  created_at: z.string(),
  /** A digest of the token that granted the role: the session ends when that token changes. */
  grant: z.string(),
});
export type Session = z.infer<typeof SessionSchema>;

/** Sign-in attempts per minute from one client address (a burst of as many). */
export const SIGN_IN_PER_MINUTE = 10;

/** The session cookie's name. */
export const SESSION_COOKIE = "vp_dashboard";
/** The form field and the header a mutation carries its CSRF token in. */
export const CSRF_FIELD = "_csrf";
export const CSRF_HEADER = "x-csrf-token";

/** 32 random bytes, base64url: a session id or a CSRF token. */
export function randomToken(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url");
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The role a presented token grants: "admin" for ADMIN_TOKEN, "read" for READ_TOKEN, null for
 * anything else. Both comparisons always run, in constant time (`tokensEqual` hashes first), so
 * the answer's timing says nothing about either token.
 */
export function roleFor(
  sent: string,
  tokens: { admin?: string; read?: string },
): Role | null {
  const admin = tokens.admin !== undefined && tokensEqual(sent, tokens.admin);
  const read = tokens.read !== undefined && tokensEqual(sent, tokens.read);
  if (admin) return "admin";
  return read ? "read" : null;
}

/** Whether a mutation's CSRF token is the session's (constant time; a missing one never is). */
export function csrfMatches(session: Session, sent: string | null | undefined): boolean {
  return typeof sent === "string" && sent.length > 0 && tokensEqual(sent, session.csrf);
}

/** The digest of a granting token kept in a session (never the token itself). */
const grantOf = (token: string | undefined) =>
  token === undefined ? Promise.resolve(null) : sha256Hex(`dashboard-session-grant:${token}`);

/** Sessions in Redis, each with a TTL of `ttlS` from its sign-in. */
export class SessionStore {
  constructor(
    private readonly redis: RedisClient,
    private readonly keys: Keys,
    readonly ttlS: number,
    /** The tokens configured now: a session whose granting token is no longer one is dead. */
    private readonly tokens: { admin?: string; read?: string },
  ) {}

  /** A new session for `role`: its id (for the cookie only) and what is stored. */
  async create(role: Role, now: Date): Promise<{ id: string; session: Session }> {
    const id = randomToken();
    const grant = await grantOf(this.tokens[role]);
    if (grant === null) throw new Error(`No token grants the role "${role}"`);
    const session: Session = { role, csrf: randomToken(), created_at: now.toISOString(), grant };
    const key = this.keys.dashboardSession(await sha256Hex(id));
    await this.redis.set(key, JSON.stringify(session), "EX", this.ttlS);
    return { id, session };
  }

  /** The live session of a cookie's id, or null (unknown, expired, revoked or malformed). */
  async get(id: string | undefined): Promise<Session | null> {
    if (!id || id.length > 100) return null;
    const raw = await this.redis.get(this.keys.dashboardSession(await sha256Hex(id)));
    if (!raw) return null;
    try {
      const parsed = SessionSchema.safeParse(JSON.parse(raw));
      if (!parsed.success) return null;
      const grant = await grantOf(this.tokens[parsed.data.role]);
      return grant !== null && tokensEqual(parsed.data.grant, grant) ? parsed.data : null;
    } catch {
      return null;
    }
  }

  /** Ends a session server-side: its cookie is worthless from now on. */
  async revoke(id: string | undefined): Promise<void> {
    if (!id || id.length > 100) return;
    await this.redis.del(this.keys.dashboardSession(await sha256Hex(id)));
  }
}
