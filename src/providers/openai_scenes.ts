import OpenAI, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  APIUserAbortError,
} from "openai";
import type {
  ChatCompletionContentPart,
  ChatCompletionMessageParam,
} from "openai/resources/chat/completions";
import { z } from "zod";
import type { Config } from "../config.ts";
import { RetryableError, UnrecoverableError } from "../errors.ts";
import { type Scene, type SceneChange, SceneChangeSchema, SceneSchema } from "../pipeline/scene.ts";
import type { SceneWriter } from "../pipeline/steps/scenes.ts";
import { parseRetryAfter } from "../retry.ts";

export interface OpenAIScenesOptions {
  apiKey: string;
  /** The caller picks it (gpt-4o by default); the model must support Structured Outputs. */
  model: string;
  /** OPENAI_BASE_URL; https://api.openai.com/v1 when absent. */
  baseURL?: string;
  sceneCount: number;
  timeoutMs: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

const FIELDS = `Each scene has: scene_number (1, 2, 3, ... in order), visual_description (what the
camera sees, featuring the product in the image as it really looks), voiceover (the spoken line),
shot_type (e.g. close-up, wide shot), sound_effects, music_direction and duration_seconds (> 0).`;

const GENERATE_SYSTEM = `You write scenes for short product videos. The attached image shows the
product: every scene must fit it (its look, colours, materials and use). ${FIELDS}
Write exactly the number of scenes the response schema asks for. If the user's prompt already
breaks the video down scene by scene ("Scene 1: ... Voiceover: \\"...\\""), keep its scenes: the
same count, the same order, and each voiceover line word for word; only fill in what it leaves out.`;

const REVISE_SYSTEM = `You revise the scenes of a short product video. The attached image shows the
product: every scene must keep fitting it. ${FIELDS}
Change only what the revision request asks for and copy every other scene and field unchanged.
Return all scenes, in order, with their scene_number kept, and one entry in "changes" per scene:
its scene_number, whether it changed, and a one-sentence summary of the change ("" if unchanged).`;

/**
 * Scenes from OpenAI chat completions with Structured Outputs (strict JSON schema derived from
 * zod). The SDK does not retry: failures surface as RetryableError (429 with retryAfterMs, 5xx,
 * timeouts, connection errors, answers that are not valid JSON or miss the schema, since a new
 * sample may be valid) or UnrecoverableError (other 4xx, refusals, content filter), and the
 * worker decides.
 */
export function createOpenAIScenes(options: OpenAIScenesOptions) {
  const client = new OpenAI({
    apiKey: options.apiKey,
    baseURL: options.baseURL ?? "https://api.openai.com/v1",
    // Explicit so the SDK does not pick these up from the environment behind config.ts's back.
    organization: null,
    project: null,
    webhookSecret: null,
    maxRetries: 0,
    timeout: options.timeoutMs,
  });

  async function complete<T extends z.ZodType>(
    schema: T,
    name: string,
    messages: ChatCompletionMessageParam[],
    signal: AbortSignal,
  ): Promise<{ data: z.infer<T>; usage: Usage; model: string }> {
    let completion: OpenAI.ChatCompletion;
    try {
      completion = await client.chat.completions.create({
        model: options.model,
        messages,
        response_format: {
          type: "json_schema",
          json_schema: { name, strict: true, schema: strictJsonSchema(schema) },
        },
      }, { signal, timeout: options.timeoutMs, maxRetries: 0 });
    } catch (error) {
      throw toPipelineError(error, options.timeoutMs);
    }
    const choice = completion.choices[0];
    if (!choice) throw new RetryableError("OpenAI returned no choices");
    const { message, finish_reason: finish } = choice;
    if (message.refusal) throw new UnrecoverableError(`Model refused: ${message.refusal}`);
    if (finish === "content_filter") {
      throw new UnrecoverableError("OpenAI's content filter stopped the scenes");
    }
    if (finish === "length") {
      throw new RetryableError("OpenAI stopped at the token limit before the scenes were complete");
    }
    if (!message.content) throw new RetryableError("OpenAI returned an empty message");
    let json: unknown;
    try {
      json = JSON.parse(message.content);
    } catch (error) {
      throw new RetryableError(
        `OpenAI returned content that is not valid JSON (${(error as Error).message}): ` +
          JSON.stringify(message.content.slice(0, 80)),
        { cause: error },
      );
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) =>
        `${i.path.join(".") || "(root)"}: ${i.message}`
      );
      throw new RetryableError(`OpenAI's answer does not match the schema: ${issues.join("; ")}`, {
        cause: parsed.error,
      });
    }
    return { data: parsed.data, usage: usageOf(completion.usage), model: completion.model };
  }

  return {
    /**
     * Writes `sceneCount` scenes, or as many as the prompt's scene-by-scene breakdown has, in its
     * order and with its voiceovers (asked for in the system prompt; the count is checked).
     */
    async generate(input: { prompt: string; imageUrl: string; signal: AbortSignal }) {
      const count = scriptedSceneCount(input.prompt) || options.sceneCount;
      const { data, usage, model } = await complete(
        z.object({ scenes: scenesOf(count) }),
        "video_scenes",
        [
          { role: "system", content: GENERATE_SYSTEM },
          userMessage(`Write ${count} scenes for this video:\n\n${input.prompt}`, input.imageUrl),
        ],
        input.signal,
      );
      return { scenes: data.scenes as Scene[], usage, model };
    },

    /**
     * Revises `previous` as the prompt asks, returning every scene. `changed` is computed by
     * comparing with `previous` (the model's own flag is not trusted); `summary` is the model's.
     */
    async revise(
      input: { prompt: string; imageUrl: string; previous: Scene[]; signal: AbortSignal },
    ) {
      const count = input.previous.length;
      if (count === 0) throw new UnrecoverableError("There are no previous scenes to revise");
      const { data, usage, model } = await complete(
        z.object({ scenes: scenesOf(count), changes: SceneChangeSchema.array() }),
        "video_scene_revision",
        [
          { role: "system", content: REVISE_SYSTEM },
          userMessage(
            `Current scenes (JSON):\n${JSON.stringify(input.previous, null, 2)}\n\n` +
              `Revision request:\n${input.prompt}`,
            input.imageUrl,
          ),
        ],
        input.signal,
      );
      const scenes = data.scenes as Scene[];
      const changes: SceneChange[] = scenes.map((scene, i) => ({
        scene_number: scene.scene_number,
        changed: !sameScene(scene, input.previous[i]),
        summary: data.changes.find((c) => c.scene_number === scene.scene_number)?.summary ?? "",
      }));
      return { scenes, changes, usage, model };
    },
  };
}

