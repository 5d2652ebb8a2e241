import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { RedisClient } from "../redis/client.ts";
import { ProblemError, UnavailableError } from "../errors.ts";
import type { EventStore } from "../event_store.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics/registry.ts";
import type { Partitions } from "../partitions.ts";
import { checkUrlSyntax } from "../security/outbound.ts";
import { rememberWebhookId, tokenMatcher } from "../security/signature.ts";
import {
  boundUnknownFields,
  fieldErrors,
  parseVideoRequest,
  unwrapEnvelope,
  type VideoRequest,
} from "../webhook.ts";
import { authenticateHeaders, unauthorized, verifySignature, type WebhookAuth } from "./auth.ts";
import {
  BodyAbortedError,
  BodyTimeoutError,
  checkJsonHead,
  parseJson,
  readJsonText,
} from "./body.ts";
import type { UploadGuard } from "./guard.ts";
import { fromRedis } from "./problems.ts";

export interface WebhookRouteDeps {
  store: EventStore;
  /** Where a request's task goes: its video's partition (src/partitions.ts). */
  partitions: Partitions;
  redis: RedisClient;
  keys: Keys;
  log: Logger;
  now: () => Date;
  auth: WebhookAuth;
  limits: {
    maxBodyBytes: number;
    maxDepth: number;
    promptMaxChars: number;
    /** JSON bytes of the fields the schema does not know, in all; 0 drops them. */
    unknownFieldsMaxBytes: number;
    /**
     * Per client address, and per user: per user_id when the request passed authentication, per
     * (client address, user_id) when authentication is off. 0 turns rate limiting off.
     */
    ratePerMinute: number;
  };
  /** Body-read caps and deadline; refusals before the body was read close the connection. */
  uploads: UploadGuard;
  /** Accept private and loopback addresses in image_url and callback_url. */
  allowPrivateUrls: boolean;
  /** Take the client address from X-Forwarded-For (behind a trusted proxy only). */
  trustProxy: boolean;
  /**
   * ACK_REPLICAS / ACK_TIMEOUT_MS: answer 202 only once WAIT says this many replicas hold the
   * write; otherwise 503 (the task may exist: the retry with the same idempotency key finds it).
   */
  ack?: { replicas: number; timeoutMs: number };
  /** Counts webhooks by result in webhooks_received_total. */
  metrics?: Metrics;
}

/** A refusal's reason as webhooks_received_total labels it, by its status. */
const REJECTED: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  408: "timeout",
  409: "conflict",
  413: "too_large",
  415: "unsupported_media_type",
  422: "invalid",
  429: "rate_limited",
  503: "unavailable",
};

/** How long a webhook-id is remembered: past the ±5 minute timestamp tolerance on both sides. */
const REPLAY_WINDOW_S = 2 * 300 + 60;

/** The client's address: the connection's, or X-Forwarded-For's last hop with TRUST_PROXY. */
export function clientAddress(c: Context, trustProxy: boolean): string {
  if (trustProxy) {
    // The proxy appends the address it saw; what is left of it came from the client.
    const forwarded = c.req.header("x-forwarded-for")?.split(",").at(-1)?.trim();
    if (forwarded) return forwarded;
  }
  const info = c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined;
  return info?.remoteAddr?.hostname ?? "unknown";
}

/**
 * Field-level checks beyond the schema: configurable prompt length and outbound URL safety. They
 * run on the raw fields too when the schema failed, so one 422 names every bad field.
 */
function policyErrors(request: Record<string, unknown>, deps: WebhookRouteDeps) {
  const errors: { field: string; message: string }[] = [];
  if (typeof request.prompt === "string" && request.prompt.length > deps.limits.promptMaxChars) {
    errors.push({
      field: "prompt",
      message: `must be at most ${deps.limits.promptMaxChars} characters`,
    });
  }
  for (const field of ["image_url", "callback_url"] as const) {
    const url = request[field];
    const problem = typeof url === "string" && url
      ? checkUrlSyntax(url.trim(), deps.allowPrivateUrls)
      : null;
    if (problem) errors.push({ field, message: `refused: ${problem}` });
  }
  return errors;
}

/**
 * POST /webhook: credentials (as far as the headers go), content type, declared size, a body-read
 * slot, the body within its deadline and size, the signature, JSON, schema, policy, rate limits,
 * then one atomic ingest script. Nothing is appended unless every check passed, and no body is
 * read for a sender that lacks credentials.
 */
