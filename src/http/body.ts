import { ProblemError } from "../errors.ts";

const JSON_TYPE = /^application\/([\w.+-]+\+)?json\s*(;|$)/i;
/** Bodies up to this size are read in one go (see readJsonText). */
const ONE_GO_MAX_BYTES = 64 * 1024;

/** The body did not arrive within the deadline; the caller answers 408 and closes. */
export class BodyTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`The body did not arrive within ${timeoutMs} ms`);
  }
}

/** The client went away before the body was complete (nobody reads the answer). */
export class BodyAbortedError extends ProblemError {
  constructor(cause: unknown) {
    super(400, "Incomplete body", "The upload ended before the body was complete", {}, { cause });
  }
}

/**
 * What can be checked of a JSON body before reading it: the content type (415) and a declared
 * Content-Length (413). Returns the declared length (NaN for a chunked body), for
 * {@linkcode readJsonText}.
 */
export function checkJsonHead(request: Request, maxBytes: number): number {
  const type = request.headers.get("content-type") ?? "";
  if (!JSON_TYPE.test(type)) {
    throw new ProblemError(415, "Unsupported media type", "Send the body as application/json", {
      received: type || null,
    });
  }
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) throw tooLarge(maxBytes);
  return declared;
}

/**
 * Reads a JSON body as text, enforcing size, UTF-8 and, with `timeoutMs`, a deadline (not yet
 * parsed, so a signature can be checked over the exact bytes); `declared` is what
 * {@linkcode checkJsonHead}, called first, returned. Throws ProblemError 413 or 400,
 * {@linkcode BodyAbortedError} when the client goes away, or {@linkcode BodyTimeoutError}; never
 * buffers more than `maxBytes` + one chunk.
 */
export async function readJsonText(
  request: Request,
  maxBytes: number,
  options: { declared: number; timeoutMs?: number },
): Promise<string> {
  const { declared } = options;
  // A small Content-Length body (framed to it by the server) is read in one go, much cheaper than
  // a chunk loop; a large or chunked one chunk by chunk, so a slow sender can be cut and its bytes
  // dropped at the deadline (a one-go read cannot be cancelled: it holds what arrived, at most
  // ONE_GO_MAX_BYTES, until the connection goes).
  const bytes = Number.isFinite(declared) && declared <= ONE_GO_MAX_BYTES && request.body
    ? await readWhole(request, options.timeoutMs)
    : await readCapped(request, maxBytes, options.timeoutMs);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ProblemError(400, "Invalid body", "The body is not valid UTF-8");
  }
}

/** Parses JSON text, refusing nesting deeper than `maxDepth` (400). */
export function parseJson(text: string, maxDepth: number): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProblemError(400, "Invalid JSON", "The body is not valid JSON");
  }
  if (depth(value, maxDepth) > maxDepth) {
    throw new ProblemError(400, "Invalid JSON", `The body nests deeper than ${maxDepth} levels`);
  }
  return value;
}

/** Nesting depth of a parsed JSON value, counting stops once past `limit` (no recursion). */
function depth(root: unknown, limit: number): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[root, 0]];
  while (stack.length) {
    const [value, level] = stack.pop()!;
    if (value === null || typeof value !== "object") continue;
    if (level + 1 > deepest) deepest = level + 1;
    if (deepest > limit) return deepest;
    // Only objects and arrays nest: a flat request pushes nothing.
    for (const child of Object.values(value)) {
      if (child !== null && typeof child === "object") stack.push([child, level + 1]);
    }
  }
  return deepest;
}

/**
 * Reads the body chunk by chunk (the server frames a Content-Length body to exactly that many
 * bytes; a chunked one is counted here), stopping at `maxBytes` or the deadline.
 */
async function readCapped(
  request: Request,
  maxBytes: number,
  timeoutMs?: number,
): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const deadline = Promise.withResolvers<never>();
  const timer = timeoutMs === undefined
    ? undefined
    : setTimeout(() => deadline.reject(new BodyTimeoutError(timeoutMs)), timeoutMs);
  deadline.promise.catch(() => {}); // raced below; never an unhandled rejection
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (true) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await (timer === undefined
          ? reader.read()
          : Promise.race([reader.read(), deadline.promise]));
      } catch (error) {
        if (error instanceof BodyTimeoutError) throw error;
        throw new BodyAbortedError(error);
      }
      if (next.done) break;
      size += next.value.byteLength;
      if (size > maxBytes) throw tooLarge(maxBytes);
      chunks.push(next.value);
    }
  } catch (error) {
    // Awaited: until the body is released, Deno keeps the connection open after a closing answer.
    await reader.cancel().catch(() => {});
    throw error;
  } finally {
    clearTimeout(timer);
  }
  if (chunks.length === 1) return chunks[0];
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/**
 * Reads a framed body in one go, within the deadline. On the deadline the read is left behind:
 * the caller's closing answer drops the connection, which ends it.
 */
async function readWhole(request: Request, timeoutMs?: number): Promise<Uint8Array> {
  const read = request.arrayBuffer();
  read.catch(() => {}); // raced below; never an unhandled rejection
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = timeoutMs === undefined ? null : new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BodyTimeoutError(timeoutMs)), timeoutMs);
  });
  try {
    return new Uint8Array(await (deadline ? Promise.race([read, deadline]) : read));
  } catch (error) {
    if (error instanceof BodyTimeoutError) throw error;
    throw new BodyAbortedError(error);
  } finally {
    clearTimeout(timer);
  }
}

function tooLarge(maxBytes: number) {
  return new ProblemError(413, "Payload too large", `The body exceeds ${maxBytes} bytes`, {
    max_bytes: maxBytes,
  });
}