/** Most scenes a video gets, however many the prompt lists (SCENE_COUNT has the same cap). */
const MAX_SCENES = 20;

/** How many "Scene N:" lines the prompt has: a breakdown whose count and order are kept. */
function scriptedSceneCount(prompt: string): number {
  return Math.min(MAX_SCENES, prompt.match(/^\s*Scene\s+\d+\s*[:.\-–]/gim)?.length ?? 0);
}

/** Exactly `count` scenes numbered 1..count; minItems/maxItems also tell the model the count. */
function scenesOf(count: number) {
  return z.array(SceneSchema).length(count, {
    error: (issue) =>
      `expected ${count} scenes, got ${Array.isArray(issue.input) ? issue.input.length : "?"}`,
  }).superRefine((scenes, ctx) => {
    const numbers = scenes.map((s) => s.scene_number);
    if (numbers.some((n, i) => n !== i + 1)) {
      ctx.addIssue({
        code: "custom",
        message: `expected scene_number 1 to ${count} in order, got ${numbers.join(", ")}`,
      });
    }
  });
}

function userMessage(text: string, imageUrl: string): ChatCompletionMessageParam {
  const content: ChatCompletionContentPart[] = [
    { type: "text", text },
    { type: "image_url", image_url: { url: imageUrl } },
  ];
  return { role: "user", content };
}

function sameScene(a: Scene, b: Scene | undefined): boolean {
  return b !== undefined &&
    (Object.keys(SceneSchema.shape) as (keyof Scene)[]).every((key) => a[key] === b[key]);
}

function usageOf(usage: OpenAI.CompletionUsage | undefined): Usage {
  return {
    prompt_tokens: usage?.prompt_tokens ?? 0,
    completion_tokens: usage?.completion_tokens ?? 0,
    total_tokens: usage?.total_tokens ?? 0,
  };
}

