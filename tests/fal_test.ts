import assert from "node:assert/strict";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import { createFalReframe, type FalReframeOptions } from "../src/providers/fal_reframe.ts";
import { type FalFake, startFalServer } from "./fakes/fal_server.ts";

const KEY = "test-key-id:test-key-secret";
const MODEL = "fal-ai/luma-photon/reframe";
const IMAGE = "https://cdn.example.com/products/shoe.jpg";

interface Harness {
  fake: FalFake;
  reframe: ReturnType<typeof createFalReframe>;
  [Symbol.asyncDispose](): Promise<void>;
}

async function harness(options: Partial<FalReframeOptions> = {}): Promise<Harness> {
  const fake = await startFalServer({ key: KEY });
  const reframe = createFalReframe({
    key: KEY,
    model: MODEL,
    aspectRatio: "9:16",
    baseUrl: fake.url,
    timeoutMs: 2_000,
    pollIntervalMs: 20,
    ...options,
  });
  return { fake, reframe, [Symbol.asyncDispose]: () => fake.close() };
}

const run = (h: Harness, signal = new AbortController().signal) =>
  h.reframe({ imageUrl: IMAGE, signal });

async function waitFor(condition: () => boolean, what: string, timeoutMs = 2_000) {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const calls = (fake: FalFake) => fake.requests.map((r) => `${r.method} ${r.path}`);

Deno.test("reframe submits the image and aspect ratio with the key and reads the first image", async () => {
  await using h = await harness();
  const result = await run(h);

  const submit = h.fake.requests[0];
  assert.equal(submit.method, "POST");
  assert.equal(submit.path, `/${MODEL}`);
  assert.equal(submit.auth, `Key ${KEY}`);
  const body = submit.body as Record<string, unknown>;
  assert.equal(body.image_url, IMAGE);
  assert.equal(body.aspect_ratio, "9:16");
  assert.match(String(body.prompt), /extend the background/i);
  assert.match(String(body.prompt), /do not alter/i);
  assert.ok(h.fake.requests.every((r) => r.auth === `Key ${KEY}`), "every call is authenticated");

  const expectedUrl = `${h.fake.url}/files/reframed.png?` +
    new URLSearchParams({ source: IMAGE, aspect_ratio: "9:16" });
  assert.deepEqual(result, {
    image_url: expectedUrl,
    width: 1080,
    height: 1920,
    request_id: result.request_id,
    model: MODEL,
    aspect_ratio: "9:16",
  });
  assert.match(result.request_id, /^[0-9a-f-]{36}$/);
});

Deno.test("baseUrl carries submit, status polls and result to the same host", async () => {
  await using h = await harness();
  const { request_id: id } = await run(h);
  assert.deepEqual(calls(h.fake), [
    `POST /${MODEL}`,
    `GET /fal-ai/luma-photon/requests/${id}/status`, // IN_QUEUE
    `GET /fal-ai/luma-photon/requests/${id}/status`, // IN_PROGRESS
    `GET /fal-ai/luma-photon/requests/${id}/status`, // COMPLETED
    `GET /fal-ai/luma-photon/requests/${id}`,
  ]);
});

Deno.test("baseUrl with a trailing slash is rewritten without doubling it", async () => {
  const fake = await startFalServer({ key: KEY });
  try {
    const reframe = createFalReframe({
      key: KEY,
      model: MODEL,
      aspectRatio: "16:9",
      baseUrl: `${fake.url}/`,
      timeoutMs: 2_000,
      pollIntervalMs: 20,
    });
    const result = await reframe({ imageUrl: IMAGE, signal: new AbortController().signal });
    assert.deepEqual([result.width, result.height, result.aspect_ratio], [1920, 1080, "16:9"]);
    assert.equal(fake.requests[0].path, `/${MODEL}`);
  } finally {
    await fake.close();
  }
});

Deno.test("a wrong key is unrecoverable and names fal's reason", async () => {
  await using h = await harness({ key: "wrong" });
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof UnrecoverableError, String(error));
  assert.equal(
    error.message,
    "fal rejected the request (401): No user found for Key ID and Secret",
  );
  assert.equal(h.fake.requests[0].auth, "Key wrong");
  assert.equal(h.fake.requests.length, 1, "not retried");
});

Deno.test("a 422 is unrecoverable and names the field and fal's message", async () => {
  await using h = await harness();
  h.fake.fault("submit-422");
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof UnrecoverableError, String(error));
  assert.equal(
    error.message,
    "fal rejected the request (422): image_url: Unsupported image format",
  );
  assert.equal(h.fake.requests.length, 1, "not retried");
});

