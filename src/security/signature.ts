/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
 * `${id}.${timestamp}.${body}`, sent base64-encoded as "v1,<sig>" entries, space-separated, in
 * `webhook-signature`. Several entries, and several configured secrets, allow key rotation.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";
import type { Redis } from "ioredis";

const _SECRET_PREFIX = "whsec_";
const _BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Why a signing secret cannot be used (checked at start, so no request ever fails on it). */
export function secretProblem(secret: string): string | null {
  if (!secret.startsWith(_SECRET_PREFIX)) {
    return secret.length >= 16 ? null : "must be at least 16 characters (or whsec_<base64>)";
  }
  const encoded = secret.slice(_SECRET_PREFIX.length);
  if (!_BASE64.test(encoded)) return 'must be base64 after "whsec_"';
  return Buffer.from(encoded, "base64").length >= 16 ? null : "must decode to at least 16 bytes";
}

/** A "whsec_" secret carries base64 key bytes; any other secret is used as UTF-8 text. */
function _keyBytes(secret: string): Uint8Array<ArrayBuffer> {
  if (!secret.startsWith(_SECRET_PREFIX)) return new TextEncoder().encode(secret);
  const encoded = secret.slice(_SECRET_PREFIX.length);
  // The secret itself stays out of the message: errors end up in logs.
  if (!_BASE64.test(encoded)) throw new Error('Webhook secret with prefix "whsec_" is not base64');
  return new Uint8Array(Buffer.from(encoded, "base64"));
}

async function _digest(
  secret: string,
  id: string,
  timestampS: number | string,
  body: string,
): Promise<Buffer> {
  const key = await crypto.subtle.importKey(
    "raw",
    _keyBytes(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const content = new TextEncoder().encode(`${id}.${timestampS}.${body}`);
  return Buffer.from(await crypto.subtle.sign("HMAC", key, content));
}

/** Signs a webhook; returns one signature entry, "v1,<base64>". */
export async function signWebhook(
  secret: string,
  id: string,
  timestampS: number,
  body: string,
): Promise<string> {
  return `v1,${(await _digest(secret, id, timestampS, body)).toString("base64")}`;
}

/** The three Standard Webhooks headers for a body sent with one secret. */
export async function webhookHeaders(
  secret: string,
  message: { id: string; timestampS: number; body: string },
): Promise<{ "webhook-id": string; "webhook-timestamp": string; "webhook-signature": string }> {
  const { id, timestampS, body } = message;
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestampS),
    "webhook-signature": await signWebhook(secret, id, timestampS, body),
  };
}

export type VerifyFailure =
  | "missing-headers"
  | "bad-timestamp"
  | "stale"
  | "future"
  | "bad-signature";

/**
 * Verifies a signed webhook against any of `secrets` (more than one while rotating). The timestamp
 * must lie within `toleranceS` of `nowS` either way. Replays inside that window are not detected
 * here: pass the returned id to {@linkcode rememberWebhookId}.
 */
export async function verifyWebhook(
  secrets: string[],
  headers: Headers,
  body: string,
  nowS: number,
  toleranceS = 300,
): Promise<{ ok: true; id: string } | { ok: false; reason: VerifyFailure }> {
  const fail = (reason: VerifyFailure) => ({ ok: false as const, reason });
  const id = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp");
  const signature = headers.get("webhook-signature");
  if (!id || !timestamp || !signature) return fail("missing-headers");
  if (!/^\d{1,15}$/.test(timestamp.trim())) return fail("bad-timestamp");
  const timestampS = Number(timestamp.trim());
  if (nowS - timestampS > toleranceS) return fail("stale");
  if (timestampS - nowS > toleranceS) return fail("future");

  const offered: Buffer[] = [];
  for (const entry of signature.trim().split(/\s+/)) {
    const comma = entry.indexOf(",");
    if (comma < 0 || entry.slice(0, comma) !== "v1") continue; // other schemes: not ours to judge
    const encoded = entry.slice(comma + 1);
    if (_BASE64.test(encoded)) offered.push(Buffer.from(encoded, "base64"));
  }
  let matched = false;
  for (const secret of secrets) {
    // Signed over the timestamp text as sent, so a reformatted number cannot verify.
    const expected = await _digest(secret, id, timestamp.trim(), body);
    for (const candidate of offered) {
      if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) {
        matched = true;
      }
    }
  }
  return matched ? { ok: true, id } : fail("bad-signature");
}

const utf8 = new TextEncoder();

/**
 * A constant-time check against one expected token (a header token is compared on every
 * request): every byte of the expected token is XOR-compared whatever was sent, without early
 * exit, so the time depends on neither the sent value nor where it differs; a wrong length only
 * sets a bit in the result.
 */
export function tokenMatcher(expected: string): (sent: string) => boolean {
  const want = utf8.encode(expected);
  return (sent) => {
    const got = utf8.encode(sent);
    let diff = got.length ^ want.length;
    for (let i = 0; i < want.length; i++) diff |= want[i] ^ (got[i] ?? 0);
    return diff === 0;
  };
}

/**
 * Compares a presented token with the expected one in constant time. Both are hashed first, so
 * neither the content nor the length of the expected token leaks through timing.
 */
export function tokensEqual(a: string, b: string): boolean {
  const hash = (text: string) => createHash("sha256").update(text, "utf8").digest();
  return timingSafeEqual(hash(a), hash(b));
}

/**
 * Records a webhook id (SET NX EX) for replay detection; true when it was not seen before.
 * Use a TTL at least twice the timestamp tolerance: older replays already fail as stale.
 */
export async function rememberWebhookId(redis: Redis, key: string, ttlS: number): Promise<boolean> {
  return await redis.set(key, "1", "EX", ttlS, "NX") === "OK";
}
