/**
 * A local server speaking OpenAI's chat completions HTTP API, for tests through the real SDK.
 * Answers are generated from the request's strict JSON schema (which it checks the way the API
 * does), reusing the "Scene N: ... Voiceover: "..."" lines of the user's text when present.
 */

/** A failure injected into the next `times` chat completions (all of them when omitted). */
export type OpenAIFault =
  & { times?: number }
  & (
    /** 429 with `retry-after` (default "2") and, when given, `retry-after-ms`. */
    | { kind: "429"; retryAfter?: string; retryAfterMs?: string }
    | {
      kind:
        | "500" // server_error
        | "refusal" // message.refusal set, content null
        | "invalid-json" // content is the JSON inside a ```json fence
        | "schema-invalid" // the first array item misses its last required field
        | "wrong-count" // the first array gets one item more than asked for
        | "hang"; // never answers (no headers) until the server closes
    }
  );

export interface OpenAIRequest {
  path: string;
  // deno-lint-ignore no-explicit-any
  body: any;
  auth: string | null;
}

export interface OpenAIFake {
  /** Base URL including /v1, to pass as baseURL. */
  url: string;
  requests: OpenAIRequest[];
  fault(f: OpenAIFault | null): void;
  close(): Promise<void>;
}

type Schema = Record<string, unknown>;
type Script = Map<number, { description: string; voiceover?: string }>;

