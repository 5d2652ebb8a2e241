/**
 * The OpenAPI document against what the service answers: every route of the Hono app is in the
 * document (and the other way round), every route is sent a success and its error cases, and each
 * answer's status must be documented for that route, with a body that validates against the
 * documented schema of that status and content type (problem+json for errors). A status the
 * document lists that no case here triggers must be named in NOT_TRIGGERED with the reason.
 */
import assert from "node:assert/strict";
import { runConsumers, type TestEnv, testEnv, waitFor } from "./_helpers.ts";
import { fixture, freePort } from "./_helpers.ts";
import { closeRedis, connectRedis } from "../src/redis/client.ts";

const ADMIN = "admin-token-0123456789";
const READ = "read-token-0123456789";
const WEBHOOK = "webhook-token-0123456789";
const SECRET = `whsec_${btoa("sixteen-bytes-ok")}`;

/** Routes that serve the document itself and its viewer: not API routes, not described. */
const META = new Set(["GET /openapi.json", "GET /docs", "GET /docs/assets/:name"]);
const META_PREFIX = "GET /docs/";
/** The operator dashboard's pages and forms (src/dashboard/): a UI, not API routes. */
const UI_PATH = "/dashboard";

/** Documented statuses no in-process case triggers, each with why. */
const NOT_TRIGGERED: Record<string, string> = {
  "GET /task/{task_id}/stream 204":
    "needs Last-Event-ID at a finished task's last event after its callback outcome",
  "GET /task/{task_id}/stream 503": "needs SSE_MAX_CLIENTS streams held open at once",
  "GET /events/stream 503": "needs SSE_MAX_CLIENTS streams held open at once",
};

// A minimal JSON Schema (2020-12 subset the generator emits) validator.
type Schema = Record<string, unknown>;
function validate(schema: Schema, value: unknown, path = "$"): string[] {
  const errors: string[] = [];
  if (schema.anyOf || schema.oneOf) {
    const options = (schema.anyOf ?? schema.oneOf) as Schema[];
    if (!options.some((s) => validate(s, value, path).length === 0)) {
      errors.push(`${path}: matches none of ${options.length} options`);
    }
  }
  if (schema.allOf) {
    for (const s of schema.allOf as Schema[]) {
      errors.push(...validate(s, value));
    }
  }
  if ("const" in schema && value !== schema.const) errors.push(`${path}: not ${schema.const}`);
  if (schema.enum && !(schema.enum as unknown[]).includes(value)) {
    errors.push(`${path}: ${JSON.stringify(value)} not in ${JSON.stringify(schema.enum)}`);
  }
  if (schema.type !== undefined) {
    const types = [schema.type].flat() as string[];
    const actual = value === null
      ? "null"
      : Array.isArray(value)
      ? "array"
      : Number.isInteger(value)
      ? "integer"
      : typeof value;
    const ok = types.includes(actual) || (actual === "integer" && types.includes("number"));
    if (!ok) return [...errors, `${path}: ${actual} where ${types.join("|")} expected`];
  }
  if (typeof value === "number") {
    if (typeof schema.minimum === "number" && value < schema.minimum) errors.push(`${path}: <min`);
    if (typeof schema.maximum === "number" && value > schema.maximum) errors.push(`${path}: >max`);
  }
  if (Array.isArray(value) && schema.items) {
    value.forEach((v, i) => errors.push(...validate(schema.items as Schema, v, `${path}[${i}]`)));
  }
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const record = value as Record<string, unknown>;
    const properties = (schema.properties ?? {}) as Record<string, Schema>;
    for (const field of (schema.required ?? []) as string[]) {
      if (!(field in record)) errors.push(`${path}.${field}: missing`);
    }
    for (const [field, v] of Object.entries(record)) {
      if (properties[field]) errors.push(...validate(properties[field], v, `${path}.${field}`));
      else if (schema.additionalProperties === false) errors.push(`${path}.${field}: unexpected`);
      else if (typeof schema.additionalProperties === "object") {
        errors.push(...validate(schema.additionalProperties as Schema, v, `${path}.${field}`));
      }
    }
  }
  return errors;
}

interface Case {
  /** The documented operation: "GET /task/{task_id}". */
  route: string;
  url: string;
  status: number;
  method?: string;
  headers?: Record<string, string>;
  body?: BodyInit;
  /** Streams (SSE): only the status and headers are read, then the body is cancelled. */
  stream?: boolean;
}