export function webhookRoute(app: OpenAPIHono, deps: WebhookRouteDeps): void {
  const { partitions, redis, keys, log, limits, uploads } = deps;
  const tokenMatches = deps.auth.token ? tokenMatcher(deps.auth.token) : null;
  const received = deps.metrics?.webhooks;
  app.post("/webhook", async function counted(c) {
    try {
      return await receive(c);
    } catch (error) {
      const status = error instanceof ProblemError ? error.status : 500;
      received?.inc({ result: "rejected", reason: REJECTED[status] ?? "error" });
      throw error;
    }
  });
  async function receive(c: Context) {
    const nowMs = deps.now().getTime();
    const nowS = Math.floor(nowMs / 1000);
    const address = clientAddress(c, deps.trustProxy);
    let text: string;
    let credentials: "open" | "token" | "signature";
    try {
      credentials = authenticateHeaders(deps.auth, tokenMatches, c.req.raw.headers, nowS);
      const declared = checkJsonHead(c.req.raw, limits.maxBodyBytes);
      const release = await uploads.admit(address);
      if (!release) {
        throw new ProblemError(
          503,
          "Service unavailable",
          "Too many uploads at once; retry shortly",
        );
      }
      try {
        text = await readJsonText(c.req.raw, limits.maxBodyBytes, {
          declared,
          timeoutMs: uploads.limits.timeoutMs,
        });
      } finally {
        release();
      }
    } catch (error) {
      // Answered before the body was read to its end: close the connection rather than drain it.
      uploads.closeAfter(c.req.raw);
      if (error instanceof BodyAbortedError) {
        uploads.counters.aborted.add();
        log.debug("Upload aborted by the client", { address, error: String(error.cause) });
      }
      if (!(error instanceof BodyTimeoutError)) throw error;
      uploads.counters.timedOut.add();
      log.debug("Upload cut at the deadline", { address, timeout_ms: error.timeoutMs });
      throw new ProblemError(408, "Request timeout", error.message);
    }
    const webhookId = credentials === "signature"
      ? await verifySignature(deps.auth, c.req.raw.headers, text, nowS)
      : null;
    const raw = parseJson(text, limits.maxDepth);
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new ProblemError(422, "Invalid request", "The body must be a JSON object", {
        errors: [{ field: "(body)", message: "must be a JSON object" }],
      });
    }
    const fields = unwrapEnvelope(raw as Record<string, unknown>);
    const parsed = parseVideoRequest(fields);
    const bounded = parsed.success
      ? boundUnknownFields(parsed.data, limits.unknownFieldsMaxBytes)
      : null;
    const errors = parsed.success
      ? [...policyErrors(parsed.data, deps), ...bounded!.errors]
      : fieldErrors(parsed.error);
    if (!parsed.success) {
      const named = new Set(errors.map((e) => e.field));
      errors.push(...policyErrors(fields, deps).filter((e) => !named.has(e.field)));
      const unknown = boundUnknownFields(fields as VideoRequest, limits.unknownFieldsMaxBytes);
      errors.push(...unknown.errors.filter((e) => !named.has(e.field)));
    }
    if (!parsed.success || errors.length) {
      throw new ProblemError(
        422,
        "Invalid request",
        `Invalid fields: ${[...new Set(errors.map((e) => e.field))].join(", ")}`,
        { errors },
      );
    }
    const request = bounded!.request;
    if (webhookId) {
      const first = await fromRedis(() =>
        rememberWebhookId(redis, keys.webhookId(webhookId), REPLAY_WINDOW_S)
      );
      if (!first) throw unauthorized(`Webhook "${webhookId}" was already received (replay)`);
    }
    const at = deps.now().toISOString();
    const rateLimits = limits.ratePerMinute > 0
      ? {
        buckets: [
          keys.rateLimit("address", address),
          // Unauthenticated, a user's budget is per sender: nobody can spend another's.
          credentials === "open"
            ? keys.senderRateLimit(address, request.user_id)
            : keys.rateLimit("user", request.user_id),
        ],
        perMinute: limits.ratePerMinute,
        nowMs,
      }
      : undefined;
    let outcome;
    try {
      outcome = await partitions.ingest(request, at, { limits: rateLimits, ack: deps.ack });
    } catch (error) {
      outcome = { error };
    }
    if ("error" in outcome || outcome.limited) {
      // Not stored: let the sender's retry of this webhook-id through (not awaited: with Redis
      // down it would hold the 503 back).
      if (webhookId) redis.del(keys.webhookId(webhookId)).catch(() => {});
      if ("error" in outcome) throw new UnavailableError(outcome.error);
      c.header("retry-after", String(outcome.retryAfterS));
      throw new ProblemError(429, "Too many requests", "Rate limit reached; retry later", {
        retry_after_s: outcome.retryAfterS,
      });
    }
    if (outcome.conflict) {
      throw new ProblemError(
        409,
        "Idempotency key reused",
        `Idempotency key "${request.idempotency_key}" was used for another request (task ` +
          `"${outcome.task_id}"); send a new key for a new request`,
        { task_id: outcome.task_id },
      );
    }
    const { task_id, duplicate } = outcome;
    if (deps.ack && deps.ack.replicas > 0 && (outcome.replicas ?? 0) < deps.ack.replicas) {
      // Stored on the primary, not yet on enough replicas: not acknowledged. The retry (same
      // idempotency key, and webhook-id, which is forgotten here) gets the same task.
      if (webhookId) redis.del(keys.webhookId(webhookId)).catch(() => {});
      c.header("retry-after", "1");
      throw new ProblemError(
        503,
        "Not replicated",
        `The write reached ${outcome.replicas ?? 0} of ${deps.ack.replicas} replica(s) within ` +
          `${deps.ack.timeoutMs} ms; retry with the same idempotency key`,
        { task_id },
      );
    }
    received?.inc({ result: duplicate ? "duplicate" : "accepted" });
    // Debug, not info: a log line per request costs about a tenth of the ingest throughput.
    log.debug(duplicate ? "Duplicate webhook" : "Webhook accepted", {
      task_id,
      video_id: request.video_id,
    });
    const statusUrl = `/task/${task_id}`;
    c.header("location", statusUrl);
    return c.json({
      status: "success" as const,
      message: duplicate
        ? "Duplicate request: returning the existing task"
        : "Video request queued",
      task_id,
      video_id: request.video_id,
      timestamp: at,
      duplicate,
      status_url: statusUrl,
    }, 202);
  }
}
