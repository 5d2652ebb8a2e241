import { ProblemError } from "../errors.ts";

const JSON_TYPE = /^application\/([\w.+-]+\+)?json\s*(;|$)/i;

/**
 * Reads a JSON body as text, enforcing content type, size and UTF-8 (not yet parsed, so a
 * signature can be checked over the exact bytes). Throws ProblemError 415, 413 or 400; never
 * buffers more than `maxBytes` + one chunk.
 */
export async function readJsonText(request: Request, maxBytes: number): Promise<string> {
  const type = request.headers.get("content-type") ?? "";
  if (!JSON_TYPE.test(type)) {
    throw new ProblemError(415, "Unsupported media type", "Send the body as application/json", {
      received: type || null,
    });
  }
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) throw tooLarge(maxBytes);
  // With a Content-Length the server already frames the body to exactly that many bytes: read it
  // in one go. Without one (chunked), count while streaming and stop at the limit.
  const bytes = Number.isFinite(declared) && request.body
    ? new Uint8Array(await request.arrayBuffer())
    : await readCapped(request, maxBytes);
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
    for (const child of Object.values(value)) stack.push([child, level + 1]);
  }
  return deepest;
}

async function readCapped(request: Request, maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    const reader = request.body.getReader();
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge(maxBytes);
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function tooLarge(maxBytes: number) {
  return new ProblemError(413, "Payload too large", `The body exceeds ${maxBytes} bytes`, {
    max_bytes: maxBytes,
  });
}