interface Doc {
  paths: Record<string, Record<string, { responses: Record<string, Response_> }>>;
  components: { securitySchemes: Record<string, Record<string, string>> };
}
interface Response_ {
  content?: Record<string, { schema: Schema }>;
}

/** Sends a case and checks its answer against the document; returns the status key seen. */
async function check(env: TestEnv, doc: Doc, c: Case): Promise<string> {
  const [method, path] = c.route.split(" ");
  const res = await env.services.app.request(c.url, {
    method: c.method ?? method,
    headers: c.headers,
    body: c.body,
  });
  const what = `${c.route} (${c.url}) answered ${res.status}`;
  const operation = doc.paths[path]?.[method.toLowerCase()];
  assert.ok(operation, `${c.route} is not in the document`);
  const documented = operation.responses[String(res.status)];
  if (c.stream || !documented?.content) await res.body?.cancel();
  assert.equal(res.status, c.status, `${what}: ${c.stream ? "" : await res.clone().text()}`);
  assert.ok(documented, `${what}, which the document does not list for it`);
  const type = res.headers.get("content-type")?.split(";")[0].trim() ?? null;
  if (!documented.content) {
    assert.equal(res.body, null, `${what} with a body the document does not describe`);
    return `${c.route} ${res.status}`;
  }
  assert.ok(type && documented.content[type], `${what} as ${type}, not as documented`);
  if (res.status >= 400 && path !== "/health") {
    assert.equal(type, "application/problem+json", `${what}: errors are problem+json`);
  }
  if (c.stream) return `${c.route} ${res.status}`;
  const body = await res.json();
  const errors = validate(documented.content[type].schema, body);
  assert.deepEqual(errors, [], `${what}: the body does not match the document`);
  if (res.status >= 400 && type === "application/problem+json") {
    assert.equal(body.status, res.status, `${what}: the problem's status`);
  }
  return `${c.route} ${res.status}`;
}

/** The app's routes as "METHOD /openapi/{path}", meta routes left out. */
function appRoutes(env: TestEnv): Set<string> {
  const routes = new Set<string>();
  for (const r of env.services.app.routes) {
    if (r.method === "ALL") continue;
    const key = `${r.method} ${r.path}`;
    if (META.has(key) || key.startsWith(META_PREFIX) || r.path.startsWith(UI_PATH)) continue;
    routes.add(`${r.method} ${r.path.replace(/:(\w+)/g, "{$1}")}`);
  }
  return routes;
}

function documentedRoutes(doc: Doc): Set<string> {
  const routes = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of Object.keys(item)) routes.add(`${method.toUpperCase()} ${path}`);
  }
  return routes;
}

const json = (body: unknown, headers: Record<string, string> = {}) => ({
  headers: { "content-type": "application/json", ...headers },
  body: typeof body === "string" ? body : JSON.stringify(body),
});
const admin = { authorization: `Bearer ${ADMIN}` };
const reader = { "x-read-token": READ };
const webhook = { "x-webhook-token": WEBHOOK };

/** A body that never finishes arriving. */
function stalledBody(): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('{"video_id":'));
    },
  });
}

