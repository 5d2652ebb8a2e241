import assert from "node:assert/strict";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import { type Scene, SceneSchema } from "../src/pipeline/scene.ts";
import { createOpenAIScenes, type OpenAIScenesOptions } from "../src/providers/openai_scenes.ts";
import { type OpenAIFake, type OpenAIFault, startOpenAIServer } from "./fakes/openai_server.ts";

const API_KEY = "sk-test-0123456789abcdef";
const IMAGE = "https://cdn.example.com/products/bottle.png";

async function withFake(
  fn: (fake: OpenAIFake, scenes: (o?: Partial<OpenAIScenesOptions>) => Scenes) => Promise<void>,
) {
  const fake = await startOpenAIServer({ apiKey: API_KEY });
  try {
    await fn(fake, (overrides = {}) =>
      createOpenAIScenes({
        apiKey: API_KEY,
        model: "gpt-4o",
        baseURL: fake.url,
        sceneCount: 3,
        timeoutMs: 2_000,
        ...overrides,
      }));
  } finally {
    await fake.close();
  }
}
type Scenes = ReturnType<typeof createOpenAIScenes>;

const signal = () => new AbortController().signal;
// deno-lint-ignore no-explicit-any
const userParts = (body: any) =>
  body.messages.find((m: { role: string }) => m.role === "user").content;

Deno.test("generate sends the image, a strict zod-derived schema and the model; returns validated scenes and usage", async () => {
  await withFake(async (fake, scenes) => {
    const result = await scenes({ sceneCount: 4 }).generate({
      prompt: "A 30-second ad for a steel water bottle on a mountain hike.",
      imageUrl: IMAGE,
      signal: signal(),
    });

    assert.equal(fake.requests.length, 1, "the SDK must not retry or send extra requests");
    const [{ path, body, auth }] = fake.requests;
    assert.equal(path, "/v1/chat/completions");
    assert.equal(auth, `Bearer ${API_KEY}`);
    assert.equal(body.model, "gpt-4o");
    assert.deepEqual(
      userParts(body).find((p: { type: string }) => p.type === "image_url"),
      { type: "image_url", image_url: { url: IMAGE } },
    );
    assert.ok(
      userParts(body).some((p: { text?: string }) => p.text?.includes("steel water bottle")),
    );
    assert.equal(body.response_format.type, "json_schema");
    assert.equal(body.response_format.json_schema.strict, true);
    const schema = body.response_format.json_schema.schema;
    assert.equal(schema.additionalProperties, false);
    assert.equal(schema.properties.scenes.minItems, 4);
    assert.equal(schema.properties.scenes.maxItems, 4);
    const item = schema.properties.scenes.items;
    assert.deepEqual(item.required.toSorted(), Object.keys(SceneSchema.shape).toSorted());
    assert.equal(item.additionalProperties, false);
    assert.ok(!JSON.stringify(schema).includes("exclusiveMinimum"));

    assert.equal(result.scenes.length, 4);
    assert.deepEqual(result.scenes.map((s) => s.scene_number), [1, 2, 3, 4]);
    for (const scene of result.scenes) SceneSchema.parse(scene);
    assert.equal(result.model, "gpt-4o-2024-08-06", "the model the API reports");
    assert.ok(result.usage.prompt_tokens > 0 && result.usage.completion_tokens > 0);
    assert.equal(
      result.usage.total_tokens,
      result.usage.prompt_tokens + result.usage.completion_tokens,
    );
  });
});

Deno.test("a scene-by-scene prompt keeps its count, order and voiceovers over sceneCount", async () => {
  await withFake(async (fake, scenes) => {
    const prompt = [
      "Make a punchy ad for the bottle.",
      'Scene 1: Sunrise over the ridge, bottle on a rock. Voiceover: "Start early."',
      'Scene 2: Hiker drinks, condensation on the steel. Voiceover: "Stay cold all day."',
      'Scene 3: Bottle clipped to a backpack at the summit. Voiceover: "Go further."',
    ].join("\n");
    const result = await scenes({ sceneCount: 5 }).generate({
      prompt,
      imageUrl: IMAGE,
      signal: signal(),
    });

    const asked = fake.requests[0].body.response_format.json_schema.schema.properties.scenes;
    assert.equal(asked.minItems, 3);
    assert.equal(asked.maxItems, 3);
    assert.match(fake.requests[0].body.messages[0].content, /same order/);
    assert.deepEqual(result.scenes.map((s) => s.voiceover), [
      "Start early.",
      "Stay cold all day.",
      "Go further.",
    ]);
    assert.deepEqual(result.scenes.map((s) => s.scene_number), [1, 2, 3]);
  });
});

