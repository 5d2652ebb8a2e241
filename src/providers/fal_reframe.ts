import { createFalClient, type RequestMiddleware } from "@fal-ai/client";
import { z } from "zod";
import type { Config } from "../config.ts";
import { RetryableError, UnrecoverableError } from "../errors.ts";
import type { Reframer } from "../pipeline/steps/reframe.ts";
import { parseRetryAfter } from "../retry.ts";
import { sleep } from "../sleep.ts";

export interface FalReframeOptions {
  /** FAL_KEY, sent as `Authorization: Key <key>` by the client. */
  key: string;
  /** The fal endpoint, e.g. "fal-ai/luma-photon/reframe". */
  model: string;
  /** e.g. "9:16". */
  aspectRatio: string;
  /** FAL_BASE_URL: replaces scheme and host of every fal URL (queue.fal.run, fal.run, *.fal.ai). */
  baseUrl?: string;
  /** Budget for one call (submit, polls and result); on timeout the fal request is cancelled. */
  timeoutMs: number;
  /** Pause between status polls; default 1000. */
  pollIntervalMs?: number;
}

export interface ReframeResult {
  image_url: string;
  width: number | null;
  height: number | null;
  request_id: string;
  model: string;
  aspect_ratio: string;
}

export type FalReframe = (
  input: { imageUrl: string; signal: AbortSignal },
) => Promise<ReframeResult>;

const SubmitSchema = z.object({ request_id: z.string().min(1) });

const StatusSchema = z.object({
  status: z.string(),
  error: z.string().nullish(),
  error_type: z.string().nullish(),
});

const ResultSchema = z.object({
  images: z.array(z.object({
    url: z.url(),
    width: z.number().int().positive().nullish(),
    height: z.number().int().positive().nullish(),
  })),
});

/** Bounds the best-effort cancel sent when a call is abandoned, so shutdown never waits long. */
const CANCEL_BUDGET_MS = 2_000;

/** A non-2xx answer from fal, thrown by our fetch so the client's own retry loop skips it. */
class FalHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly retryAfterMs: number | undefined,
  ) {
    super(`fal answered ${status}`);
  }
}

/**
 * fal could not be reached. The transport error is kept off `cause` on purpose: the client walks
 * the cause chain for codes like ECONNREFUSED and would retry with sleeps our signal cannot cut.
 */
class FalTransportError extends Error {
  constructor(readonly url: string, readonly transportError: unknown) {
    super("fal could not be reached");
  }
}

/**
 * Reframes a product image with a fal model through the queue: submit, poll the status, fetch the
 * result. Retries are left to the pipeline: 429, 5xx, timeouts and network errors throw
 * RetryableError (with retryAfterMs from Retry-After), other 4xx UnrecoverableError. When the
 * call's signal aborts or its timeout passes, the fal request is cancelled (best effort, awaited
 * for up to 2 s) before the call rejects, with `signal.reason` or a RetryableError respectively.
 */
export function createFalReframe(options: FalReframeOptions): FalReframe {
  const pollIntervalMs = options.pollIntervalMs ?? 1000;
  const client = createFalClient({
    credentials: options.key,
    // The client retries 429/5xx itself (up to 5 times, seconds apart, ignoring Retry-After and
    // our abort signal between attempts); failing fast here keeps one retry policy, the pipeline's.
    fetch: strictFetch,
    ...(options.baseUrl ? { requestMiddleware: rewriteFalHosts(options.baseUrl) } : {}),
  });
  const prompt = `Extend the background naturally to fill a ${options.aspectRatio} frame ` +
    "for vertical video. Keep the product exactly as it is: same shape, colours, text, logo, " +
    "size and position; do not alter, crop or restyle it.";

  return async function falReframe({ imageUrl, signal }) {
    signal.throwIfAborted();
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), options.timeoutMs);
    const callSignal = AbortSignal.any([signal, deadline.signal]);
    let requestId: string | undefined;
    let completed = false;
    try {
      const submitted = SubmitSchema.parse(
        await client.queue.submit(options.model, {
          input: { image_url: imageUrl, aspect_ratio: options.aspectRatio, prompt },
          abortSignal: callSignal,
        }),
      );
      requestId = submitted.request_id;
      const status = await waitForCompletion(requestId, callSignal);
      completed = true;
      const { data } = await client.queue.result(options.model, {
        requestId,
        abortSignal: callSignal,
      });
      if (status.error) {
        throw new UnrecoverableError(
          `fal request "${requestId}" failed: ${status.error_type ?? "error"}: ${status.error}`,
        );
      }
      return toResult(requestId, data);
    } catch (error) {
      if (requestId && !completed) await cancel(requestId);
      if (signal.aborted) throw signal.reason;
      if (deadline.signal.aborted) {
        const what = requestId ? `fal request "${requestId}"` : "fal request";
        throw new RetryableError(`${what} timed out after ${options.timeoutMs} ms`, {
          cause: error,
        });
      }
      throw classify(error, requestId, completed);
    } finally {
      clearTimeout(timer);
    }
  };

  async function waitForCompletion(requestId: string, signal: AbortSignal) {
    while (true) {
      const status = StatusSchema.parse(
        await client.queue.status(options.model, { requestId, abortSignal: signal }),
      );
      if (status.status === "COMPLETED") return status;
      if (status.status !== "IN_QUEUE" && status.status !== "IN_PROGRESS") {
        throw new RetryableError(
          `fal request "${requestId}" ended with status "${status.status}"` +
            (status.error ? `: ${status.error}` : ""),
        );
      }
      await sleep(pollIntervalMs, signal);
    }
  }

  async function cancel(requestId: string) {
    const budget = new AbortController();
    const timer = setTimeout(() => budget.abort(), CANCEL_BUDGET_MS);
    try {
      await client.queue.cancel(options.model, { requestId, abortSignal: budget.signal });
    } catch {
      // Best effort: an already completed or unreachable request is not worth failing over.
    } finally {
      clearTimeout(timer);
    }
  }

  function toResult(requestId: string, data: unknown): ReframeResult {
    const parsed = ResultSchema.safeParse(data);
    if (!parsed.success) {
      throw new UnrecoverableError(
        `fal request "${requestId}" returned an unexpected result: ${
          z.prettifyError(parsed.error).replaceAll("\n", " ")
        }`,
        { cause: parsed.error },
      );
    }
    const image = parsed.data.images[0];
    if (!image) throw new UnrecoverableError(`fal request "${requestId}" returned no image`);
    return {
      image_url: image.url,
      width: image.width ?? null,
      height: image.height ?? null,
      request_id: requestId,
      model: options.model,
      aspect_ratio: options.aspectRatio,
    };
  }
}

