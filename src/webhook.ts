import { z } from "zod";

const httpUrl = z.string().trim().refine((value) => {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}, "must be an http(s) URL");

const required = z.string().trim().min(1, "is required and must not be empty");
const optionalText = z.string().max(2_000).optional();

/** n8n sends booleans as strings; accept both and normalise to a boolean. */
const booleanish = z.union([
  z.boolean(),
  z.enum(["true", "false"]).transform((s) => s === "true"),
], { error: 'must be a boolean or "true"/"false"' });

/** ISO-8601, or epoch seconds or milliseconds (number or digit string), normalised to ISO-8601. */
const timestamp = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const text = String(value).trim();
  let ms: number;
  if (/^\d{9,10}(\.\d+)?$/.test(text)) ms = Number(text) * 1000;
  else if (/^\d{12,13}$/.test(text)) ms = Number(text);
  else if (/^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text)) ms = Date.parse(text);
  else ms = NaN;
  if (!Number.isFinite(ms)) {
    ctx.addIssue({ code: "custom", message: "must be ISO-8601 or epoch seconds/milliseconds" });
    return z.NEVER;
  }
  return new Date(ms).toISOString();
});

const stringish = z.union([z.string(), z.number()]).transform(String).pipe(z.string().max(200));

/**
 * A video request as posted to /webhook (after unwrapping n8n's envelope).
 * Unknown fields are kept: they travel in the event untouched, within UNKNOWN_FIELDS_MAX_BYTES
 * (see {@linkcode boundUnknownFields}).
 */
export const VideoRequestSchema = z.looseObject({
  // Its length limit is PROMPT_MAX_CHARS, checked at ingest, so a later change never strands
  // entries already in the log.
  prompt: required,
  image_url: httpUrl.pipe(z.string().max(2_048)),
  video_id: required.max(200),
  user_id: required.max(200),
  user_email: z.email("must be an email address").max(320),
  chat_id: optionalText,
  user_name: optionalText,
  is_revision: booleanish.default(false),
  request_timestamp: timestamp.optional(),
  source: optionalText,
  version: stringish.optional(),
  idempotency_key: z.string().trim().min(1).max(256).optional(),
  callback_url: httpUrl.pipe(z.string().max(2_048)).optional(),
  webhookUrl: optionalText,
  executionMode: optionalText,
});

export type VideoRequest = z.infer<typeof VideoRequestSchema>;

/** The envelope n8n's webhook node forwards: the request is under `body`. */
function isN8nEnvelope(value: Record<string, unknown>): boolean {
  return typeof value.body === "object" && value.body !== null && !Array.isArray(value.body) &&
    typeof value.headers === "object" && !("prompt" in value);
}

/** Unwraps n8n's envelope (keeping its webhookUrl and executionMode) or returns the flat body. */
export function unwrapEnvelope(value: Record<string, unknown>): Record<string, unknown> {
  if (!isN8nEnvelope(value)) return value;
  const inner = value.body as Record<string, unknown>;
  return {
    ...inner,
    webhookUrl: inner.webhookUrl ?? value.webhookUrl,
    executionMode: inner.executionMode ?? value.executionMode,
  };
}

const KNOWN_FIELDS = new Set(Object.keys(VideoRequestSchema.shape));
const utf8 = new TextEncoder();

/**
 * Keeps the fields the schema does not know while their JSON takes at most `maxBytes` in all (0
 * drops them). Past the bound nothing is kept and `errors` names the largest unknown fields, as
 * many as must go for the rest to fit (at most 20).
 */
export function boundUnknownFields(
  request: VideoRequest,
  maxBytes: number,
): { request: VideoRequest; errors: FieldError[] } {
  const unknown = Object.keys(request).filter((key) => !KNOWN_FIELDS.has(key));
  if (!unknown.length) return { request, errors: [] };
  if (maxBytes === 0) {
    const known = Object.fromEntries(
      Object.entries(request).filter(([key]) => KNOWN_FIELDS.has(key)),
    ) as VideoRequest;
    return { request: known, errors: [] };
  }
  // Each field as it is stored: `"key":value` plus a separating comma.
  const sizes = unknown.map((key) => ({
    key,
    bytes: utf8.encode(JSON.stringify({ [key]: request[key] })).byteLength - 1,
  }));
  let total = sizes.reduce((sum, field) => sum + field.bytes, 0);
  if (total <= maxBytes) return { request, errors: [] };
  const errors: FieldError[] = [];
  for (const field of sizes.sort((a, b) => b.bytes - a.bytes)) {
    if (total <= maxBytes || errors.length === 20) break;
    total -= field.bytes;
    errors.push({
      field: field.key,
      message:
        `unknown fields may take ${maxBytes} bytes of JSON in all; this one takes ${field.bytes}`,
    });
  }
  return { request, errors };
}

export interface FieldError {
  field: string;
  message: string;
}

export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((issue) => ({
    field: issue.path.length ? issue.path.join(".") : "(body)",
    message: issue.message,
  }));
}
