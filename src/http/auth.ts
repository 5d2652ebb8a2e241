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
