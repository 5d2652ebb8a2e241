import { z } from "zod";

/** An absolute http(s) URL, as `new URL` parses it. */
function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

const httpUrl = z.string().trim().refine(isHttpUrl, "must be an http(s) URL");

const required = z.string().trim().min(1, "is required and must not be empty");
const optionalText = z.string().max(2_000).optional();

/** n8n sends booleans as strings; accept both and normalise to a boolean. */
const booleanish = z.union([
  z.boolean(),
  z.enum(["true", "false"]).transform((s) => s === "true"),
], { error: 'must be a boolean or "true"/"false"' });

/** ISO-8601, or epoch seconds or milliseconds, as ISO-8601; null when it is neither. */
function timestampIso(value: string | number): string | null {
  const text = String(value).trim();
  let ms: number;
  if (/^\d{9,10}(\.\d+)?$/.test(text)) ms = Number(text) * 1000;
  else if (/^\d{12,13}$/.test(text)) ms = Number(text);
  else if (/^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text)) ms = Date.parse(text);
  else ms = NaN;
  return Number.isFinite(ms) ? new Date(ms).toISOString() : null;
}

/** ISO-8601, or epoch seconds or milliseconds (number or digit string), normalised to ISO-8601. */
const timestamp = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const iso = timestampIso(value);
  if (iso === null) {
    ctx.addIssue({ code: "custom", message: "must be ISO-8601 or epoch seconds/milliseconds" });
    return z.NEVER;
  }
  return iso;
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

/**
 * VideoRequestSchema.safeParse, faster for requests it accepts: a hand-written check of each
 * field, with the schema's rules and its output (trimmed strings, booleans and timestamps
 * normalised, fields in the schema's order, then the unknown ones as sent). Anything the fast
 * path does not accept goes to zod, so every rejection, and its messages, is zod's.
 * tests/validation_test.ts holds the two equal on every fixture and on generated inputs.
 */
export function parseVideoRequest(
  fields: unknown,
): { success: true; data: VideoRequest } | { success: false; error: z.ZodError } {
  const plain = typeof fields === "object" && fields !== null && !Array.isArray(fields);
  const data = plain ? acceptVideoRequest(fields as Record<string, unknown>) : null;
  if (data) return { success: true, data };
  const parsed = VideoRequestSchema.safeParse(fields);
  return parsed.success ? { success: true, data: parsed.data } : parsed;
}

/** Returned by a field check for a value it does not accept (zod then says why). */
const REJECT = Symbol("reject");
type Check = (value: unknown) => unknown;

const trimmed = (min: number, max: number): Check => (value) => {
  if (typeof value !== "string") return REJECT;
  const text = value.trim();
  return text.length >= min && text.length <= max ? text : REJECT;
};
const url: Check = (value) => {
  const text = trimmed(0, 2_048)(value);
  return text !== REJECT && isHttpUrl(text as string) ? text : REJECT;
};
const optional = (check: Check): Check => (value) => value === undefined ? undefined : check(value);
const text = (max: number): Check => (value) =>
  typeof value === "string" && value.length <= max ? value : REJECT;

/** The schema's fields, in its order, each with the same rule as its zod type. */
const FIELD_CHECKS: [string, Check][] = [
  ["prompt", trimmed(1, Infinity)],
  ["image_url", url],
  ["video_id", trimmed(1, 200)],
  ["user_id", trimmed(1, 200)],
  [
    "user_email",
    (v) => typeof v === "string" && v.length <= 320 && z.regexes.email.test(v) ? v : REJECT,
  ],
  ["chat_id", optional(text(2_000))],
  ["user_name", optional(text(2_000))],
  [
    "is_revision",
    (v) =>
      v === undefined
        ? false
        : typeof v === "boolean"
        ? v
        : v === "true"
        ? true
        : v === "false"
        ? false
        : REJECT,
  ],
  [
    "request_timestamp",
    optional((v) =>
      typeof v === "string" || (typeof v === "number" && Number.isFinite(v))
        ? timestampIso(v) ?? REJECT
        : REJECT
    ),
  ],
  ["source", optional(text(2_000))],
  [
    "version",
    optional((v) => {
      const s = typeof v === "string"
        ? v
        : typeof v === "number" && Number.isFinite(v)
        ? String(v)
        : null;
      return s !== null && s.length <= 200 ? s : REJECT;
    }),
  ],
  ["idempotency_key", optional(trimmed(1, 256))],
  ["callback_url", optional(url)],
  ["webhookUrl", optional(text(2_000))],
  ["executionMode", optional(text(2_000))],
];

if (FIELD_CHECKS.map(([key]) => key).join() !== Object.keys(VideoRequestSchema.shape).join()) {
  throw new Error("FIELD_CHECKS must list VideoRequestSchema's fields, in its order");
}

/** The parsed request when every field passes its check, else null (parseVideoRequest's fast path). */
export function acceptVideoRequest(input: Record<string, unknown>): VideoRequest | null {
  const out: Record<string, unknown> = {};
  for (const [key, check] of FIELD_CHECKS) {
    const value = check(input[key]);
    if (value === REJECT) return null;
    // As zod: an absent optional field stays absent, a present one is kept even when undefined.
    if (value !== undefined || key in input) out[key] = value;
  }
  for (const key in input) {
    if (KNOWN_FIELDS.has(key) || key === "__proto__") continue;
    out[key] = input[key];
  }
  return out as VideoRequest;
}

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
