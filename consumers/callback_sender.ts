import type { Redis } from "ioredis";
import type { EventStore } from "../src/event_store.ts";
import {
  compareIds,
  entryType,
  fieldsToRecord,
  requestEntryId,
  type StoredEvent,
} from "../src/events.ts";
import { CALLBACK_GROUP, GROUP_START } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import { RefusedUrlError, safeFetch } from "../src/security/outbound.ts";
import { signWebhook } from "../src/security/signature.ts";
import type { StreamEntry } from "../src/redis/streams.ts";
import { backoffMs, sleep } from "../src/sleep.ts";
import { VideoRequestSchema } from "../src/webhook.ts";
import { decodeOrSkip, GroupConsumer } from "./group_consumer.ts";
import { type Event, event } from "./task_worker.ts";

export interface CallbackSenderOptions {
  store: EventStore;
  blocking: Redis;
  log: Logger;
  consumer: string;
  concurrency: number;
  claimIdleMs: number;
  /** Standard Webhooks secret (optionally "whsec_"-prefixed); unsigned when absent. */
  secret?: string;
  maxAttempts: number;
  timeoutMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
  allowPrivate: boolean;
  /** Host resolution for the SSRF check; tests map names to loopback. */
  resolve?: (host: string) => Promise<string[]>;
  clock?: () => Date;
}

const OUTCOMES = new Set(["task.completed", "task.failed"]);

/**
 * Whether an event may need a callback: a final outcome whose task has a callback_url (events
 * that do not say are looked up). The rest are acknowledged without reading any history.
 */
function announces(fields: string[]): boolean {
  if (!OUTCOMES.has(entryType(fields) ?? "")) return false;
  try {
    const data = JSON.parse(fieldsToRecord(fields).data ?? "{}");
    return data.callback !== false && (data.final ?? true) !== false;
  } catch {
    return true;
  }
}
const RETRY_STATUS = (status: number) => status === 408 || status === 429 || status >= 500;

class DeliveryError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    readonly status: number | null = null,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The callback body for a task outcome. */
export function callbackBody(outcome: StoredEvent, request: Record<string, unknown>) {
  const completed = outcome.type === "task.completed" ? outcome.data : null;
  return {
    status: completed ? "completed" : "failed",
    task_id: outcome.task_id,
    video_id: request.video_id,
    chat_id: request.chat_id ?? null,
    user_id: request.user_id,
    is_revision: request.is_revision ?? false,
    scenes: completed?.result.scenes ?? [],
    image_url: completed?.result.image_url ?? null,
    error: outcome.type === "task.failed" ? outcome.data.error : null,
  };
}

function retryAfterMs(header: string | null): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/**
 * The "callbacks" group on the task event stream: POSTs each final outcome (completed or failed)
 * to the task's callback_url, signed per Standard Webhooks with a `webhook-id` stable per outcome
 * so receivers can drop repeats. Network errors, 408, 429 (honouring Retry-After) and 5xx retry
 * with backoff up to maxAttempts; other answers are final. Delivery state is recorded as events of
 * the task; it never changes the task's own status.
 */
export class CallbackSender {
  /** Its consumer-group loop: start and stop go through it. */
  readonly consumer: GroupConsumer;
  readonly #now: () => Date;

  constructor(readonly options: CallbackSenderOptions) {
    this.#now = options.clock ?? (() => new Date());
    this.consumer = new GroupConsumer({
      redis: options.store.redis,
      blocking: options.blocking,
      stream: options.store.keys.eventStream,
      group: CALLBACK_GROUP,
      consumer: options.consumer,
      concurrency: options.concurrency,
      claimIdleMs: options.claimIdleMs,
      startAt: GROUP_START[CALLBACK_GROUP],
      log: options.log,
      ignores: (entry) => !announces(entry.fields),
      handle: (entry, signal) => this.#handle(entry, signal),
    });
  }

