import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context, MiddlewareHandler } from "hono";
import { z } from "zod";
import { ProblemError } from "../errors.ts";
import type { EventStore } from "../event_store.ts";
import type { Partitions, PartitionScope } from "../partitions.ts";
import { type PartitionedRebuildResult, RebuildRefused } from "../projections/rebuild.ts";
import { getDeadLetter, listDeadLetters, redrive, reprocessTasks } from "../replay/reprocess.ts";
import { tokensEqual } from "../security/signature.ts";
import { fieldErrors } from "../webhook.ts";
import { MAX_LIST_COUNT, parseCount, redriveProblem, replayProblem } from "../cli/rules.ts";
import { bearerToken } from "./auth.ts";
import { fromRedis } from "./problems.ts";
import { queryToken } from "./read_auth.ts";

const isoDate = z.iso.datetime({ offset: true }).transform((s) => new Date(s));

export const ReplayRequestSchema = z.object({
  projections: z.boolean().default(false).describe("Rebuild every view from the event log"),
  tasks: z.array(z.string().min(1)).max(10_000).optional(),
  since: isoDate.optional(),
  until: isoDate.optional(),
  status: z.enum(["failed", "dead_lettered", "completed"]).optional(),
  reason: z.string().min(1).max(500).default("admin replay"),
  requested_by: z.string().min(1).max(200).default("admin-api"),
  dry_run: z.boolean().default(false),
  force: z.boolean().default(false).describe(
    "With projections: rebuild even though retention has trimmed the log",
  ),
});

export const RedriveRequestSchema = z.object({
  ids: z.array(z.string().min(1)).max(10_000).optional(),
  all: z.boolean().default(false),
  reason: z.string().min(1).max(500).default("dead-letter redrive"),
  requested_by: z.string().min(1).max(200).default("admin-api"),
  dry_run: z.boolean().default(false),
}).describe("Give either ids or all: true (400 otherwise, as `deno task dlq redrive` exits 2)");

/** GET /admin/dead-letters: `count` 1 to 1,000 (default 100), `after` a dead-letter id. */
export const DeadLettersQuerySchema = z.object({
  count: z.string().optional().describe(`1 to ${MAX_LIST_COUNT} (default 100)`),
  after: z.string().optional().describe(
    "List after this dead-letter id (ms-seq; with several partitions p<N>-ms-seq, as listed)",
  ),
});

/** A request the CLI would refuse with exit 2: answered 400, with the CLI's sentence. */
const invalid = (detail: string) => new ProblemError(400, "Invalid request", detail);
/** A JSON body's fields as the problems name them. */
const quoted = (field: string) =>
  field === "projections" || field === "all" ? `${field}: true` : `"${field}"`;

export interface AdminDeps {
  /** ADMIN_TOKEN; without it every /admin route answers 404. */
  token?: string;
  store: EventStore;
  partitions: Partitions;
  /** Rebuilds one partition's views, or every partition's when none is named. */
  rebuild: (options: {
    force: boolean;
    partition?: number;
    onProgress?: (applied: number, total: number) => void;
  }) => Promise<PartitionedRebuildResult>;
  now: () => Date;
}

/**
 * Bearer-token check in constant time; the admin API does not exist without a token. With
 * `acceptQuery`, `?access_token=` also serves (the event streams: EventSource cannot set headers).
 */
export function requireAdmin(
  token: string | undefined,
  { acceptQuery = false } = {},
): MiddlewareHandler {
  return async function adminAuth(c, next) {
    if (!token) throw new ProblemError(404, "Not found", "The admin API is disabled");
    const sent = bearerToken(c.req.raw.headers) ?? (acceptQuery ? queryToken(c.req.url) : null);
    if (!sent || !tokensEqual(sent, token)) {
      c.header("www-authenticate", 'Bearer realm="admin"');
      throw new ProblemError(401, "Unauthorized", "A valid admin bearer token is required");
    }
    await next();
  };
}

async function body<T extends z.ZodType>(request: Request, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = await request.json();
  } catch {
    throw new ProblemError(400, "Invalid JSON", "The body is not valid JSON");
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const errors = fieldErrors(parsed.error);
    throw new ProblemError(422, "Invalid request", "Invalid fields", { errors });
  }
  return parsed.data;
}

/**
 * `?partition=N`: the partition an admin call is limited to (all by default); 400 for one that
 * does not exist.
 */
