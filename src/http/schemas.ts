import { z } from "zod";
import { GroupStatsSchema } from "../queries.ts";

/**
 * Response shapes of the routes the HTTP layer owns, declared once for the OpenAPI document. A
 * projection's response schema lives in its folder (src/projections/<name>/).
 */
export const AcceptedSchema = z.object({
  status: z.literal("success"),
  message: z.string(),
  task_id: z.string(),
  video_id: z.string(),
  timestamp: z.string(),
  duplicate: z.boolean().describe("True when the idempotency key was seen before"),
  status_url: z.string().describe("Where to poll the task's status"),
});

export const ProblemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
});

/** A task's timeline; the public one leaves out operator-only fields (`detail`). */
export const TimelineSchema = z.object({
  task_id: z.string(),
  events: z.array(z.object({
    id: z.string(),
    type: z.string(),
    at: z.string(),
    data: z.record(z.string(), z.unknown()),
  })),
});

export const HealthSchema = z.object({
  status: z.enum(["ok", "degraded", "unavailable"]).describe(
    '"unavailable": Redis is unreachable; "degraded": a consumer group the deployment runs is ' +
      "missing, has had no consumer for longer than HEALTH_MAX_CONSUMERLESS_S, or has an entry " +
      "pending longer than HEALTH_MAX_PENDING_AGE_S. Both answer 503",
  ),
  problems: z.array(z.string()).describe("Why the service is not ready; empty when it is"),
  redis: z.object({
    ok: z.boolean(),
    latency_ms: z.number().nullable(),
    aof: z.boolean().nullable().describe(
      "Whether Redis writes an append-only file; false means acknowledged webhooks since the " +
        "last snapshot are lost if Redis restarts; null when unknown",
    ),
  }),
  provider_mode: z.enum(["live", "offline"]),
  webhook_auth: z.enum(["none", "signature", "token", "signature or token"]).describe(
    '"none" means POST /webhook is unauthenticated',
  ),
  scene_sink: z.object({
    enabled: z.boolean().describe("False without SUPABASE_URL: scenes live in the Redis view only"),
    sink: z.string(),
    ok: z.boolean(),
    error: z.string().optional().describe("Why it cannot store; only with read access"),
  }),
  consumer_groups: z.array(GroupStatsSchema).optional().describe(
    "Backlog per consumer group; only with read access (the read token, or no READ_TOKEN set)",
  ),
});