  async #handle(entry: StreamEntry, signal: AbortSignal): Promise<void> {
    const { store, consumer, maxAttempts } = this.options;
    const outcome = decodeOrSkip(entry);
    const taskId = outcome.task_id;
    const settle = (mode: "append" | "ack", events: Event[]) =>
      store.settle({
        stream: store.keys.eventStream,
        group: CALLBACK_GROUP,
        consumer,
        entryId: entry.id,
        taskId,
        mode,
        at: this.#iso(),
        events,
      });
    if (outcome.type === "task.failed" && !outcome.data.final) {
      await settle("ack", []);
      return;
    }

    const history = await store.timeline(taskId);
    const requestEntry = requestEntryId(history);
    const raw = requestEntry ? await store.payload(requestEntry) : "";
    const request = raw ? VideoRequestSchema.safeParse(JSON.parse(raw)) : null;
    if (!request?.success || !request.data.callback_url) {
      await settle("ack", []);
      return;
    }
    const webhookId = `${taskId}.${entry.id}`;
    const mine = history.filter((e) =>
      compareIds(e.id, entry.id) > 0 && "webhook_id" in e.data && e.data.webhook_id === webhookId
    );
    if (mine.some((e) => e.type === "callback.delivered" || e.type === "callback.failed")) {
      await settle("ack", []);
      return;
    }
    const body = JSON.stringify(callbackBody(outcome, request.data));
    const log = this.options.log.child({ task_id: taskId });
    let attempt = mine.filter((e) => e.type === "callback.attempted").length + 1;
    while (true) {
      try {
        const status = await this.#deliver(request.data.callback_url, webhookId, body, signal);
        await settle("ack", [
          event("callback.delivered", this.#iso(), {
            webhook_id: webhookId,
            attempts: attempt,
            status_code: status,
          }),
        ]);
        log.info("Callback delivered", { attempts: attempt, status });
        return;
      } catch (error) {
        if (signal.aborted) throw error;
        const failure = error instanceof DeliveryError
          ? error
          : new DeliveryError(`Callback failed: ${(error as Error).message}`, true);
        const last = !failure.retryable || attempt >= maxAttempts;
        const wait = last ? null : Math.min(
          this.options.retryMaxMs,
          failure.retryAfterMs ??
            backoffMs(attempt, this.options.retryBaseMs, this.options.retryMaxMs),
        );
        const attempted = event("callback.attempted", this.#iso(), {
          webhook_id: webhookId,
          attempt,
          status_code: failure.status,
          error: failure.message,
          retry_in_ms: wait,
        });
        if (last) {
          await settle("ack", [
            attempted,
            event("callback.failed", this.#iso(), {
              webhook_id: webhookId,
              attempts: attempt,
              error: failure.message,
            }),
          ]);
          log.warn("Callback failed", { attempts: attempt, error: failure.message });
          return;
        }
        await settle("append", [attempted]);
        await sleep(wait!, signal);
        attempt++;
      }
    }
  }

  /** One POST; resolves with the 2xx status, throws DeliveryError otherwise. */
  async #deliver(url: string, webhookId: string, body: string, signal: AbortSignal) {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "video-pipeline-callbacks/1",
      "webhook-id": webhookId,
    };
    if (this.options.secret) {
      const timestamp = Math.floor(this.#now().getTime() / 1000);
      headers["webhook-timestamp"] = String(timestamp);
      headers["webhook-signature"] = await signWebhook(
        this.options.secret,
        webhookId,
        timestamp,
        body,
      );
    }
    let response: Response;
    try {
      response = await safeFetch(url, { method: "POST", headers, body }, {
        allowPrivate: this.options.allowPrivate,
        resolve: this.options.resolve,
        timeoutMs: this.options.timeoutMs,
        signal,
        strictRedirects: true,
      });
    } catch (error) {
      if (signal.aborted) throw error;
      if (error instanceof RefusedUrlError) throw new DeliveryError(error.message, false);
      throw new DeliveryError(`Callback request failed: ${(error as Error).message}`, true);
    }
    await response.body?.cancel();
    if (response.ok) return response.status;
    throw new DeliveryError(
      `Callback receiver answered ${response.status}`,
      RETRY_STATUS(response.status),
      response.status,
      response.status === 429 ? retryAfterMs(response.headers.get("retry-after")) : undefined,
    );
  }

  #iso(): string {
    return this.#now().toISOString();
  }
}
