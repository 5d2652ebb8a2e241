/**
 * The webhook's fast validator (parseVideoRequest's hand-written path) against the zod schema it
 * stands in for: the same accept/reject and the same output (values, key order, JSON) on every
 * fixture and on many generated and mutated payloads.
 */
import assert from "node:assert/strict";
import {
  acceptVideoRequest,
  fieldErrors,
  parseVideoRequest,
  unwrapEnvelope,
  VideoRequestSchema,
} from "../src/webhook.ts";
import { FIXTURES, SHARED_FIXTURES } from "./_helpers.ts";

/** Same verdict and the same output as zod, for one input. */
function assertSame(input: Record<string, unknown>, what: string): "accepted" | "rejected" {
  const zod = VideoRequestSchema.safeParse(input);
  const fast = acceptVideoRequest(input);
  const show = () => `${what}: ${JSON.stringify(input)}`;
  if (!zod.success) {
    assert.equal(fast, null, `the fast path accepted what zod rejects; ${show()}`);
    const parsed = parseVideoRequest(input);
    assert.equal(parsed.success, false);
    assert.deepEqual(fieldErrors(parsed.error!), fieldErrors(zod.error), show());
    return "rejected";
  }
  assert.notEqual(fast, null, `the fast path rejected what zod accepts; ${show()}`);
  assert.deepStrictEqual(fast, zod.data, show());
  assert.deepEqual(Object.keys(fast!), Object.keys(zod.data), `key order; ${show()}`);
  assert.equal(JSON.stringify(fast), JSON.stringify(zod.data), show());
  assert.deepStrictEqual(parseVideoRequest(input), { success: true, data: zod.data }, show());
  return "accepted";
}

async function fixtureObjects(): Promise<[string, Record<string, unknown>][]> {
  const out: [string, Record<string, unknown>][] = [];
  for (const base of [FIXTURES, SHARED_FIXTURES]) {
    for (const dir of [base, new URL("bad/", base)]) {
      for await (const entry of Deno.readDir(dir)) {
        if (!entry.isFile) continue;
        let value: unknown;
        try {
          value = JSON.parse(await Deno.readTextFile(new URL(entry.name, dir)));
        } catch {
          continue; // not JSON at all: refused before validation
        }
        if (typeof value !== "object" || value === null || Array.isArray(value)) continue;
        out.push([
          `${dir.pathname}${entry.name}`,
          unwrapEnvelope(value as Record<string, unknown>),
        ]);
      }
    }
  }
  return out;
}

Deno.test("the fast validator agrees with the zod schema on every fixture", async () => {
  const fixtures = await fixtureObjects();
  const verdicts = fixtures.map(([name, value]) => assertSame(value, name));
  assert.ok(fixtures.length >= 10, "fixtures found");
  assert.ok(verdicts.includes("accepted") && verdicts.includes("rejected"));
});

/** A small seeded PRNG (mulberry32), so a failure can be replayed from its seed. */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const repeat = (n: number, c = "a") => c.repeat(n);
/** Values that sit on or near each rule's edges, and values of every other JSON type. */
const POOL: unknown[] = [
  undefined,
  null,
  true,
  false,
  0,
  -0,
  1,
  -1,
  1.5,
  42,
  1e21,
  -1e21,
  1700000000,
  1700000000.25,
  1700000000123,
  123456789,
  12345678,
  99999999999999,
  "",
  " ",
  "\t\n",
  "a",
  " a ",
  "\u00a0a\u00a0",
  "\ufeffa",
  "true",
  "false",
  "TRUE",
  " true",
  "1",
  "0",
  "1.0",
  "1700000000",
  "1700000000.5",
  "1700000000123",
  " 1700000000 ",
  "2026-11-28",
  "2026-11-28T09:15:02.331Z",
  "2026-11-28T09:15:02+01:00",
  "2026-11-28T09:15:02+0100",
  "2026-13-45T99:99",
  "2026-11-28T",
  "Sat, 28 Nov 2026 09:15:02 GMT",
  "http://example.com/",
  "https://cdn.example.com/a.png?x=1#y",
  " https://cdn.example.com/a.png ",
  "HTTP://EXAMPLE.COM",
  "http://",
  "http://[::1]:8080/x",
  "http://127.0.0.1/",
  "http://ex ample.com",
  "https://exämple.com/ü",
  "ftp://example.com/a",
  "javascript:alert(1)",
  "mailto:a@b.co",
  "example.com/a",
  "//example.com",
  `https://e.com/${repeat(2_048 - 14)}`,
  `https://e.com/${repeat(2_048 - 13)}`,
  ` https://e.com/${repeat(2_048 - 14)} `,
  "a@b.co",
  "maya@example.com",
  "first.last+tag@sub.example.co.uk",
  "a..b@example.com",
  ".a@example.com",
  "a.@example.com",
  "a@example",
  "a@-example.com",
  "a@example.c",
  "A_B'C@EXAMPLE.COM",
  " a@b.co",
  "a b@c.de",
  "ü@example.com",
  `${repeat(308)}@example.com`,
  `${repeat(309)}@example.com`,
  repeat(199),
  repeat(200),
  repeat(201),
  ` ${repeat(200)} `,
  repeat(256),
  repeat(257),
  `  ${repeat(256)}  `,
  repeat(2_000),
  repeat(2_001),
  repeat(2_000, "é"),
  "\ud83d\ude00",
  [],
  ["a"],
  {},
  { a: 1 },
];

