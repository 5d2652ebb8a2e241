import { Webhook } from "standardwebhooks";

export interface Delivery {
  id: string | null;
  verified: boolean;
  body: Record<string, unknown>;
  status: number;
}

export interface CallbackReceiver {
  /** A callback_url on this receiver, on 127.0.0.1. */
  url: string;
  deliveries: Delivery[];
  /** Statuses to answer next, in order (with optional Retry-After seconds); then 200. */
  script(statuses: (number | { status: number; retryAfterS: number })[]): void;
  close(): Promise<void>;
}

/**
 * Whether a delivery verifies with the reference implementation, as a receiver would check it
 * (wall clock, 5-minute tolerance): independent of the service's own verification code.
 */
function _verifies(secret: string, headers: Headers, body: string): boolean {
  const webhook = secret.startsWith("whsec_")
    ? new Webhook(secret)
    : new Webhook(new TextEncoder().encode(secret), { format: "raw" });
  try {
    webhook.verify(body, Object.fromEntries(headers), { jsonParse: false });
    return true;
  } catch {
    return false;
  }
}

/**
 * A loopback callback receiver that verifies Standard Webhooks signatures with `secret` (when
 * given, with the `standardwebhooks` package) and answers scripted statuses, recording every
 * delivery.
 */
export function startCallbackReceiver(secret?: string): CallbackReceiver {
  const deliveries: Delivery[] = [];
  let queue: (number | { status: number; retryAfterS: number })[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const body = await req.text();
    const verified = secret ? _verifies(secret, req.headers, body) : false;
    const next = queue.shift() ?? 200;
    const status = typeof next === "number" ? next : next.status;
    deliveries.push({
      id: req.headers.get("webhook-id"),
      verified,
      body: JSON.parse(body),
      status,
    });
    const headers: Record<string, string> = {};
    if (typeof next !== "number") headers["retry-after"] = String(next.retryAfterS);
    return new Response(status < 300 ? "ok" : "nope", { status, headers });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/video-callback`,
    deliveries,
    script: (statuses) => (queue = [...statuses]),
    close: () => server.shutdown(),
  };
}
