/**
 * A local server that speaks fal's queue protocol, for driving the real `@fal-ai/client` in tests.
 *
 * Routes (the app is `<owner>/<alias>`; only submit carries the endpoint path, as on fal):
 * - `POST /<owner>/<alias>[/<path>]` submits: `{ request_id, status: "IN_QUEUE", queue_position,
 *   status_url, response_url, cancel_url }`, the URLs built from this server's own origin.
 * - `GET /<owner>/<alias>/requests/<id>/status`: IN_QUEUE, then IN_PROGRESS, then COMPLETED on the
 *   third and later polls (202 while pending, 200 once completed, as fal answers).
 * - `GET /<owner>/<alias>/requests/<id>`: the result, `{ images: [{ url, width, height,
 *   content_type }] }`; the url is `<origin>/files/reframed.png?source=<image_url>&aspect_ratio=<ar>`
 *   and the size has the requested aspect ratio with a 1080 px short side.
 * - `PUT /<owner>/<alias>/requests/<id>/cancel`: 202 `CANCELLATION_REQUESTED`; a cancelled request
 *   then reports COMPLETED with `error_type: "client_cancelled"` and its result answers 499.
 * - `GET /files/...`: a 1×1 PNG, so result URLs resolve.
 *
 * Every fal route checks `Authorization: Key <key>` (401 `{ detail }` otherwise).
 */

/** A failure the fake injects; see {@link FalFaultSpec}. */
export type FalFaultKind =
  /** Submit answers 429 with Retry-After (seconds, `retryAfterS`, default 2). */
  | "submit-429"
  /** Submit answers 500 `{ detail }`. */
  | "submit-500"
  /** Submit answers 422 `{ detail: [{ loc: ["body", "image_url"], msg, type }] }`. */
  | "submit-422"
  /** Status polls answer 500. */
  | "status-500"
  /** Result fetches answer 500. */
  | "result-500"
  /** Jobs submitted while set stay IN_PROGRESS until cancelled. */
  | "never-complete"
  /** Jobs submitted while set complete with an error: result answers 422 image_load_error. */
  | "job-error"
  /** Jobs submitted while set complete with `{ images: [] }`. */
  | "no-image";

/**
 * A fault applies to the matching calls (submit, status or result) or, for `never-complete` and
 * `job-error`, to the jobs submitted while it is set. It stays until `fault(null)`, or for `times`
 * matching calls or jobs, after which it clears itself: `{ kind: "submit-500", times: 1 }` fails
 * one submit, then submissions succeed again.
 */
export interface FalFaultSpec {
  kind: FalFaultKind;
  times?: number;
  /** Retry-After seconds sent with `submit-429`; default 2. */
  retryAfterS?: number;
}

export type FalFault = FalFaultKind | FalFaultSpec;

export interface FalRequestRecord {
  method: string;
  /** The URL path, without the query string. */
  path: string;
  /** The parsed JSON body, or null without one. */
  body: unknown;
  auth: string | null;
}

export interface FalFake {
  /** The origin to use as FAL_BASE_URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** Every request received, in order. */
  requests: FalRequestRecord[];
  fault(fault: FalFault | null): void;
  close(): Promise<void>;
}

interface Job {
  id: string;
  app: string;
  input: Record<string, unknown>;
  polls: number;
  cancelled: boolean;
  neverComplete: boolean;
  jobError: boolean;
  noImage: boolean;
}

const ASPECT_RATIOS = new Set(["1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"]);

// A 1×1 transparent PNG.
const PNG = Uint8Array.from(
  atob(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=",
  ),
  (c) => c.charCodeAt(0),
);

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function validationError(field: string, msg: string, type: string): Response {
  return json(422, { detail: [{ loc: ["body", field], msg, type }] });
}

/** Width and height for `w:h` with a 1080 px short side. */
function sizeFor(aspectRatio: string): { width: number; height: number } {
  const [w, h] = aspectRatio.split(":").map(Number);
  return w <= h
    ? { width: 1080, height: Math.round((1080 * h) / w) }
    : { width: Math.round((1080 * w) / h), height: 1080 };
}