export async function startOpenAIServer(options: { apiKey: string }): Promise<OpenAIFake> {
  const requests: OpenAIRequest[] = [];
  const closing = new AbortController();
  let fault: OpenAIFault | null = null;
  let left = Infinity;

  const takeFault = () => {
    if (!fault || left <= 0) return null;
    left--;
    return fault;
  };

  async function handle(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    const text = await req.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch { /* recorded as null; answered below */ }
    const auth = req.headers.get("authorization");
    requests.push({ path, body, auth });

    if (req.method !== "POST" || path !== "/v1/chat/completions") {
      return error(404, `Invalid URL (${req.method} ${path})`, "invalid_request_error");
    }
    if (auth !== `Bearer ${options.apiKey}`) {
      const given = auth?.replace(/^Bearer\s+/i, "") ?? "";
      return error(
        401,
        `Incorrect API key provided: ${given.slice(0, 3)}***${given.slice(-4)}. You can find ` +
          "your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        null,
        "invalid_api_key",
      );
    }
    const request = body as Schema | null;
    if (!request || typeof request !== "object") {
      return error(
        400,
        "We could not parse the JSON body of your request.",
        "invalid_request_error",
      );
    }
    for (const param of ["model", "messages"]) {
      if (!request[param]) {
        return error(
          400,
          `Missing required parameter: '${param}'.`,
          "invalid_request_error",
          param,
          "missing_required_parameter",
        );
      }
    }
    const format = request.response_format as Schema | undefined;
    const jsonSchema = format?.type === "json_schema" ? format.json_schema as Schema : undefined;
    if (jsonSchema?.strict === true) {
      const problem = strictProblem(jsonSchema.schema as Schema, []);
      if (problem) {
        return error(
          400,
          `Invalid schema for response_format '${jsonSchema.name}': ${problem}`,
          "invalid_request_error",
          "response_format",
          "invalid_json_schema",
        );
      }
    }

    const active = takeFault();
    switch (active?.kind) {
      case "429":
        return error(
          429,
          `Rate limit reached for ${request.model} in organization org-fake on tokens per min ` +
            "(TPM): Limit 30000, Used 30000, Requested 1200. Please try again in 2s.",
          "tokens",
          null,
          "rate_limit_exceeded",
          {
            "retry-after": active.retryAfter ?? "2",
            ...(active.retryAfterMs ? { "retry-after-ms": active.retryAfterMs } : {}),
          },
        );
      case "500":
        return error(
          500,
          "The server had an error while processing your request. Sorry about that!",
          "server_error",
        );
      case "hang":
        // Until close(): Deno's request.signal also fires on delivered responses (legacy mode).
        await new Promise<void>((resolve) => {
          if (closing.signal.aborted) return resolve();
          closing.signal.addEventListener("abort", () => resolve(), { once: true });
        });
        return error(503, "Closed", "server_error");
    }

    const messages = request.messages as { role: string; content: unknown }[];
    const script = scriptOf(messages);
    let content: string | null = "Here are your scenes.";
    let refusal: string | null = null;
    if (jsonSchema) {
      const value = generate(jsonSchema.schema as Schema, { script, root: jsonSchema.schema });
      if (active?.kind === "schema-invalid") mutateFirstItem(value, "drop");
      if (active?.kind === "wrong-count") mutateFirstItem(value, "extra");
      content = JSON.stringify(value);
      if (active?.kind === "invalid-json") content = "```json\n" + content + "\n```";
    }
    if (active?.kind === "refusal") {
      content = null;
      refusal = "I'm sorry, I can't help with that request.";
    }
    const model = String(request.model);
    const promptTokens = Math.ceil(JSON.stringify(messages).length / 4);
    const completionTokens = Math.ceil((content ?? refusal ?? "").length / 4);
    return Response.json({
      id: `chatcmpl-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: /\d{4}-\d{2}-\d{2}$/.test(model) ? model : `${model}-2024-08-06`,
      choices: [{
        index: 0,
        message: { role: "assistant", content, refusal, annotations: [] },
        logprobs: null,
        finish_reason: "stop",
      }],
      usage: {
        prompt_tokens: promptTokens,
        completion_tokens: completionTokens,
        total_tokens: promptTokens + completionTokens,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      },
      service_tier: "default",
      system_fingerprint: "fp_fake",
    }, { headers: { "x-request-id": `req_${crypto.randomUUID().replaceAll("-", "")}` } });
  }

  const listening = Promise.withResolvers<void>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => listening.resolve() },
    handle,
  );
  await listening.promise;
  return {
    url: `http://127.0.0.1:${server.addr.port}/v1`,
    requests,
    fault(f) {
      fault = f;
      left = f?.times ?? Infinity;
    },
    async close() {
      closing.abort();
      await server.shutdown();
    },
  };
}

function error(
  status: number,
  message: string,
  type: string,
  param: string | null = null,
  code: string | null = null,
  headers: Record<string, string> = {},
): Response {
  return Response.json({ error: { message, type, param, code } }, { status, headers });
}

const SUPPORTED = new Set([
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

/** The first way a schema breaks strict mode, worded like the API's 400. */
function strictProblem(schema: Schema, context: string[]): string | null {
  const where = `In context=(${context.map((c) => `'${c}'`).join(", ")})`;
  for (const key of Object.keys(schema)) {
    if (!SUPPORTED.has(key)) return `${where}, '${key}' is not permitted.`;
  }
  if (schema.type === "object") {
    if (schema.additionalProperties !== false) {
      return `${where}, 'additionalProperties' is required to be supplied and to be false.`;
    }
    const properties = (schema.properties ?? {}) as Record<string, Schema>;
    const required = (schema.required ?? []) as string[];
    const missing = Object.keys(properties).find((key) => !required.includes(key));
    if (missing) {
      return `${where}, 'required' is required to be supplied and to be an array including ` +
        `every key in properties. Missing '${missing}'.`;
    }
    for (const [key, child] of Object.entries(properties)) {
      const problem = strictProblem(child, [...context, "properties", key]);
      if (problem) return problem;
    }
  }
  if (schema.items) return strictProblem(schema.items as Schema, [...context, "items"]);
  for (const [i, child] of ((schema.anyOf ?? []) as Schema[]).entries()) {
    const problem = strictProblem(child, [...context, "anyOf", String(i)]);
    if (problem) return problem;
  }
  return null;
}

/** "Scene N: description. Voiceover: "line"" lines of the user's text, by scene number. */
function scriptOf(messages: { role: string; content: unknown }[]): Script {
  const texts = messages.filter((m) => m.role === "user").flatMap((m) =>
    typeof m.content === "string"
      ? [m.content]
      : Array.isArray(m.content)
      ? m.content.filter((p) => p?.type === "text").map((p) => String(p.text))
      : []
  );
  const script: Script = new Map();
  for (const match of texts.join("\n").matchAll(/^\s*Scene\s+(\d+)\s*[:.\-–]\s*(.+)$/gim)) {
    const [description, voiceover] = match[2].split(/\bVoice-?over\s*:\s*/i);
    script.set(Number(match[1]), {
      description: description.trim(),
      voiceover: voiceover?.trim().replace(/^["“]|["”]$/g, ""),
    });
  }
  return script;
}

interface Context {
  script: Script;
  root: unknown;
  key?: string;
  index?: number;
}

/** A deterministic value of the schema: same schema and script, same answer. */
function generate(schema: Schema, ctx: Context): unknown {
  if (typeof schema.$ref === "string") {
    const target = schema.$ref.replace(/^#\//, "").split("/").reduce<unknown>(
      (node, part) => (node as Schema)?.[part],
      ctx.root,
    );
    return generate(target as Schema, ctx);
  }
  if (Array.isArray(schema.anyOf)) {
    const branch = (schema.anyOf as Schema[]).find((b) => b.type !== "null") ?? schema.anyOf[0];
    return generate(branch, ctx);
  }
  if (Array.isArray(schema.enum)) return schema.enum[0];
  if ("const" in schema) return schema.const;
  const type = Array.isArray(schema.type)
    ? schema.type.find((t) => t !== "null") ?? "null"
    : schema.type;
  const scene = ctx.index === undefined ? undefined : ctx.script.get(ctx.index + 1);
  switch (type) {
    case "object":
      return Object.fromEntries(
        Object.entries((schema.properties ?? {}) as Record<string, Schema>).map((
          [key, child],
        ) => [key, generate(child, { ...ctx, key })]),
      );
    case "array": {
      const min = schema.minItems as number | undefined;
      const max = schema.maxItems as number | undefined;
      const count = min ?? Math.min(max ?? Infinity, ctx.script.size || 3);
      return Array.from(
        { length: count },
        (_, index) => generate(schema.items as Schema, { ...ctx, index }),
      );
    }
    case "string":
      if (ctx.key === "voiceover" && scene?.voiceover) return scene.voiceover;
      if (ctx.key === "visual_description" && scene) return scene.description;
      return `${(ctx.key ?? "text").replaceAll("_", " ")} ${(ctx.index ?? 0) + 1}`;
    case "integer":
      return Math.max((schema.minimum as number | undefined) ?? 0, (ctx.index ?? 0) + 1);
    case "number":
      return Math.max((schema.minimum as number | undefined) ?? 0, 5);
    case "boolean":
      return true;
    default:
      return null;
  }
}

/** Breaks the first array of the answer: drops the last field of its first item, or adds one. */
function mutateFirstItem(value: unknown, how: "drop" | "extra") {
  const array = Object.values(value as Schema).find(Array.isArray) as Schema[] | undefined;
  if (!array?.length) return;
  if (how === "extra") array.push(structuredClone(array[array.length - 1]));
  else delete array[0][Object.keys(array[0]).at(-1)!];
}