Deno.test("revise sends the previous scenes and reports which scenes changed", async () => {
  await withFake(async (fake, scenes) => {
    const provider = scenes();
    const first = await provider.generate({
      prompt: "Bottle ad",
      imageUrl: IMAGE,
      signal: signal(),
    });
    const previous: Scene[] = first.scenes;
    const result = await provider.revise({
      prompt:
        'Only change scene 2.\nScene 2: Slow-motion pour. Voiceover: "Ice-cold, hours later."',
      imageUrl: IMAGE,
      previous,
      signal: signal(),
    });

    const body = fake.requests[1].body;
    const text = userParts(body).find((p: { type: string }) => p.type === "text").text;
    assert.ok(text.includes(JSON.stringify(previous, null, 2)), "previous scenes are sent");
    assert.ok(userParts(body).some((p: { type: string }) => p.type === "image_url"));
    assert.ok(body.response_format.json_schema.schema.properties.changes);
    assert.equal(body.response_format.json_schema.strict, true);

    assert.equal(result.scenes.length, 3);
    assert.equal(result.scenes[1].voiceover, "Ice-cold, hours later.");
    assert.deepEqual(result.scenes[0], previous[0]);
    assert.deepEqual(result.changes.map((c) => [c.scene_number, c.changed]), [
      [1, false],
      [2, true],
      [3, false],
    ]);
    assert.ok(result.changes.every((c) => typeof c.summary === "string"));
    assert.ok(result.usage.total_tokens > 0);
  });
});

const faults: [string, OpenAIFault, typeof RetryableError | typeof UnrecoverableError, RegExp][] = [
  ["500", { kind: "500" }, RetryableError, /^OpenAI returned 500: The server had an error/],
  ["refusal", { kind: "refusal" }, UnrecoverableError, /^Model refused: I'm sorry/],
  ["invalid-json", { kind: "invalid-json" }, RetryableError, /not valid JSON/],
  ["schema-invalid", { kind: "schema-invalid" }, RetryableError, /scenes\.0\.duration_seconds/],
  ["wrong-count", { kind: "wrong-count" }, RetryableError, /expected 3 scenes, got 4/],
];

for (const [name, fault, errorClass, message] of faults) {
  Deno.test(`fault ${name} becomes ${errorClass.name} on the first request`, async () => {
    await withFake(async (fake, scenes) => {
      fake.fault(fault);
      const error = await scenes().generate({ prompt: "Ad", imageUrl: IMAGE, signal: signal() })
        .then(() => null, (e) => e);
      assert.equal(error?.constructor, errorClass, String(error));
      assert.match(error.message, message);
      assert.equal(fake.requests.length, 1, "SDK retries are off");
    });
  });
}

Deno.test("a rejected API key is unrecoverable and carries the API's message", async () => {
  await withFake(async (fake, scenes) => {
    const error = await scenes({ apiKey: "sk-wrong-key-9999" })
      .generate({ prompt: "Ad", imageUrl: IMAGE, signal: signal() }).then(() => null, (e) => e);
    assert.ok(error instanceof UnrecoverableError, String(error));
    assert.match(error.message, /^OpenAI returned 401: Incorrect API key provided/);
    assert.equal(fake.requests.length, 1);
  });
});

Deno.test("429 is retryable with retryAfterMs from retry-after-ms, else retry-after", async () => {
  await withFake(async (fake, scenes) => {
    const provider = scenes();
    const attempt = () =>
      provider.generate({ prompt: "Ad", imageUrl: IMAGE, signal: signal() }).then(
        () => null,
        (e) => e,
      );

    fake.fault({ kind: "429", retryAfter: "7" });
    let error = await attempt();
    assert.ok(error instanceof RetryableError, String(error));
    assert.equal(error.retryAfterMs, 7_000);
    assert.match(error.message, /^OpenAI returned 429: Rate limit reached/);

    fake.fault({ kind: "429", retryAfter: "7", retryAfterMs: "1500" });
    error = await attempt();
    assert.equal(error.retryAfterMs, 1_500);

    fake.fault({ kind: "429", retryAfter: new Date(Date.now() + 30_000).toUTCString() });
    error = await attempt();
    assert.ok(error.retryAfterMs > 27_000 && error.retryAfterMs <= 30_000, error.retryAfterMs);

    assert.equal(fake.requests.length, 3, "the SDK did not wait and retry on its own");

    fake.fault({ kind: "429", times: 1 });
    assert.ok((await attempt()) instanceof RetryableError);
    assert.equal(await attempt(), null, "the next attempt succeeds once the fault is spent");
  });
});

Deno.test("a hanging API times out after timeoutMs as a RetryableError", async () => {
  await withFake(async (fake, scenes) => {
    fake.fault({ kind: "hang" });
    const started = performance.now();
    const error = await scenes({ timeoutMs: 300 })
      .generate({ prompt: "Ad", imageUrl: IMAGE, signal: signal() }).then(() => null, (e) => e);
    const elapsed = performance.now() - started;
    assert.ok(error instanceof RetryableError, String(error));
    assert.match(error.message, /timed out after 300 ms/);
    assert.ok(elapsed >= 250 && elapsed < 1_500, `took ${elapsed} ms`);
    assert.equal(fake.requests.length, 1);
  });
});

Deno.test("aborting the signal stops the request at once", async () => {
  await withFake(async (fake, scenes) => {
    fake.fault({ kind: "hang" });
    const abort = new AbortController();
    const started = performance.now();
    const pending = scenes({ timeoutMs: 5_000 })
      .generate({ prompt: "Ad", imageUrl: IMAGE, signal: abort.signal }).then(() => null, (e) => e);
    setTimeout(() => abort.abort(new Error("Shutting down")), 100);
    const error = await pending;
    assert.ok(error instanceof RetryableError, String(error));
    assert.match(error.message, /aborted/);
    assert.ok(performance.now() - started < 1_500);
  });
});
