import type { OpenAPIHono } from "@hono/zod-openapi";
import { z } from "zod";
import type { ProjectionRoute } from "../projections/definition.ts";
import { VideoRequestSchema } from "../webhook.ts";
import { MAX_LIST_COUNT } from "../cli/rules.ts";
import { DeadLettersQuerySchema, RedriveRequestSchema, ReplayRequestSchema } from "./admin.ts";
import { AcceptedSchema, HealthSchema, ProblemSchema, TimelineSchema } from "./schemas.ts";

const json = (schema: z.ZodType, description: string) => ({
  description,
  content: { "application/json": { schema } },
});
const problem = (description: string, schema: z.ZodType = ProblemSchema) => ({
  description,
  content: { "application/problem+json": { schema } },
});
/** Every route that reads Redis answers 503 (with Retry-After) when it is unreachable. */
const UNAVAILABLE = { 503: problem("Redis is unreachable; retry after the Retry-After seconds") };

type Registry = OpenAPIHono["openAPIRegistry"];

/** The read routes accept the read token in its header or as a bearer token. */
const READ_SECURITY: { security: Record<string, string[]>[] } = {
  security: [{ readToken: [] }, { readBearer: [] }],
};
const READ_401 = { 401: problem("READ_TOKEN is set and the read token is missing or wrong") };

/** A projection's route: its params, its view's schema and its documented problems. */
function describeProjectionRoute(r: Registry, route: ProjectionRoute): void {
  const problems = Object.entries(route.problems).map(([status, text]) => [status, problem(text)]);
  r.registerPath({
    method: "get",
    path: route.path,
    summary: route.summary,
    ...READ_SECURITY,
    ...(route.params || route.query
      ? {
        request: {
          ...(route.params ? { params: route.params } : {}),
          ...(route.query ? { query: route.query } : {}),
        },
      }
      : {}),
    responses: {
      200: json(route.response.schema, route.response.description),
      ...READ_401,
      // Every projection route reads through fromRedis (projection_routes.ts): 503 is always
      // possible, whatever the projection declares.
      ...UNAVAILABLE,
      ...Object.fromEntries(problems),
    },
  });
}

/**
 * Declares every route in the OpenAPI registry, from the same zod schemas the handlers use;
 * the projections' routes come from the projection registry.
 */