Deno.test("a 429 is retryable with retryAfterMs from Retry-After, without hidden retries", async () => {
  await using h = await harness();
  h.fake.fault({ kind: "submit-429", retryAfterS: 7 });
  const started = Date.now();
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.equal(error.retryAfterMs, 7_000);
  assert.equal(error.message, "fal rate limited the request (429): Rate limit exceeded");
  assert.equal(h.fake.requests.length, 1, "the client's own retry loop is bypassed");
  assert.ok(Date.now() - started < 500, "fails fast");
});

Deno.test("5xx on submit, status or result is retryable", async () => {
  await using h = await harness();

  h.fake.fault("submit-500");
  let error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.equal(error.message, "fal rejected the request (500): Internal Server Error");
  assert.equal(error.retryAfterMs, undefined);

  h.fake.fault("status-500");
  error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.match(
    error.message,
    /^fal failed to report the status of request "[0-9a-f-]{36}" \(500\)/,
  );

  h.fake.fault("result-500");
  error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.match(
    error.message,
    /^fal request "[0-9a-f-]{36}" failed \(500\): Internal Server Error$/,
  );
});

Deno.test("a fault with times fails only that many calls", async () => {
  await using h = await harness();
  h.fake.fault({ kind: "submit-500", times: 1 });
  await assert.rejects(run(h), RetryableError);
  const result = await run(h);
  assert.equal(result.width, 1080);
});

Deno.test("a job that ends in an error is unrecoverable with fal's message", async () => {
  await using h = await harness();
  h.fake.fault("job-error");
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof UnrecoverableError, String(error));
  const id = h.fake.requests[1].path.split("/")[4];
  assert.equal(
    error.message,
    `fal request "${id}" failed (422): image_url: Failed to load the image`,
  );
});

Deno.test("a result without an image is an error", async () => {
  await using h = await harness();
  h.fake.fault("no-image");
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof UnrecoverableError, String(error));
  assert.match(error.message, /^fal request "[0-9a-f-]{36}" returned no image$/);
});

Deno.test("a request that never completes times out, is cancelled and is retryable", async () => {
  await using h = await harness({ timeoutMs: 500 });
  h.fake.fault("never-complete");
  const started = Date.now();
  const error = await run(h).then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.ok(h.fake.requests.length >= 2, "submitted, then polled");
  const id = h.fake.requests[1].path.split("/")[4];
  assert.equal(error.message, `fal request "${id}" timed out after 500 ms`);
  assert.ok(Date.now() - started < 2_500, "gives up at the budget");
  assert.deepEqual(calls(h.fake).at(-1), `PUT /fal-ai/luma-photon/requests/${id}/cancel`);

  // fal then reports the request as cancelled.
  const status = await fetch(`${h.fake.url}/fal-ai/luma-photon/requests/${id}/status`, {
    headers: { authorization: `Key ${KEY}` },
  }).then((r) => r.json());
  assert.equal(status.status, "COMPLETED");
  assert.equal(status.error_type, "client_cancelled");
});

Deno.test("aborting the signal cancels the fal request and rejects with the reason", async () => {
  await using h = await harness();
  h.fake.fault("never-complete");
  const controller = new AbortController();
  const pending = run(h, controller.signal);
  await waitFor(() => h.fake.requests.some((r) => r.path.endsWith("/status")), "a status poll");
  const reason = new Error("Shutting down");
  controller.abort(reason);
  await assert.rejects(pending, (error) => error === reason);
  const id = h.fake.requests[1].path.split("/")[4];
  assert.ok(calls(h.fake).includes(`PUT /fal-ai/luma-photon/requests/${id}/cancel`));
});

Deno.test("an already aborted signal sends nothing", async () => {
  await using h = await harness();
  const reason = new Error("Shutting down");
  await assert.rejects(run(h, AbortSignal.abort(reason)), (error) => error === reason);
  assert.equal(h.fake.requests.length, 0);
});

Deno.test("an unreachable fal is retryable", async () => {
  const fake = await startFalServer({ key: KEY });
  const url = fake.url;
  await fake.close();
  const reframe = createFalReframe({
    key: KEY,
    model: MODEL,
    aspectRatio: "9:16",
    baseUrl: url,
    timeoutMs: 2_000,
    pollIntervalMs: 20,
  });
  const error = await reframe({ imageUrl: IMAGE, signal: new AbortController().signal })
    .then(() => null, (e) => e);
  assert.ok(error instanceof RetryableError, String(error));
  assert.equal(error.message, `Could not reach fal at "${url}"`);
});
