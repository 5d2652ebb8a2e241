import { z } from "zod";
import { SceneChangeSchema, SceneSchema, StepName, TaskResultSchema } from "../events.ts";

/** Response shapes, declared once for the OpenAPI document. */
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

export const TaskViewSchema = z.object({
  task_id: z.string(),
  video_id: z.string().nullable(),
  user_id: z.string().nullable(),
  is_revision: z.boolean(),
  status: z.enum(["queued", "processing", "completed", "failed"]),
  current_step: StepName.nullable(),
  attempts: z.number().int(),
  created_at: z.string().nullable(),
  updated_at: z.string().nullable(),
  steps: z.record(z.string(), z.object({ duration_ms: z.number(), attempt: z.number().int() })),
  result: TaskResultSchema.nullable(),
  error: z.object({
    message: z.string(),
    step: StepName.nullable(),
    retryable: z.boolean(),
    attempt: z.number().int(),
  }).nullable(),
  retrying: z.boolean(),
  dead_letter_entry: z.string().nullable(),
  callback: z.object({
    state: z.enum(["retrying", "delivered", "failed"]),
    webhook_id: z.string(),
    attempts: z.number().int(),
    last_status_code: z.number().int().nullable(),
    last_error: z.string().nullable(),
  }).nullable().describe("Delivery of the outcome to callback_url, when one was given"),
  run: z.number().int().describe("1, then one more per reprocess"),
  event_count: z.number().int(),
  last_event_id: z.string().nullable(),
});

export const TimelineSchema = z.object({
  task_id: z.string(),
  events: z.array(z.object({
    id: z.string(),
    type: z.string(),
    at: z.string(),
    data: z.record(z.string(), z.unknown()),
  })),
});

export const VideoScenesSchema = z.object({
  video_id: z.string(),
  revision: z.number().int(),
  task_id: z.string(),
  scenes: z.array(SceneSchema),
  image_url: z.string(),
  reframed: z.boolean(),
  provider: z.object({ reframe: z.string(), scenes: z.string() }),
  changes: z.array(SceneChangeSchema).optional(),
  updated_at: z.string(),
});

const GroupSchema = z.object({
  stream: z.string(),
  group: z.string(),
  stream_length: z.number().int(),
  pending: z.number().int(),
  lag: z.number().int().nullable(),
  consumers: z.number().int(),
});

export const StatsSchema = z.object({
  total_requests: z.number().int(),
  queued_tasks: z.number().int(),
  processing_tasks: z.number().int(),
  completed_tasks: z.number().int(),
  failed_tasks: z.number().int(),
  dead_lettered_tasks: z.number().int(),
  average_processing_time: z.number().describe("Seconds, over completed tasks"),
  processing_time_ms: z.object({ average: z.number(), p50: z.number(), p95: z.number() }),
  step_average_ms: z.record(z.string(), z.number()),
  callbacks: z.object({ delivered: z.number().int(), failed: z.number().int() }),
  throughput_last_minute: z.object({
    finished: z.number().int(),
    per_second: z.number(),
  }),
  consumer_groups: z.array(GroupSchema),
  replay_horizon: z.object({
    stream_retention_s: z.number().int(),
    oldest_event_at: z.string().nullable(),
  }).describe("Tasks older than the oldest event cannot be reprocessed or rebuilt from the log"),
});

export const HealthSchema = z.object({
  status: z.enum(["ok", "unavailable"]),
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
    error: z.string().optional(),
  }),
  consumer_groups: z.array(GroupSchema),
});