export function describeRoutes(
  app: OpenAPIHono,
  projectionRoutes: readonly ProjectionRoute[],
  options: {
    readTokenHeader: string;
    /** WEBHOOK_TOKEN_HEADER (default x-webhook-token). */
    webhookTokenHeader?: string;
  },
): void {
  const r = app.openAPIRegistry;
  r.registerComponent("securitySchemes", "readToken", {
    type: "apiKey",
    in: "header",
    name: options.readTokenHeader,
    description: "READ_TOKEN, for the task, video and stats reads; they are open when it is unset",
  });
  r.registerComponent("securitySchemes", "readBearer", {
    type: "http",
    scheme: "bearer",
    description: "READ_TOKEN as a bearer token, instead of the header",
  });
  r.registerComponent("securitySchemes", "webhookToken", {
    type: "apiKey",
    in: "header",
    name: options.webhookTokenHeader ?? "x-webhook-token",
    description: "WEBHOOK_TOKEN (n8n's Header Auth); with WEBHOOK_SECRET set too, either one " +
      "suffices; POST /webhook is open when neither is set (see /health `webhook_auth`)",
  });
  // Standard Webhooks (WEBHOOK_SECRET): the three headers together are one way in.
  const signatureHeaders: [string, string, string][] = [
    ["webhookId", "webhook-id", "Message id; an id seen in the last 11 minutes is a replay (401)"],
    [
      "webhookTimestamp",
      "webhook-timestamp",
      "Seconds since the epoch, within 5 minutes of the server's clock",
    ],
    [
      "webhookSignature",
      "webhook-signature",
      "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, several space-separated while rotating; " +
      "checked against every WEBHOOK_SECRET",
    ],
  ];
  for (const [scheme, header, description] of signatureHeaders) {
    r.registerComponent("securitySchemes", scheme, {
      type: "apiKey",
      in: "header",
      name: header,
      description: `Standard Webhooks (WEBHOOK_SECRET): ${description}`,
    });
  }
  r.registerPath({
    method: "post",
    path: "/webhook",
    summary: "Queue a video request (flat body or n8n webhook-node envelope)",
    security: [
      { webhookToken: [] },
      { webhookId: [], webhookTimestamp: [], webhookSignature: [] },
    ],
    request: {
      body: {
        required: true,
        content: { "application/json": { schema: VideoRequestSchema } },
      },
    },
    responses: {
      202: json(AcceptedSchema, "Accepted: the task is in the log"),
      400: problem("The body is not valid JSON or UTF-8"),
      401: problem(
        "Authentication is on and the token or Standard Webhooks signature is missing, wrong, " +
          "outside the 5-minute window, or a replay; answered before the body is read",
      ),
      408: problem("The body did not arrive within REQUEST_TIMEOUT_MS"),
      413: problem("The body exceeds MAX_BODY_BYTES"),
      415: problem("The content type is not JSON"),
      422: problem(
        "Fields are missing or invalid, or unknown fields exceed UNKNOWN_FIELDS_MAX_BYTES; " +
          "`errors` names each",
      ),
      409: problem(
        "The idempotency_key was used by the same user for another request; `task_id` names " +
          "the first task",
        ProblemSchema.extend({ task_id: z.string() }),
      ),
      429: problem(
        "A rate limit is reached; retry after the Retry-After seconds",
        ProblemSchema.extend({ retry_after_s: z.number().int() }),
      ),
      503: problem(
        "Redis is unreachable, or too many bodies are being read at once, or (ACK_REPLICAS) the " +
          "write did not reach enough replicas in time; retry after the Retry-After seconds " +
          "(with the same idempotency_key)",
      ),
    },
  });
  for (const route of projectionRoutes) describeProjectionRoute(r, route);
  r.registerPath({
    method: "get",
    path: "/task/{task_id}/events",
    summary: "A task's timeline, read from the event log (operator-only fields left out)",
    ...READ_SECURITY,
    request: { params: z.object({ task_id: z.string() }) },
    responses: {
      200: json(TimelineSchema, "The events in order"),
      ...READ_401,
      404: problem("Unknown task"),
      ...UNAVAILABLE,
    },
  });
  r.registerPath({
    method: "get",
    path: "/health",
    summary: "Redis reachability; consumer groups only with read access (open, no token needed)",
    responses: {
      200: json(HealthSchema, "Ready"),
      503: json(
        HealthSchema,
        "Not ready: Redis is unreachable, or a consumer group the deployment runs is missing, " +
          "without a consumer or stuck (`problems` says which)",
      ),
    },
  });
  r.registerPath({
    method: "get",
    path: "/health/live",
    summary: "Liveness: the process answers (nothing a restart would fix is checked)",
    responses: { 200: json(z.object({ status: z.literal("ok") }), "Alive") },
  });
  r.registerComponent("securitySchemes", "adminBearer", {
    type: "http",
    scheme: "bearer",
    description: "ADMIN_TOKEN; the admin API answers 404 when it is not set",
  });
  const admin = { security: [{ adminBearer: [] }], tags: ["admin"] };
  const adminErrors = {
    401: problem("Missing or wrong admin token"),
    404: problem("The admin API is disabled (no ADMIN_TOKEN), or no such entry"),
    ...UNAVAILABLE,
  };
  const Outcome = z.object({
    task_id: z.string(),
    status: z.string(),
    run: z.number().int().optional(),
    skipped: z.string().optional(),
  });
  const DeadLetter = z.object({
    id: z.string(),
    task_id: z.string(),
    group: z.string(),
    entry: z.string(),
    error: z.string(),
    attempts: z.number().int(),
    at: z.string(),
    payload: z.string(),
    partition: z.number().int().optional().describe("With PARTITIONS > 1 (the id says it too)"),
  });
  const partitionQuery = z.object({
    partition: z.string().optional().describe(
      "Only this partition (PARTITIONS > 1); all by default. 400 for one that does not exist",
    ),
  });
  r.registerPath({
    method: "post",
    path: "/admin/replay",
    summary: "Rebuild the views and/or reprocess selected tasks (mirrors `deno task replay`)",
    ...admin,
    request: {
      query: partitionQuery,
      body: { required: true, content: { "application/json": { schema: ReplayRequestSchema } } },
    },
    responses: {
      200: json(
        z.object({ dry_run: z.boolean(), projections: z.unknown(), tasks: z.array(Outcome) }),
        "What was (or, in a dry run, would be) done",
      ),
      400: problem(
        "The body is not JSON, or asks for nothing or for a contradiction (what `deno task " +
          "replay` refuses with exit 2): no projections, tasks, since/until or status; since " +
          "after until; tasks together with since/until",
      ),
      409: problem("Rebuild refused: another runs, or the log was trimmed and force is not set"),
      422: problem("Fields of the wrong type or out of range; `errors` names each"),
      ...adminErrors,
    },
  });
  r.registerPath({
    method: "get",
    path: "/admin/tasks/{task_id}/events",
    summary: "A task's whole timeline, with the internal detail public reads leave out",
    ...admin,
    request: { params: z.object({ task_id: z.string() }) },
    responses: {
      200: json(TimelineSchema, "The events in order, callback errors' `detail` included"),
      ...adminErrors,
    },
  });
  r.registerPath({
    method: "get",
    path: "/admin/dead-letters",
    summary: "Dead letters, oldest first",
    ...admin,
    request: { query: DeadLettersQuerySchema.extend(partitionQuery.shape) },
    responses: {
      200: json(z.object({ dead_letters: z.array(DeadLetter) }), "Dead letters"),
      400: problem(
        `"count" is not an integer from 1 to ${MAX_LIST_COUNT}, or "after" not a dead-letter id`,
      ),
      ...adminErrors,
    },
  });
  r.registerPath({
    method: "get",
    path: "/admin/dead-letters/{id}",
    summary: "One dead letter",
    ...admin,
    request: { params: z.object({ id: z.string() }) },
    responses: { 200: json(DeadLetter, "The dead letter"), ...adminErrors },
  });
  r.registerPath({
    method: "post",
    path: "/admin/dead-letters/redrive",
    summary: "Move dead letters back to the work stream, each exactly once",
    ...admin,
    request: {
      query: partitionQuery,
      body: { required: true, content: { "application/json": { schema: RedriveRequestSchema } } },
    },
    responses: {
      200: json(
        z.object({
          dry_run: z.boolean(),
          outcomes: z.array(Outcome.extend({ dead_letter: z.string() })),
        }),
        "What was (or would be) redriven",
      ),
      400: problem("The body is not JSON, or gives neither or both of ids and all: true"),
      422: problem("Fields of the wrong type or out of range; `errors` names each"),
      ...adminErrors,
    },
  });
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "Video pipeline webhook API",
      version: "1.0.0",
      description: "Event-sourced webhook ingest and AI video tasks on Redis Streams",
    },
  });
}
