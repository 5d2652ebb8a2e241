import { ProblemError } from "../errors.ts";
import { checkWebhookHeaders, verifyWebhook } from "../security/signature.ts";

/** How POST /webhook authenticates its senders. */
export interface WebhookAuth {
  /** Standard Webhooks secrets; several while rotating. */
  secrets: string[];
  /** A static token expected in `tokenHeader` (n8n's Header Auth). */
  token?: string;
  tokenHeader: string;
}

/** The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any. */
export function bearerToken(headers: Headers): string | undefined {
  return /^Bearer +(.+)$/i.exec(headers.get("authorization") ?? "")?.[1]?.trim();
}

/** Which incoming authentication is on, for /health and the start-up log. */
export function authMode(auth: WebhookAuth): "none" | "signature" | "token" | "signature or token" {
  if (auth.secrets.length && auth.token) return "signature or token";
  if (auth.secrets.length) return "signature";
  return auth.token ? "token" : "none";
}

/**
 * What authentication can decide from the headers alone, before any body is read: "open" (no
 * authentication configured), "token" (the header token matched: authenticated), or "signature"
 * (the Standard Webhooks headers are present, well-formed and inside the time window; the
 * signature itself needs the body, see {@linkcode authenticate}). Anything else throws 401, so a
 * sender without credentials never gets its body read.
 */
export function authenticateHeaders(
  auth: WebhookAuth,
  tokenMatches: ((sent: string) => boolean) | null,
  headers: Headers,
  nowS: number,
): "open" | "token" | "signature" {
  if (authMode(auth) === "none") return "open";
  if (tokenMatches) {
    const sent = headers.get(auth.tokenHeader);
    if (sent !== null && tokenMatches(sent)) return "token";
  }
  if (auth.secrets.length && headers.has("webhook-signature")) {
    const checked = checkWebhookHeaders(headers, nowS);
    if (!checked.ok) throw unauthorized(`Webhook signature rejected: ${checked.reason}`);
    return "signature";
  }
  throw unauthorized("Missing or invalid webhook credentials");
}

/**
 * Verifies the signature over the body of a request whose headers {@linkcode authenticateHeaders}
 * let through as "signature". Returns the verified webhook-id, for the replay check.
 */
export async function verifySignature(
  auth: WebhookAuth,
  headers: Headers,
  body: string,
  nowS: number,
): Promise<string> {
  const verdict = await verifyWebhook(auth.secrets, headers, body, nowS);
  if (verdict.ok) return verdict.id;
  throw unauthorized(`Webhook signature rejected: ${verdict.reason}`);
}

export function unauthorized(detail: string): ProblemError {
  return new ProblemError(401, "Unauthorized", detail);
}
