import { verifyWebhook } from "../../src/security/signature.ts";

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
 * A loopback callback receiver that verifies Standard Webhooks signatures with `secret` (when
 * given) and answers scripted statuses, recording every delivery.
 */
export function startCallbackReceiver(secret?: string): CallbackReceiver {
  const deliveries: Delivery[] = [];
  let queue: (number | { status: number; retryAfterS: number })[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const body = await req.text();
    const verified = secret
      ? (await verifyWebhook([secret], req.headers, body, Math.floor(Date.now() / 1000))).ok
      : false;
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