/** Maps the SDK's errors onto the pipeline's: retry what a later attempt may fix. */
function toPipelineError(error: unknown, timeoutMs: number): Error {
  // Subclasses first: the abort and connection errors are APIErrors without a status.
  if (error instanceof APIUserAbortError) {
    return new RetryableError("OpenAI request was aborted", { cause: error });
  }
  if (error instanceof APIConnectionTimeoutError) {
    return new RetryableError(`OpenAI request timed out after ${timeoutMs} ms`, { cause: error });
  }
  if (error instanceof APIConnectionError) {
    return new RetryableError(`Could not reach OpenAI: ${error.message}`, { cause: error });
  }
  if (!(error instanceof APIError) || error.status === undefined) return error as Error;
  const body = error.error as { message?: unknown } | undefined;
  const detail = typeof body?.message === "string" ? body.message : error.message;
  const message = `OpenAI returned ${error.status}: ${detail}`;
  const shouldRetry = error.headers?.get("x-should-retry");
  if (error.status === 429) {
    return new RetryableError(message, {
      cause: error,
      retryAfterMs: parseRetryAfter(error.headers),
    });
  }
  // 408 and 409 (lock timeout) are transient too; the API may also say so explicitly.
  if (
    shouldRetry === "true" ||
    (shouldRetry !== "false" && (error.status >= 500 || [408, 409].includes(error.status)))
  ) {
    return new RetryableError(message, { cause: error });
  }
  return new UnrecoverableError(message, { cause: error });
}

/**
 * Structured Outputs' strict mode takes a subset of JSON Schema: every object closed
 * (`additionalProperties: false`) with every property required, and only some keywords. zod's
 * output is rewritten to that subset; dropping a constraint (exclusiveMinimum, the safe-integer
 * bounds of .int()) only loses a hint to the model, because the answer is still validated by zod.
 */
function strictJsonSchema(schema: z.ZodType): Record<string, unknown> {
  return _strictNode(z.toJSONSchema(schema, { target: "draft-2020-12", io: "output" }), "");
}

const STRICT_KEYWORDS = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "anyOf",
  "$defs",
  "$ref",
  "enum",
  "const",
  "description",
  "minItems",
  "maxItems",
  "minimum",
  "maximum",
  "pattern",
  "format",
]);

function _strictNode(node: unknown, path: string): Record<string, unknown> {
  const source = node as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(source)) {
    if (!STRICT_KEYWORDS.has(key)) continue;
    if ((key === "minimum" || key === "maximum") && Math.abs(value as number) >= 2 ** 53 - 1) {
      continue;
    }
    if (key === "properties" || key === "$defs") {
      out[key] = Object.fromEntries(
        Object.entries(value as Record<string, unknown>).map((
          [name, child],
        ) => [name, _strictNode(child, `${path}/${name}`)]),
      );
    } else if (key === "items") {
      out[key] = _strictNode(value, `${path}/items`);
    } else if (key === "anyOf") {
      out[key] = (value as unknown[]).map((child, i) => _strictNode(child, `${path}/anyOf/${i}`));
    } else {
      out[key] = value;
    }
  }
  if (out.type === "object") {
    const keys = Object.keys((out.properties ?? {}) as Record<string, unknown>);
    const required = new Set((out.required ?? []) as string[]);
    const optional = keys.filter((key) => !required.has(key));
    if (optional.length > 0) {
      // Strict mode would force the model to fill them; model them as nullable instead.
      throw new Error(`Optional properties cannot be strict at "${path || "/"}": ${optional}`);
    }
    out.required = keys;
    out.additionalProperties = false;
  }
  return out;
}

/** The scenes step's live provider: OpenAI, configured by OPENAI_* settings and SCENE_COUNT. */
export function openAISceneWriter(config: Config): SceneWriter {
  const writer = createOpenAIScenes({
    apiKey: config.OPENAI_API_KEY ?? "",
    model: config.OPENAI_MODEL,
    baseURL: config.OPENAI_BASE_URL,
    sceneCount: config.SCENE_COUNT,
    timeoutMs: config.SCENES_TIMEOUT_MS,
  });
  return {
    async generate(input) {
      const { scenes, model, usage } = await writer.generate(input);
      return { scenes, provider: `openai:${model}`, usage };
    },
    async revise(input) {
      const { scenes, changes, model, usage } = await writer.revise(input);
      return { scenes, changes, provider: `openai:${model}`, usage };
    },
  };
}
