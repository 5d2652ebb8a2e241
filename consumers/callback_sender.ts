import type { EventStore } from "../src/event_store.ts";
import { event, requestEntryId, type StoredEvent } from "../src/events.ts";
import {
  announcesOutcome,
  decideCallback,
  EXPIRED,
  isFinalOutcome,
} from "../src/decisions/callback.ts";
import { parseRetryAfter, type RetryPolicy } from "../src/retry.ts";
import { outboundReason, RefusedUrlError, safeFetch } from "../src/security/outbound.ts";
import { signWebhook } from "../src/security/signature.ts";
import { parseVideoRequest, type VideoRequest } from "../src/webhook.ts";
import { type Delivery, type Failure, type Handler } from "./delivery.ts";
import { decodeOrSkip } from "./group_consumer.ts";

export interface CallbackSenderOptions {
  store: EventStore;
  policy: RetryPolicy;
  /** Standard Webhooks secret (optionally "whsec_"-prefixed); unsigned when absent. */
  secret?: string;
  timeoutMs: number;
  allowPrivate: boolean;
  /** Host resolution for the SSRF check; tests map names to loopback. */
  resolve?: (host: string) => Promise<string[]>;
  clock: () => Date;
  /** CALLBACK_MAX_AGE_S in ms: an older outcome is recorded as expired, never sent. */
  maxAgeMs: number;
}

const RETRY_STATUS = (status: number) => status === 408 || status === 429 || status >= 500;

/**
 * A failed POST: `message` is a short reason that names no host or address (`timeout`,
 * `HTTP 500`, `refused: private address`), which events carry as `error` and so task views and
 * timelines show; `detail` is the full error, for the log and the admin API only.
 */
interface DeliveryFailure extends Failure {
  status: number | null;
  detail: string;
}

class DeliveryError extends Error {
  constructor(
    readonly reason: string,
    detail: string,
    readonly failure: Omit<DeliveryFailure, "message" | "detail">,
    options?: ErrorOptions,
  ) {
    super(detail, options);
  }
}

/**
 * The "callbacks" group on the task event stream: POSTs each final outcome (completed or failed)
 * to the task's callback_url, signed per Standard Webhooks with a `webhook-id` stable per outcome
 * so receivers can drop repeats. Network errors, 408, 429 (honouring Retry-After) and 5xx retry
 * with backoff up to CALLBACK_MAX_ATTEMPTS; other answers are final. Delivery state is recorded as
 * events of the task; it never changes the task's own status.
 */
export function callbackSender(options: CallbackSenderOptions): Handler {
  return {
    ignores: (entry) => !announcesOutcome(entry.fields),
    async handle(delivery) {
      const outcome = decodeOrSkip(delivery.entry);
      if (!isFinalOutcome(outcome)) {
        await delivery.settle(outcome.task_id, "ack");
        return;
      }
      const history = await options.store.timeline(outcome.task_id);
      const request = await requestOf(options.store, history);
      const decision = decideCallback(outcome, history, request, {
        now: options.clock(),
        maxAgeMs: options.maxAgeMs,
      });
      await send(delivery, outcome, decision, options);
    },
  };
}

/** The task's request (of its latest run), or null once retention trimmed it. */
async function requestOf(store: EventStore, history: StoredEvent[]): Promise<VideoRequest | null> {
  const entry = requestEntryId(history);
  const raw = entry ? await store.payload(entry) : "";
  if (!raw) return null;
  const parsed = parseVideoRequest(JSON.parse(raw));
  return parsed.success ? parsed.data : null;
}

