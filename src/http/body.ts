import { ProblemError } from "../errors.ts";

const JSON_TYPE = /^application\/([\w.+-]+\+)?json\s*(;|$)/i;

/**
 * Reads a JSON object body, enforcing content type, size and UTF-8 before parsing.
 * Throws ProblemError 415, 413 or 400; never buffers more than `maxBytes` + one chunk.
 */
export async function readJsonBody(request: Request, maxBytes: number): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!JSON_TYPE.test(type)) {
    throw new ProblemError(415, "Unsupported media type", "Send the body as application/json", {
      received: type || null,
    });
  }
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) throw tooLarge(maxBytes);
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
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ProblemError(400, "Invalid body", "The body is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ProblemError(400, "Invalid JSON", "The body is not valid JSON", {
      detail_parser: (error as Error).message,
    });
  }
}

function tooLarge(maxBytes: number) {
  return new ProblemError(413, "Payload too large", `The body exceeds ${maxBytes} bytes`, {
    max_bytes: maxBytes,
  });
}