const FIELDS = Object.keys(VideoRequestSchema.shape);
const UNKNOWN_KEYS = [
  "extra",
  "nested",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "0",
  "body",
];

function generate(random: () => number, bases: Record<string, unknown>[]): Record<string, unknown> {
  const pick = <T>(list: T[]) => list[Math.floor(random() * list.length)];
  const value: Record<string, unknown> = { ...pick(bases) };
  const changes = 1 + Math.floor(random() * 4);
  for (let i = 0; i < changes; i++) {
    const roll = random();
    const field = pick(FIELDS);
    if (roll < 0.6) value[field] = pick(POOL);
    else if (roll < 0.75) delete value[field];
    else if (roll < 0.9) {
      const key = pick(UNKNOWN_KEYS);
      // An own "__proto__" key, as JSON.parse makes it.
      if (key === "__proto__") {
        Object.defineProperty(value, key, {
          value: pick(POOL),
          enumerable: true,
          configurable: true,
          writable: true,
        });
      } else value[key] = pick(POOL);
    } else {
      // Same fields, another order.
      const entries = Object.entries(value).sort(() => random() - 0.5);
      for (const key of Object.keys(value)) delete value[key];
      for (const [k, v] of entries) value[k] = v;
    }
  }
  return value;
}

Deno.test("the fast validator agrees with the zod schema on generated and mutated payloads", async () => {
  const bases = (await fixtureObjects()).map(([, v]) => v);
  const seed = Number(Deno.env.get("VALIDATION_SEED") ?? Date.now() % 1_000_000);
  const random = rng(seed);
  const counts = { accepted: 0, rejected: 0 };
  for (let i = 0; i < 20_000; i++) {
    const input = generate(random, bases);
    counts[assertSame(input, `seed ${seed}, case ${i}`)]++;
  }
  // Both sides of the rule are exercised, not just one.
  assert.ok(counts.accepted > 2_000, JSON.stringify(counts));
  assert.ok(counts.rejected > 2_000, JSON.stringify(counts));
});

Deno.test("the fast validator keeps unknown fields as sent and skips an own __proto__ as zod does", () => {
  const input = JSON.parse(
    '{"__proto__":{"polluted":true},"zeta":1,"prompt":" p ","image_url":"http://x/",' +
      '"video_id":"v","user_id":"u","user_email":"a@b.co","alpha":[1]}',
  );
  assertSame(input, "own __proto__");
  const data = acceptVideoRequest(input)!;
  assert.deepEqual(Object.keys(data), [
    "prompt",
    "image_url",
    "video_id",
    "user_id",
    "user_email",
    "is_revision",
    "zeta",
    "alpha",
  ]);
  assert.equal(Object.getPrototypeOf(data), Object.prototype);
  assert.equal(data.alpha, input.alpha, "unknown values are passed on as they are");
});

Deno.test("the fast validator hands anything but a plain object to zod", () => {
  for (const value of [null, undefined, 5, "x", true, [], [{ prompt: "p" }]]) {
    const parsed = parseVideoRequest(value);
    assert.equal(parsed.success, false, JSON.stringify(value));
    assert.deepEqual(parsed.error, VideoRequestSchema.safeParse(value).error);
  }
});