async function send(
  delivery: Delivery,
  outcome: StoredEvent,
  decision: ReturnType<typeof decideCallback>,
  options: CallbackSenderOptions,
): Promise<void> {
  const taskId = outcome.task_id;
  if (decision.type === "acknowledge") {
    await delivery.settle(taskId, "ack");
    return;
  }
  const { webhookId } = decision;
  const log = delivery.log.child({ task_id: taskId });
  if (decision.type === "expire") {
    const detail = `The outcome is ${Math.round(decision.ageMs / 1000)} s old, older than ` +
      `CALLBACK_MAX_AGE_S (${Math.round(options.maxAgeMs / 1000)} s): not sent`;
    await delivery.settle(taskId, "ack", [
      event("callback.failed", delivery.now(), {
        webhook_id: webhookId,
        attempts: decision.attempts,
        error: EXPIRED,
        detail,
      }),
    ]);
    log.warn("Callback expired", { detail });
    return;
  }
  const attempted = (failure: DeliveryFailure, attempt: number, waitMs: number | null) =>
    event("callback.attempted", delivery.now(), {
      webhook_id: webhookId,
      attempt,
      status_code: failure.status,
      error: failure.message,
      retry_in_ms: waitMs,
      detail: failure.detail,
    });
  await delivery.attempts<DeliveryFailure>({
    first: decision.attempt,
    policy: options.policy,
    classify: (error) =>
      error instanceof DeliveryError
        ? {
          message: error.reason,
          detail: error.message,
          ...error.failure,
          // A receiver's Retry-After is honoured up to RETRY_MAX_MS.
          retryAfterMs: error.failure.retryAfterMs === undefined
            ? undefined
            : Math.min(options.policy.maxMs, error.failure.retryAfterMs),
        }
        : {
          message: "internal error",
          detail: `Callback failed: ${(error as Error).message}`,
          retryable: true,
          status: null,
        },
    async run(attempt) {
      const status = await post(decision.url, webhookId, decision.body, delivery, options);
      await delivery.settle(taskId, "ack", [
        event("callback.delivered", delivery.now(), {
          webhook_id: webhookId,
          attempts: attempt,
          status_code: status,
        }),
      ]);
      log.info("Callback delivered", { attempts: attempt, status });
    },
    async retrying(failure, attempt, waitMs) {
      log.info("Callback attempt failed, retrying", {
        attempt,
        reason: failure.message,
        detail: failure.detail,
        retry_in_ms: waitMs,
      });
      await delivery.settle(taskId, "append", [attempted(failure, attempt, waitMs)]);
    },
    async givingUp(failure, attempt) {
      await delivery.settle(taskId, "ack", [
        attempted(failure, attempt, null),
        event("callback.failed", delivery.now(), {
          webhook_id: webhookId,
          attempts: attempt,
          error: failure.message,
          detail: failure.detail,
        }),
      ]);
      log.warn("Callback failed", {
        attempts: attempt,
        reason: failure.message,
        detail: failure.detail,
      });
    },
  });
}

/** One POST; resolves with the 2xx status, throws DeliveryError otherwise. */
async function post(
  url: string,
  webhookId: string,
  body: string,
  delivery: Delivery,
  options: CallbackSenderOptions,
): Promise<number> {
  const { signal } = delivery;
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "user-agent": "video-pipeline-callbacks/1",
    "webhook-id": webhookId,
  };
  if (options.secret) {
    const timestamp = Math.floor(options.clock().getTime() / 1000);
    headers["webhook-timestamp"] = String(timestamp);
    headers["webhook-signature"] = await signWebhook(options.secret, webhookId, timestamp, body);
  }
  let response: Response;
  try {
    response = await safeFetch(url, { method: "POST", headers, body }, {
      allowPrivate: options.allowPrivate,
      resolve: options.resolve,
      timeoutMs: options.timeoutMs,
      signal,
      strictRedirects: true,
    });
  } catch (error) {
    if (signal.aborted) throw error;
    const reason = outboundReason(error);
    if (error instanceof RefusedUrlError) {
      throw new DeliveryError(reason, error.message, { retryable: false, status: null }, {
        cause: error,
      });
    }
    throw new DeliveryError(
      reason,
      `Callback request failed: ${(error as Error).message}`,
      { retryable: true, status: null },
      { cause: error },
    );
  }
  await response.body?.cancel();
  if (response.ok) return response.status;
  throw new DeliveryError(
    `HTTP ${response.status}`,
    `Callback receiver answered ${response.status}`,
    {
      retryable: RETRY_STATUS(response.status),
      status: response.status,
      retryAfterMs: response.status === 429 ? parseRetryAfter(response.headers) : undefined,
    },
  );
}