function partitionParam(c: Context, partitions: Partitions): {
  index?: number;
  scope: PartitionScope;
} {
  const raw = c.req.query("partition");
  if (raw === undefined || raw === "") return { scope: partitions.scope() };
  const index = Number(raw);
  if (!/^\d+$/.test(raw) || !partitions.at(index)) {
    throw invalid(`"partition" must be 0 to ${partitions.count - 1}, got "${raw}"`);
  }
  return { index, scope: partitions.scope(index) };
}

/** The admin API: reprocessing, projection rebuilds and dead letters, mirroring the CLIs. */
export function adminRoutes(app: OpenAPIHono, deps: AdminDeps): void {
  const { partitions } = deps;
  app.use("/admin/*", requireAdmin(deps.token));

  app.post("/admin/replay", async (c) => {
    const { index, scope } = partitionParam(c, partitions);
    const request = await body(c.req.raw, ReplayRequestSchema);
    const problem = replayProblem({ ...request, taskIds: request.tasks ?? [] }, quoted);
    if (problem) throw invalid(problem);
    let projections: PartitionedRebuildResult | { would_rebuild_events: number } | null = null;
    if (request.projections) {
      const length = () =>
        Promise.all(scope.partitions.map(({ store }) => store.redis.xlen(store.keys.eventStream)))
          .then((lengths) => lengths.reduce((a, b) => a + b, 0));
      projections = request.dry_run
        ? { would_rebuild_events: await fromRedis(length) }
        : await deps.rebuild({ force: request.force, partition: index }).catch((error) => {
          if (error instanceof RebuildRefused) {
            throw new ProblemError(409, "Rebuild refused", error.message);
          }
          throw error;
        });
    }
    const selects = request.tasks?.length || request.since || request.until || request.status;
    const tasks = selects
      ? await fromRedis(() =>
        reprocessTasks(scope, {
          taskIds: request.tasks,
          since: request.since,
          until: request.until,
          status: request.status,
        }, {
          requestedBy: request.requested_by,
          reason: request.reason,
          dryRun: request.dry_run,
          now: deps.now(),
        })
      )
      : [];
    return c.json({ dry_run: request.dry_run, projections, tasks });
  });

  // A task's whole timeline as stored, internal fields included (callback errors' `detail`,
  // naming hosts and addresses), which the public GET /task/{task_id}/events leaves out.
  app.get("/admin/tasks/:task_id/events", async (c) => {
    const taskId = c.req.param("task_id");
    const partition = partitions.ofTask(taskId);
    const events = partition ? await fromRedis(() => partition.store.timeline(taskId)) : [];
    if (!events.length) throw new ProblemError(404, "Task not found", `No task "${taskId}"`);
    return c.json({
      task_id: taskId,
      events: events.map(({ id, type, at, data }) => ({ id, type, at, data })),
    });
  });

  app.get("/admin/dead-letters", async (c) => {
    const count = parseCount(c.req.query("count"), 100, MAX_LIST_COUNT);
    if (typeof count !== "number") throw invalid(`"count" ${count.problem}`);
    const after = c.req.query("after");
    if (after !== undefined && !/^(p\d+-)?\d+-\d+$/.test(after)) {
      throw invalid('"after" must be a dead-letter id (ms-seq, or p<N>-ms-seq)');
    }
    const { scope } = partitionParam(c, partitions);
    const letters = await fromRedis(() => listDeadLetters(scope, count, after ? `(${after}` : "-"));
    return c.json({ dead_letters: letters });
  });

  app.get("/admin/dead-letters/:id", async (c) => {
    const id = c.req.param("id");
    if (!/^(p\d+-)?\d+-\d+$/.test(id)) {
      throw new ProblemError(404, "Not found", `No dead letter "${id}"`);
    }
    const letter = await fromRedis(() => getDeadLetter(partitions.scope(), id));
    if (!letter) throw new ProblemError(404, "Not found", `No dead letter "${id}"`);
    return c.json(letter);
  });

  app.post("/admin/dead-letters/redrive", async (c) => {
    const { scope } = partitionParam(c, partitions);
    const request = await body(c.req.raw, RedriveRequestSchema);
    const problem = redriveProblem({ ids: request.ids ?? [], all: request.all }, quoted);
    if (problem) throw invalid(problem);
    const outcomes = await fromRedis(() =>
      redrive(scope, request.all ? "all" : request.ids!, {
        requestedBy: request.requested_by,
        reason: request.reason,
        dryRun: request.dry_run,
        now: deps.now(),
      })
    );
    return c.json({ dry_run: request.dry_run, outcomes });
  });
}
