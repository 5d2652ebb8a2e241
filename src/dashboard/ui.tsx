/** The dashboard's page frame and the small pieces every page uses. Server-rendered Hono JSX. */
import type { Child } from "hono/jsx";
import { raw } from "hono/html";
import { assetPath } from "./assets.ts";
import { CSRF_FIELD, type Session } from "./session.ts";

export const BASE = "/dashboard";

const NAV = [
  { href: `${BASE}`, label: "Overview", id: "overview" },
  { href: `${BASE}/tasks`, label: "Tasks", id: "tasks" },
  { href: `${BASE}/dead-letters`, label: "Dead letters", id: "dead-letters" },
  { href: `${BASE}/replay`, label: "Replay", id: "replay" },
] as const;

export type PageId = (typeof NAV)[number]["id"] | "sign-in";

/** The whole page: head, navigation (with the session's role and sign-out), then `children`. */
export function Layout(
  { title, page, session, children }: {
    title: string;
    page: PageId;
    session: Session | null;
    children: Child;
  },
) {
  return (
    <>
      {raw("<!doctype html>")}
      <html lang="en">
        <head>
          <meta charset="utf-8" />
          <meta name="viewport" content="width=device-width, initial-scale=1" />
          <meta name="color-scheme" content="light dark" />
          <title>{title} · Video pipeline</title>
          <link rel="stylesheet" href={assetPath("dashboard.css")} />
          <link rel="icon" href={assetPath("icon.svg")} type="image/svg+xml" />
          <script src={assetPath("dashboard.js")} defer></script>
        </head>
        <body>
          <a class="skip" href="#main">Skip to content</a>
          <header class="top">
            <span class="brand">Video pipeline</span>
            {session && (
              <nav aria-label="Dashboard">
                {NAV.map((item) => (
                  <a href={item.href} aria-current={item.id === page ? "page" : undefined}>
                    {item.label}
                  </a>
                ))}
              </nav>
            )}
            {session && (
              <form method="post" action={`${BASE}/sign-out`} class="sign-out">
                <span class={`role role-${session.role}`}>
                  {session.role === "admin" ? "admin" : "read-only"}
                </span>
                <Csrf session={session} />
                <button type="submit">Sign out</button>
              </form>
            )}
          </header>
          <main id="main">{children}</main>
        </body>
      </html>
    </>
  );
}

/** The session's CSRF token as a hidden field: every dashboard form that changes anything has it. */
export function Csrf({ session }: { session: Session }) {
  return <input type="hidden" name={CSRF_FIELD} value={session.csrf} />;
}

/**
 * A region the client script keeps current: it re-fetches `refresh` (rendered as this region
 * alone) when an event arrives on the SSE stream `src`, at most a few times a second, and every
 * `pollMs` when given.
 */
export function Live(
  { id, src, refresh, pollMs, children }: {
    id: string;
    src?: string;
    refresh: string;
    pollMs?: number;
    children: Child;
  },
) {
  return (
    <div
      id={id}
      data-live-src={src}
      data-live-refresh={refresh}
      data-live-poll={pollMs === undefined ? undefined : String(pollMs)}
    >
      {children}
    </div>
  );
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge st-${status.replace(/[^a-z_]/g, "")}`}>{status}</span>;
}

/** An ISO time as "2026-12-01 14:26:12", UTC, in a <time> element. */
export function Time({ at }: { at: string | null | undefined }) {
  if (!at) return <span class="muted">–</span>;
  const text = at.replace("T", " ").replace(/\.\d+Z$|Z$/, "");
  return <time datetime={at}>{text}</time>;
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function formatAge(seconds: number): string {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3_600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86_400) return `${(seconds / 3_600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} d`;
}

/** A page's error or notice line. */
export function Notice({ kind, children }: { kind: "error" | "ok" | "info"; children: Child }) {
  return (
    <p class={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>{children}</p>
  );
}
