import process from "node:process";
import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** Every metric name starts with this. */
export const PREFIX = "video_pipeline_";

/** The service's version, as build info reports it (the OpenAPI document's too). */
export const VERSION = "1.0.0";

const name = (suffix: string) => `${PREFIX}${suffix}`;

/** Seconds: from a cache hit to a slow provider call. */
const FAST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Seconds: a provider call or a step, up to the 300 s reframe budget. */
const CALL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Seconds: a task end to end, or a wait in the queue. */
const TASK_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

/**
 * One process's Prometheus metrics: its own registry (built once in createServices and passed to
 * whoever observes), never prom-client's global one. Counters and histograms are this process's
 * since it started; the gauges read from Redis (consumer groups, dead letters) are set at scrape
 * time by `refresh` (src/metrics/scrape.ts) and are the same in every process.
 */
export function createMetrics() {
  const registry = new Registry();
  const registers = [registry];
  const counter = <L extends string>(suffix: string, help: string, labelNames: L[] = []) =>
    new Counter<L>({ name: name(suffix), help, labelNames, registers });
  const gauge = <L extends string>(suffix: string, help: string, labelNames: L[] = []) =>
    new Gauge<L>({ name: name(suffix), help, labelNames, registers });
  const histogram = <L extends string>(
    suffix: string,
    help: string,
    buckets: number[],
    labelNames: L[] = [],
  ) => new Histogram<L>({ name: name(suffix), help, labelNames, buckets, registers });

  const metrics = {
    registry,
    buildInfo: gauge(
      "build_info",
      "Always 1; the labels say which version runs on which Deno",
      ["version", "deno", "v8", "typescript"],
    ),
    startTime: gauge("process_start_time_seconds", "Start time of the process (Unix seconds)"),
    residentMemory: gauge("process_resident_memory_bytes", "Resident set size of the process"),
    heapUsed: gauge("process_heap_used_bytes", "V8 heap in use"),
    cpu: counter("process_cpu_seconds_total", "User and system CPU time of the process"),

    // Ingest and HTTP (the server).
    webhooks: counter(
      "webhooks_received_total",
      "POST /webhook requests by result (accepted, duplicate, rejected) and, when rejected, reason",
      ["result", "reason"],
    ),
    httpDuration: histogram(
      "http_request_duration_seconds",
      "HTTP requests by route pattern, method and status class (2xx, 4xx, ...)",
      FAST_BUCKETS,
      ["route", "method", "status_class"],
    ),
    uploadsCut: counter(
      "webhook_uploads_cut_total",
      "Webhook bodies this process did not read to the end: aborted by the client, timed_out " +
        "(REQUEST_TIMEOUT_MS), busy (a body-read cap), and connections closed instead of drained",
      ["reason"],
    ),
    sseClients: gauge("sse_clients", "Server-Sent Events clients connected to this process"),
    sseDropped: counter(
      "sse_clients_dropped_total",
      "SSE clients disconnected because they fell behind their buffer",
    ),

    // Tasks, from the events this process's consumers appended (consumers/delivery.ts).
    taskOutcomes: counter(
      "task_outcomes_total",
      "Task outcomes appended by this process: completed, failed (for good), retried (an attempt " +
        "failed and another follows), dead_lettered",
      ["outcome"],
    ),
    taskDuration: histogram(
      "task_duration_seconds",
      "Processing time of completed tasks, from the first attempt's start to completion",
      TASK_BUCKETS,
    ),
    queueWait: histogram(
      "task_queue_wait_seconds",
      "Time from a work entry's append to its task's first start",
      TASK_BUCKETS,
    ),
    stepDuration: histogram(
      "step_duration_seconds",
      "Duration of completed steps",
      CALL_BUCKETS,
      ["step"],
    ),
    tasksInProgress: gauge(
      "tasks_in_progress",
      "Tasks this process has started and not yet finished, retried for good or given up",
    ),
    callbacks: counter(
      "callback_deliveries_total",
      "Callback deliveries by result: delivered, retried (an attempt failed, another follows), " +
        "failed (for good), expired (too old to send)",
      ["result"],
    ),
    callbackDuration: histogram(
      "callback_delivery_duration_seconds",
      "Duration of one callback attempt (the signed POST) by result",
      CALL_BUCKETS,
      ["result"],
    ),
    providerCalls: counter(
      "provider_calls_total",
      "Calls to providers (fal, openai, supabase, offline) by outcome: success, retryable_error, " +
        "error, cancelled",
      ["provider", "outcome"],
    ),
    providerDuration: histogram(
      "provider_call_duration_seconds",
      "Duration of provider calls by provider and outcome",
      CALL_BUCKETS,
      ["provider", "outcome"],
    ),
    reclaims: counter(
      "stream_group_reclaims_total",
      "Entries this process took over from a stalled consumer (XAUTOCLAIM)",
      ["stream", "group"],
    ),
    projectionLag: histogram(
      "projection_lag_seconds",
      "Delay from an event's append to its projection into the views, in this process",
      FAST_BUCKETS,
    ),

    // Read from Redis at scrape time (src/metrics/scrape.ts).
    redisUp: gauge("redis_up", "1 when this scrape could read Redis, else 0"),
    streamLength: gauge("stream_length", "Entries in the stream (XLEN)", ["stream"]),
    groupPending: gauge(
      "stream_group_messages_pending",
      "Entries delivered to the group and not acknowledged (XINFO GROUPS pending)",
      ["stream", "group"],
    ),
    groupLag: gauge(
      "stream_group_lag",
      "Entries not yet delivered to the group (XINFO GROUPS lag; absent when Redis cannot tell)",
      ["stream", "group"],
    ),
    groupConsumers: gauge(
      "stream_group_consumers",
      "Consumers Redis knows in the group (XINFO GROUPS consumers; includes stopped ones)",
      ["stream", "group"],
    ),
    groupOldestPending: gauge(
      "stream_group_oldest_pending_age_seconds",
      "Age of the group's oldest pending entry, from its id's time (0 when none is pending)",
      ["stream", "group"],
    ),
    groupReportAge: gauge(
      "stream_group_consumer_report_age_seconds",
      "Seconds since a worker process last reported consuming the group (the consumer registry)",
      ["stream", "group"],
    ),
    deadLetters: gauge("dead_letters", "Entries in the dead-letter stream (XLEN)"),
  };
  metrics.buildInfo.set({
    version: VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
  }, 1);
  // Known label values start at 0, so rates and alerts work before the first event.
  for (const outcome of ["completed", "failed", "retried", "dead_lettered"]) {
    metrics.taskOutcomes.inc({ outcome }, 0);
  }
  for (const result of ["delivered", "retried", "failed", "expired"]) {
    metrics.callbacks.inc({ result }, 0);
  }
  for (const result of ["accepted", "duplicate"]) metrics.webhooks.inc({ result }, 0);
  metrics.startTime.set(Math.round(Date.now() / 1000 - performance.now() / 1000));
  return metrics;
}

export type Metrics = ReturnType<typeof createMetrics>;

/** The Content-Type of the text exposition format. */
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** The process's own figures, read when scraped. */
export function refreshProcess(metrics: Metrics): void {
  const memory = Deno.memoryUsage();
  metrics.residentMemory.set(memory.rss);
  metrics.heapUsed.set(memory.heapUsed);
  // In µs since the process started.
  const usage = process.cpuUsage();
  metrics.cpu.reset();
  metrics.cpu.inc((usage.user + usage.system) / 1e6);
}
