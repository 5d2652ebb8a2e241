import { ProblemError } from "../errors.ts";
import { verifyWebhook } from "../security/signature.ts";

/** How POST /webhook authenticates its senders. */
export interface WebhookAuth {
  /** Standard Webhooks secrets; several while rotating. */
  secrets: string[];
  /** A static token expected in `tokenHeader` (n8n's Header Auth). */
  token?: string;
  tokenHeader: string;
}

/** Which incoming authentication is on, for /health and the start-up log. */
export function authMode(auth: WebhookAuth): "none" | "signature" | "token" | "signature or token" {
  if (auth.secrets.length && auth.token) return "signature or token";
  if (auth.secrets.length) return "signature";
  return auth.token ? "token" : "none";
}

/** How far a webhook-timestamp may lie from the server's clock, either way (Standard Webhooks). */
export const TIMESTAMP_TOLERANCE_S = 300;
/** A webhook-id as senders write them ("msg_…", UUIDs): visible ASCII, at most 256 characters. */
const WEBHOOK_ID = /^[\x21-\x7e]{1,256}$/;
const WEBHOOK_TIMESTAMP = /^\d{1,15}$/;
const SIGNATURE_ENTRY = /^v1,[A-Za-z0-9+/]+={0,2}$/;

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
    const problem = signatureHeadersProblem(headers, nowS);
    if (problem) throw unauthorized(`Webhook signature rejected: ${problem}`);
    return "signature";
  }
  throw unauthorized("Missing or invalid webhook credentials");
}

/** Why the Standard Webhooks headers cannot verify, whatever the body; null when they may. */
function signatureHeadersProblem(headers: Headers, nowS: number): string | null {
  const id = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp")?.trim();
  const signature = headers.get("webhook-signature")?.trim();
  if (!id || !timestamp || !signature) return "missing-headers";
  if (!WEBHOOK_ID.test(id)) return "bad-id";
  if (!WEBHOOK_TIMESTAMP.test(timestamp)) return "bad-timestamp";
  const timestampS = Number(timestamp);
  if (nowS - timestampS > TIMESTAMP_TOLERANCE_S) return "stale";
  if (timestampS - nowS > TIMESTAMP_TOLERANCE_S) return "future";
  const entries = signature.split(/\s+/);
  if (!entries.some((entry) => SIGNATURE_ENTRY.test(entry))) return "bad-signature";
  return null;
}

/**
 * Checks a request's signature or token. With both configured either one suffices, so signing
 * senders and n8n's Header Auth can share the endpoint. Returns the verified webhook-id, if any.
 */
export async function authenticate(
  auth: WebhookAuth,
  tokenMatches: ((sent: string) => boolean) | null,
  headers: Headers,
  body: string,
  nowS: number,
): Promise<{ webhookId: string | null }> {
  if (authMode(auth) === "none") return { webhookId: null };
  if (tokenMatches) {
    const sent = headers.get(auth.tokenHeader);
    if (sent !== null && tokenMatches(sent)) return { webhookId: null };
  }
  if (auth.secrets.length && headers.has("webhook-signature")) {
    const verdict = await verifyWebhook(auth.secrets, headers, body, nowS);
    if (verdict.ok) return { webhookId: verdict.id };
    throw unauthorized(`Webhook signature rejected: ${verdict.reason}`);
  }
  throw unauthorized("Missing or invalid webhook credentials");
}

export function unauthorized(detail: string): ProblemError {
  return new ProblemError(401, "Unauthorized", detail);
}