/** Starts the fake on 127.0.0.1 at a free port. */
export function startFalServer(options: { key: string }): Promise<FalFake> {
  const requests: FalRequestRecord[] = [];
  const jobs = new Map<string, Job>();
  let active: (FalFaultSpec & { left: number }) | null = null;

  /** Consumes one use of the active fault if it is `kind`. */
  function take(kind: FalFaultKind): FalFaultSpec | null {
    if (active?.kind !== kind) return null;
    const spec = active;
    if (--active.left <= 0) active = null;
    return spec;
  }

  function urlsOf(origin: string, job: Job) {
    const base = `${origin}/${job.app}/requests/${job.id}`;
    return { response_url: base, status_url: `${base}/status`, cancel_url: `${base}/cancel` };
  }

  function submit(origin: string, app: string, body: unknown): Response {
    const limited = take("submit-429");
    if (limited) {
      return json(429, { detail: "Rate limit exceeded" }, {
        "retry-after": String(limited.retryAfterS ?? 2),
      });
    }
    if (take("submit-500")) return json(500, { detail: "Internal Server Error" });
    if (take("submit-422")) {
      return validationError("image_url", "Unsupported image format", "value_error");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return validationError("body", "Input should be a valid dictionary", "dict_type");
    }
    const input = body as Record<string, unknown>;
    if (typeof input.image_url !== "string") {
      return validationError("image_url", "Field required", "missing");
    }
    if (typeof input.aspect_ratio !== "string" || !ASPECT_RATIOS.has(input.aspect_ratio)) {
      return validationError(
        "aspect_ratio",
        `Input should be ${[...ASPECT_RATIOS].map((r) => `'${r}'`).join(", ")}`,
        "literal_error",
      );
    }
    const job: Job = {
      id: crypto.randomUUID(),
      app,
      input,
      polls: 0,
      cancelled: false,
      neverComplete: take("never-complete") !== null,
      jobError: take("job-error") !== null,
      noImage: take("no-image") !== null,
    };
    jobs.set(job.id, job);
    return json(200, {
      status: "IN_QUEUE",
      request_id: job.id,
      queue_position: 0,
      ...urlsOf(origin, job),
    }, { "x-fal-request-id": job.id });
  }

  function isDone(job: Job): boolean {
    return job.cancelled || (!job.neverComplete && job.polls >= 3);
  }

  function status(origin: string, job: Job): Response {
    if (take("status-500")) return json(500, { detail: "Internal Server Error" });
    job.polls++;
    const urls = urlsOf(origin, job);
    const common = { request_id: job.id, ...urls };
    if (job.cancelled) {
      return json(200, {
        status: "COMPLETED",
        ...common,
        logs: [],
        metrics: {},
        error: "Request was cancelled",
        error_type: "client_cancelled",
      });
    }
    if (!isDone(job)) {
      return job.polls === 1
        ? json(202, { status: "IN_QUEUE", queue_position: 0, ...common })
        : json(202, { status: "IN_PROGRESS", ...common, logs: [] });
    }
    return json(200, {
      status: "COMPLETED",
      ...common,
      logs: [],
      metrics: { inference_time: 0.01 },
      ...(job.jobError
        ? { error: "Failed to load the image", error_type: "image_load_error" }
        : {}),
    });
  }

  function result(origin: string, job: Job): Response {
    if (take("result-500")) return json(500, { detail: "Internal Server Error" });
    const headers = { "x-fal-request-id": job.id };
    if (job.cancelled) {
      return json(499, { detail: "Request was cancelled", error_type: "client_cancelled" }, {
        ...headers,
        "x-fal-error-type": "client_cancelled",
      });
    }
    if (!isDone(job)) return json(400, { detail: "Request is still in progress" }, headers);
    if (job.jobError) {
      return json(422, {
        detail: [{
          loc: ["body", "image_url"],
          msg: "Failed to load the image",
          type: "image_load_error",
          input: job.input.image_url,
        }],
      }, headers);
    }
    if (job.noImage) return json(200, { images: [] }, headers);
    const imageUrl = String(job.input.image_url);
    const aspectRatio = String(job.input.aspect_ratio);
    const query = new URLSearchParams({ source: imageUrl, aspect_ratio: aspectRatio });
    return json(200, {
      images: [{
        url: `${origin}/files/reframed.png?${query}`,
        content_type: "image/png",
        file_name: "reframed.png",
        ...sizeFor(aspectRatio),
      }],
    }, headers);
  }

  function cancel(job: Job): Response {
    if (isDone(job)) return json(400, { status: "ALREADY_COMPLETED" });
    job.cancelled = true;
    return json(202, { status: "CANCELLATION_REQUESTED" });
  }

  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const text = request.method === "GET" ? "" : await request.text();
    let body: unknown = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    const auth = request.headers.get("authorization");
    requests.push({ method: request.method, path: url.pathname, body, auth });

    if (request.method === "GET" && url.pathname.startsWith("/files/")) {
      return new Response(PNG, { headers: { "content-type": "image/png" } });
    }
    if (auth === null) {
      return json(401, { detail: "Authentication is required to perform this action" });
    }
    if (auth !== `Key ${options.key}`) {
      return json(401, { detail: "No user found for Key ID and Secret" });
    }

    const parts = url.pathname.split("/").filter(Boolean);
    const at = parts.indexOf("requests");
    if (at === -1) {
      if (request.method !== "POST" || parts.length < 2) return json(404, { detail: "Not Found" });
      return submit(url.origin, parts.slice(0, 2).join("/"), body);
    }
    const app = parts.slice(0, at).join("/");
    const job = jobs.get(parts[at + 1] ?? "");
    const action = parts.slice(at + 2).join("/");
    // Status, result and cancel live under the app, not the endpoint path, as on fal.
    if (!job || job.app !== app) {
      return request.method === "PUT" && action === "cancel"
        ? json(404, { status: "NOT_FOUND" })
        : json(404, { detail: "Request not found" });
    }
    if (request.method === "GET" && action === "status") return status(url.origin, job);
    if (request.method === "GET" && action === "") return result(url.origin, job);
    if (request.method === "PUT" && action === "cancel") return cancel(job);
    return json(405, { detail: "Method Not Allowed" });
  }

  return new Promise((resolve) => {
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen({ port }) {
        resolve({
          url: `http://127.0.0.1:${port}`,
          requests,
          fault(fault) {
            if (fault === null) {
              active = null;
              return;
            }
            const spec = typeof fault === "string" ? { kind: fault } : fault;
            active = { ...spec, left: spec.times ?? Infinity };
          },
          close: () => server.shutdown(),
        });
      },
    }, handle);
  });
}