/** Maps a failed fal call to RetryableError or UnrecoverableError with the provider's message. */
function classify(error: unknown, requestId: string | undefined, completed: boolean): Error {
  if (error instanceof RetryableError || error instanceof UnrecoverableError) return error;
  if (error instanceof FalTransportError) {
    return new RetryableError(`Could not reach fal at "${new URL(error.url).origin}"`, {
      cause: error.transportError,
    });
  }
  if (error instanceof FalHttpError) {
    const { status } = error;
    const detail = describeBody(error.body);
    const what = !requestId
      ? status === 429 ? "fal rate limited the request" : "fal rejected the request"
      : completed
      ? `fal request "${requestId}" failed`
      : `fal failed to report the status of request "${requestId}"`;
    const message = `${what} (${status})${detail ? `: ${detail}` : ""}`;
    const retryable = status === 408 || status === 429 || status >= 500;
    return retryable
      ? new RetryableError(message, { cause: error, retryAfterMs: error.retryAfterMs })
      : new UnrecoverableError(message, { cause: error });
  }
  if (error instanceof z.ZodError) {
    return new RetryableError(
      `fal answered an unexpected body: ${z.prettifyError(error).replaceAll("\n", " ")}`,
      { cause: error },
    );
  }
  return new RetryableError(
    `fal call failed: ${error instanceof Error ? error.message : String(error)}`,
    { cause: error },
  );
}

/**
 * fal's error bodies: `{ detail: string }` for request errors, `{ detail: [{ loc, msg, type }] }`
 * for validation errors (loc starts with "body"). The client's ApiError ignores `detail`.
 */
function describeBody(body: unknown): string {
  if (typeof body === "string") return body.slice(0, 200);
  if (typeof body !== "object" || body === null) return "";
  const { detail, message, error } = body as Record<string, unknown>;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => {
      const { loc, msg } = (item ?? {}) as { loc?: unknown; msg?: unknown };
      const path = Array.isArray(loc) ? loc.filter((p, i) => !(i === 0 && p === "body")) : [];
      const text = typeof msg === "string" ? msg : JSON.stringify(item);
      return path.length ? `${path.join(".")}: ${text}` : text;
    }).join("; ");
  }
  if (typeof message === "string") return message;
  if (typeof error === "string") return error;
  return "";
}

/** fetch for the fal client: non-2xx answers and transport failures throw our own errors. */
async function strictFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(input, init);
  } catch (error) {
    if (init?.signal?.aborted) throw error;
    throw new FalTransportError(input instanceof Request ? input.url : String(input), error);
  }
  if (response.ok) return response;
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: keep the text.
  }
  throw new FalHttpError(
    response.status,
    body || response.statusText,
    parseRetryAfter(response.headers),
  );
}

/** Sends every fal URL (queue.fal.run, fal.run, rest.fal.ai, ...) to `baseUrl` instead. */
function rewriteFalHosts(baseUrl: string): RequestMiddleware {
  const base = new URL(baseUrl).href.replace(/\/+$/, "");
  return function rewriteFalHosts(request) {
    const url = new URL(request.url);
    if (!/(^|\.)fal\.(run|ai)$/.test(url.hostname)) return Promise.resolve(request);
    return Promise.resolve({ ...request, url: `${base}${url.pathname}${url.search}` });
  };
}

/** The reframe step's live provider: fal.ai, configured by FAL_* and REFRAME_* settings. */
export function falReframer(config: Config): Reframer {
  const reframe = createFalReframe({
    key: config.FAL_KEY ?? "",
    model: config.FAL_REFRAME_MODEL,
    aspectRatio: config.REFRAME_ASPECT_RATIO,
    baseUrl: config.FAL_BASE_URL,
    timeoutMs: config.REFRAME_TIMEOUT_MS,
    pollIntervalMs: config.FAL_POLL_INTERVAL_MS,
  });
  return {
    async reframe({ imageUrl, signal }) {
      const result = await reframe({ imageUrl, signal });
      return {
        image_url: result.image_url,
        reframed: true,
        provider: `fal:${result.model}`,
        original_image_url: imageUrl,
        width: result.width,
        height: result.height,
        aspect_ratio: result.aspect_ratio,
        fal_request_id: result.request_id,
      };
    },
  };
}