Deno.test("every route answers only documented statuses, with documented bodies", async () => {
  const env = await testEnv("contract", {
    ADMIN_TOKEN: ADMIN,
    READ_TOKEN: READ,
    WEBHOOK_TOKEN: WEBHOOK,
    WEBHOOK_SECRET: SECRET,
    MAX_BODY_BYTES: "8192",
    REQUEST_TIMEOUT_MS: "300",
    BODY_READS_MAX: "1",
  });
  const limited = await testEnv("contract-limited", {
    ADMIN_TOKEN: ADMIN,
    RATE_LIMIT_PER_MINUTE: "1",
  });
  const closed = await testEnv("contract-closed");
  const seen = new Set<string>();
  try {
    const doc: Doc = await (await env.services.app.request("/openapi.json")).json();

    // The document and the app list the same routes.
    assert.deepEqual([...appRoutes(env)].sort(), [...documentedRoutes(doc)].sort());

    // The security schemes: webhook token header, the signature headers, read and admin tokens.
    const schemes = doc.components.securitySchemes;
    assert.equal(schemes.webhookToken.name, "x-webhook-token");
    assert.equal(schemes.webhookToken.in, "header");
    assert.deepEqual(
      ["webhookId", "webhookTimestamp", "webhookSignature"].map((s) => schemes[s].name),
      ["webhook-id", "webhook-timestamp", "webhook-signature"],
    );
    assert.equal(schemes.readToken.name, "x-read-token");
    assert.equal(schemes.readBearer.scheme, "bearer");
    assert.equal(schemes.adminBearer.scheme, "bearer");
    const post = doc.paths["/webhook"].post as unknown as { security: unknown };
    assert.deepEqual(post.security, [
      { webhookToken: [] },
      { webhookId: [], webhookTimestamp: [], webhookSignature: [] },
    ]);

    // A completed task (its video view too) and a dead letter to read.
    const request = JSON.parse(await fixture("new-video.json"));
    const accepted = await env.services.app.request("/webhook", {
      method: "POST",
      ...json(request, webhook),
    });
    assert.equal(accepted.status, 202);
    const { task_id: taskId, video_id: videoId } = await accepted.json();
    const consumers = await runConsumers(env);
    try {
      await waitFor(async () => {
        const res = await env.services.app.request(`/task/${taskId}`, { headers: reader });
        return (await res.json()).status === "completed";
      }, { what: "the task to complete" });
    } finally {
      await consumers.stop(1_000);
    }
    const { redis, keys } = env.services;
    const deadId = await redis.xadd(
      keys.deadLetterStream,
      "*",
      ...[
        ["task_id", taskId],
        ["group", "workers"],
        ["entry", "1-0"],
        ["error", "x"],
        ["attempts", "1"],
        ["payload", "{}"],
        ["at", new Date().toISOString()],
      ].flat(),
    );

    const cases: Case[] = [
      // POST /webhook
      { route: "POST /webhook", url: "/webhook", status: 202, ...json(request, webhook) },
      { route: "POST /webhook", url: "/webhook", status: 401, ...json(request) },
      {
        route: "POST /webhook",
        url: "/webhook",
        status: 401,
        ...json(request, {
          "webhook-id": "msg_1",
          "webhook-timestamp": "1000",
          "webhook-signature": "v1,AAAA",
        }),
      },
      { route: "POST /webhook", url: "/webhook", status: 400, ...json("{nope", webhook) },
      {
        route: "POST /webhook",
        url: "/webhook",
        status: 413,
        ...json({ ...request, prompt: "x".repeat(9_000) }, webhook),
      },
      {
        route: "POST /webhook",
        url: "/webhook",
        status: 415,
        headers: { "content-type": "text/plain", ...webhook },
        body: "hello",
      },
      { route: "POST /webhook", url: "/webhook", status: 422, ...json({ a: 1 }, webhook) },
      // Projection routes.
      { route: "GET /task/{task_id}", url: `/task/${taskId}`, status: 200, headers: reader },
      { route: "GET /task/{task_id}", url: `/task/${taskId}`, status: 401 },
      { route: "GET /task/{task_id}", url: "/task/nope", status: 404, headers: reader },
      {
        route: "GET /videos/{video_id}/scenes",
        url: `/videos/${videoId}/scenes`,
        status: 200,
        headers: { authorization: `Bearer ${READ}` },
      },
      {
        route: "GET /videos/{video_id}/scenes",
        url: `/videos/${videoId}/scenes`,
        status: 401,
      },
      {
        route: "GET /videos/{video_id}/scenes",
        url: "/videos/nope/scenes",
        status: 404,
        headers: reader,
      },
      { route: "GET /stats", url: "/stats", status: 200, headers: reader },
      {
        route: "GET /tasks",
        url: `/tasks?q=${videoId}&status=completed&limit=10`,
        status: 200,
        headers: reader,
      },
      { route: "GET /tasks", url: "/tasks", status: 401 },
      { route: "GET /tasks", url: "/tasks?limit=0&status=weird", status: 400, headers: reader },
      { route: "GET /stats", url: "/stats", status: 401, headers: { "x-read-token": "wrong" } },
      {
        route: "GET /task/{task_id}/events",
        url: `/task/${taskId}/events`,
        status: 200,
        headers: reader,
      },
      { route: "GET /task/{task_id}/events", url: `/task/${taskId}/events`, status: 401 },
      {
        route: "GET /task/{task_id}/events",
        url: "/task/nope/events",
        status: 404,
        headers: reader,
      },
      { route: "GET /health", url: "/health", status: 200 },
      // Admin.
      {
        route: "POST /admin/replay",
        url: "/admin/replay",
        status: 200,
        ...json({ tasks: [taskId], dry_run: true }, admin),
      },
      { route: "POST /admin/replay", url: "/admin/replay", status: 400, ...json({}, admin) },
      { route: "POST /admin/replay", url: "/admin/replay", status: 400, ...json("{", admin) },
      {
        route: "POST /admin/replay",
        url: "/admin/replay",
        status: 422,
        ...json({ status: "weird" }, admin),
      },
      { route: "POST /admin/replay", url: "/admin/replay", status: 401, ...json({}) },
      {
        route: "GET /admin/tasks/{task_id}/events",
        url: `/admin/tasks/${taskId}/events`,
        status: 200,
        headers: admin,
      },
      {
        route: "GET /admin/tasks/{task_id}/events",
        url: "/admin/tasks/nope/events",
        status: 404,
        headers: admin,
      },
      {
        route: "GET /admin/tasks/{task_id}/events",
        url: `/admin/tasks/${taskId}/events`,
        status: 401,
        headers: { authorization: "Bearer wrong-token-0123456789" },
      },
      {
        route: "GET /admin/dead-letters",
        url: "/admin/dead-letters?count=5",
        status: 200,
        headers: admin,
      },
      {
        route: "GET /admin/dead-letters",
        url: "/admin/dead-letters?after=zzz",
        status: 400,
        headers: admin,
      },
      {
        route: "GET /admin/dead-letters",
        url: "/admin/dead-letters?count=0",
        status: 400,
        headers: admin,
      },
      { route: "GET /admin/dead-letters", url: "/admin/dead-letters", status: 401 },
      {
        route: "GET /admin/dead-letters/{id}",
        url: `/admin/dead-letters/${deadId}`,
        status: 200,
        headers: admin,
      },
      {
        route: "GET /admin/dead-letters/{id}",
        url: "/admin/dead-letters/1-1",
        status: 404,
        headers: admin,
      },
      { route: "GET /admin/dead-letters/{id}", url: `/admin/dead-letters/${deadId}`, status: 401 },
      {
        route: "POST /admin/dead-letters/redrive",
        url: "/admin/dead-letters/redrive",
        status: 200,
        ...json({ ids: [deadId], dry_run: true }, admin),
      },
      {
        route: "POST /admin/dead-letters/redrive",
        url: "/admin/dead-letters/redrive",
        status: 400,
        ...json({}, admin),
      },
      {
        route: "POST /admin/dead-letters/redrive",
        url: "/admin/dead-letters/redrive",
        status: 422,
        ...json({ ids: "x" }, admin),
      },
      {
        route: "POST /admin/dead-letters/redrive",
        url: "/admin/dead-letters/redrive",
        status: 401,
        ...json({ all: true }),
      },
    ];
    // Routes other work adds (kept when present, so this test follows the app).
    const routes = appRoutes(env);
    if (routes.has("GET /health/live")) {
      cases.push({ route: "GET /health/live", url: "/health/live", status: 200 });
    }
    if (routes.has("GET /task/{task_id}/stream")) {
      const route = "GET /task/{task_id}/stream";
      cases.push(
        {
          route,
          url: `/task/${taskId}/stream?follow=true`,
          status: 200,
          headers: reader,
          stream: true,
        },
        { route, url: `/task/${taskId}/stream`, status: 401 },
        { route, url: "/task/nope/stream", status: 404, headers: reader },
        {
          route,
          url: `/task/${taskId}/stream`,
          status: 400,
          headers: { ...reader, "last-event-id": "zzz" },
        },
      );
    }
    if (routes.has("GET /events/stream")) {
      const route = "GET /events/stream";
      cases.push(
        { route, url: "/events/stream", status: 200, headers: admin, stream: true },
        { route, url: "/events/stream", status: 401 },
        { route, url: "/events/stream", status: 400, headers: { ...admin, "last-event-id": "z" } },
      );
    }
    for (const c of cases) seen.add(await check(env, doc, c));

    // POST /webhook 408 (the body stops arriving) and 503 (no body-read slot: BODY_READS_MAX=1).
    const slow = env.services.app.request("/webhook", {
      method: "POST",
      headers: { "content-type": "application/json", ...webhook },
      body: stalledBody(),
    });
    await new Promise((r) => setTimeout(r, 30));
    seen.add(
      await check(env, doc, {
        route: "POST /webhook",
        url: "/webhook",
        status: 503,
        ...json(request, webhook),
      }),
    );
    const timedOut = await slow;
    const timedOutBody = await timedOut.json();
    assert.equal(timedOut.status, 408);
    assert.deepEqual(
      validate(
        doc.paths["/webhook"].post.responses["408"].content!["application/problem+json"].schema,
        timedOutBody,
      ),
      [],
    );
    seen.add("POST /webhook 408");

    // 429: one request a minute.
    const once = (key: string) => ({
      route: "POST /webhook",
      url: "/webhook",
      ...json({ ...request, idempotency_key: key }),
    });
    seen.add(await check(limited, doc, { ...once("first"), status: 202 }));
    seen.add(await check(limited, doc, { ...once("second"), status: 429 }));
    // 409: the first key again with another request (checked before the rate limit).
    seen.add(
      await check(limited, doc, {
        route: "POST /webhook",
        url: "/webhook",
        status: 409,
        ...json({ ...request, prompt: "another prompt", idempotency_key: "first" }),
      }),
    );
    // 409: a rebuild over a trimmed log, without force.
    await limited.services.redis.xtrim(limited.services.keys.eventStream, "MAXLEN", 0);
    seen.add(
      await check(limited, doc, {
        route: "POST /admin/replay",
        url: "/admin/replay",
        status: 409,
        ...json({ projections: true }, admin),
      }),
    );

    // Without ADMIN_TOKEN the admin routes answer 404.
    for (const route of documentedRoutes(doc)) {
      if (!route.includes("/admin/") && route !== "GET /events/stream") continue;
      const [method, path] = route.split(" ");
      const url = path.replace("{task_id}", "t").replace("{id}", "1-1");
      const c = method === "POST" ? json({}) : {};
      seen.add(await check(closed, doc, { route, url, status: 404, stream: true, ...c }));
    }
  } finally {
    for (const e of [env, limited, closed]) await e[Symbol.asyncDispose]();
  }

  // With Redis unreachable every route that reads it answers 503.
  const port = freePort();
  const server = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const probe = connectRedis(`redis://127.0.0.1:${port}`, { name: "probe" });
    await waitFor(() => probe.ping().then(() => true, () => false), { what: "redis-server" });
    await closeRedis(probe);
    const down = await testEnv("contract-down", {
      REDIS_URL: `redis://127.0.0.1:${port}`,
      ADMIN_TOKEN: ADMIN,
    });
    try {
      server.kill("SIGKILL");
      await server.status;
      const doc: Doc = await (await down.services.app.request("/openapi.json")).json();
      for (const route of documentedRoutes(doc)) {
        const [method, path] = route.split(" ");
        const { responses } = doc.paths[path][method.toLowerCase()];
        if (!responses["503"] || route.includes("/stream")) continue;
        const url = path.replace("{task_id}", "t").replace("{video_id}", "v")
          .replace("{id}", "1-1");
        const body = route === "POST /admin/replay"
          ? { tasks: ["t"] }
          : route === "POST /admin/dead-letters/redrive"
          ? { ids: ["1-1"] }
          : route === "POST /webhook"
          ? JSON.parse(await fixture("new-video.json"))
          : undefined;
        const c = body === undefined ? { headers: admin } : json(body, admin);
        seen.add(await check(down, doc, { route, url, status: 503, ...c }));
      }
    } finally {
      await down.services.close();
    }
  } finally {
    try {
      server.kill("SIGKILL");
    } catch { /* already gone */ }
    await server.status;
  }

  // Every documented status was triggered, or is named with the reason it cannot be here.
  const env2 = await testEnv("contract-doc");
  try {
    const doc: Doc = await (await env2.services.app.request("/openapi.json")).json();
    const untriggered = [];
    for (const route of documentedRoutes(doc)) {
      const [method, path] = route.split(" ");
      for (const status of Object.keys(doc.paths[path][method.toLowerCase()].responses)) {
        const key = `${route} ${status}`;
        if (!seen.has(key) && !NOT_TRIGGERED[key]) untriggered.push(key);
      }
    }
    assert.deepEqual(untriggered, [], "documented statuses no case triggers");
  } finally {
    await env2[Symbol.asyncDispose]();
  }
});
