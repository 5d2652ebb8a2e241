/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com), computed by the reference
 * implementation (`standardwebhooks` on npm): HMAC-SHA256 over `${id}.${timestamp}.${body}`, sent
 * base64-encoded as "v1,<sig>" entries, space-separated, in `webhook-signature`. Several entries,
 * and several configured secrets, allow key rotation.
 *
 * Written here rather than taken from the package: its `verify()` reads the wall clock with a fixed
 * 5-minute tolerance and parses the timestamp leniently (`parseInt`: "1e9" is 1, "17.5" is 17), so
 * the header and window checks run here first, against the caller's clock and before the body is
 * read ({@linkcode checkWebhookHeaders}); the package then computes the expected signature, which
 * is compared here with every offered entry under every configured secret. Plain-text secrets are
 * handed to it as their UTF-8 bytes (its "raw" format takes a string's UTF-16 code units instead).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";
import type { RedisClient } from "../redis/client.ts";
import { Webhook } from "standardwebhooks";

const _SECRET_PREFIX = "whsec_";
/** Whole Unix seconds as a sender writes them: no sign, exponent, fraction or leading zero. */
const _TIMESTAMP = /^(0|[1-9]\d{0,14})$/;
/** A webhook-id as senders write them ("msg_…", UUIDs): visible ASCII, at most 256 characters. */
const _WEBHOOK_ID = /^[\x21-\x7e]{1,256}$/;
const _SIGNATURE_ENTRY = /^v1,[A-Za-z0-9+/]+={0,2}$/;
const utf8 = new TextEncoder();

/** Why a signing secret cannot be used (checked at start, so no request ever fails on it). */
export function secretProblem(secret: string): string | null {
  if (!secret.startsWith(_SECRET_PREFIX)) {
    return secret.length >= 16 ? null : "must be at least 16 characters (or whsec_<base64>)";
  }
  try {
    new Webhook(secret); // the package decodes the key: what it refuses, signing would too
  } catch {
    return 'must be base64 after "whsec_"';
  }
  return Buffer.from(secret.slice(_SECRET_PREFIX.length), "base64").length >= 16
    ? null
    : "must decode to at least 16 bytes";
}

/** The package's signer: a "whsec_" secret carries base64 key bytes, any other is UTF-8 text. */
function _signer(secret: string): Webhook {
  if (!secret.startsWith(_SECRET_PREFIX)) {
    return new Webhook(utf8.encode(secret), { format: "raw" });
  }
  try {
    return new Webhook(secret);
  } catch (error) {
    // The secret itself stays out of the message: errors end up in logs.
    throw new Error('Webhook secret with prefix "whsec_" is not base64', { cause: error });
  }
}

/** Signs a webhook; returns one signature entry, "v1,<base64>". */
// deno-lint-ignore require-await -- async so that a bad secret rejects, as callers expect
export async function signWebhook(
  secret: string,
  id: string,
  timestampS: number,
  body: string,
): Promise<string> {
  return _signer(secret).sign(id, new Date(timestampS * 1000), body);
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
  | "bad-id"
  | "bad-timestamp"
  | "stale"
  | "future"
  | "bad-signature";

/**
 * What can be checked of a signed webhook before its body is read: the three headers are present,
 * the id is visible ASCII (at most 256 characters), the timestamp is whole seconds within
 * `toleranceS` of `nowS` either way, and some signature entry is a well-formed "v1,<base64>". The
 * signature itself is only compared by {@linkcode verifyWebhook}. The webhook route runs this before
 * it reads a body, so a sender without credentials never gets one read.
 */
export function checkWebhookHeaders(
  headers: Headers,
  nowS: number,
  toleranceS = 300,
):
  | { ok: true; id: string; timestampS: number; signature: string }
  | { ok: false; reason: VerifyFailure } {
  const id = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp")?.trim();
  const signature = headers.get("webhook-signature");
  if (!id || !timestamp || !signature?.trim()) return { ok: false, reason: "missing-headers" };
  if (!_WEBHOOK_ID.test(id)) return { ok: false, reason: "bad-id" };
  if (!_TIMESTAMP.test(timestamp)) return { ok: false, reason: "bad-timestamp" };
  const timestampS = Number(timestamp);
  if (nowS - timestampS > toleranceS) return { ok: false, reason: "stale" };
  if (timestampS - nowS > toleranceS) return { ok: false, reason: "future" };
  if (!signature.trim().split(/\s+/).some((entry) => _SIGNATURE_ENTRY.test(entry))) {
    return { ok: false, reason: "bad-signature" };
  }
  return { ok: true, id, timestampS, signature };
}

/**
 * Verifies a signed webhook against any of `secrets` (more than one while rotating): the checks of
 * {@linkcode checkWebhookHeaders}, then any "v1" entry of `webhook-signature` must equal the
 * package's signature under one of the secrets. Replays inside the window are not detected here:
 * pass the returned id to {@linkcode rememberWebhookId}.
 */
export async function verifyWebhook(
  secrets: string[],
  headers: Headers,
  body: string,
  nowS: number,
  toleranceS = 300,
): Promise<{ ok: true; id: string } | { ok: false; reason: VerifyFailure }> {
  const checked = checkWebhookHeaders(headers, nowS, toleranceS);
  if (!checked.ok) return checked;
  const { id, timestampS, signature } = checked;
  // Parsed as the package's verify() does: "<version>,<base64>" entries; other versions ignored.
  const offered = signature.split(" ").flatMap((entry) => {
    const [version, encoded] = entry.split(",");
    return version === "v1" && encoded ? [utf8.encode(encoded)] : [];
  });
  let matched = false;
  for (const secret of secrets) {
    const expected = utf8.encode((await signWebhook(secret, id, timestampS, body)).slice(3));
    for (const candidate of offered) {
      // No early exit: every entry is compared under every secret.
      if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) {
        matched = true;
      }
    }
  }
  return matched ? { ok: true, id } : { ok: false, reason: "bad-signature" };
}

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
export async function rememberWebhookId(
  redis: RedisClient,
  key: string,
  ttlS: number,
): Promise<boolean> {
  return await redis.set(key, "1", "EX", ttlS, "NX") === "OK";
}
