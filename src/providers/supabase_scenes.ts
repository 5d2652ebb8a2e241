import { createClient } from "@supabase/supabase-js";
import { z } from "zod";
import { RetryableError, UnrecoverableError } from "../errors.ts";
import { type Scene, type SceneRow, SceneRowSchema, SceneSchema } from "../pipeline/scene.ts";

export interface SupabaseScenesOptions {
  /** SUPABASE_URL, e.g. `https://<ref>.supabase.co`. */
  url: string;
  /** SUPABASE_SERVICE_ROLE_KEY: writes bypass row-level security; never expose it to users. */
  serviceRoleKey: string;
  /** Default "public"; another schema must be in the project's exposed schemas. */
  schema?: string;
  /** Default "scenes". */
  table?: string;
  /** Budget for one HTTP request; default 10 000 ms. A timeout is retryable. */
  timeoutMs?: number;
}

export interface SupabaseScenes {
  /**
   * Inserts or updates the rows, keyed on (video_id, revision, scene_number): a redelivered
   * batch rewrites the same rows, so at-least-once delivery stores each scene once.
   */
  upsert(rows: SceneRow[]): Promise<void>;
  /** The highest revision of a video and its rows by scene number, or null without any. */
  latest(videoId: string): Promise<{ revision: number; rows: SceneRow[] } | null>;
  /** Whether the table is reachable with the key, for /health; never throws. */
  check(): Promise<{ ok: true } | { ok: false; error: string }>;
}

const COLUMNS = Object.keys(SceneRowSchema.shape).join(",");
const CONFLICT_KEY = "video_id,revision,scene_number";
const RevisionSchema = z.array(z.object({ revision: z.number().int().min(1) }));

/** What supabase-js resolves to on failure; a gateway 401 has no code. */
interface PostgrestFailure {
  message?: string;
  code?: string;
  details?: string | null;
  hint?: string | null;
}

/**
 * The scenes table through Supabase's REST API with the service role key.
 *
 * Failures: network errors, timeouts, 5xx and 429 throw RetryableError; a missing table or
 * schema, a rejected key, missing privileges and columns that do not match throw
 * UnrecoverableError with a message saying what to fix. supabase-js's own retries are off: the
 * pipeline retries with its own backoff and attempt budget.
 */
export function createSupabaseScenes(options: SupabaseScenesOptions): SupabaseScenes {
  const schema = options.schema ?? "public";
  const table = options.table ?? "scenes";
  const timeoutMs = options.timeoutMs ?? 10_000;
  const qualified = `"${schema}.${table}"`;
  // deno-lint-ignore no-explicit-any -- no generated Database types; rows are checked with zod.
  const client = createClient<any, string>(options.url, options.serviceRoleKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    db: { schema, timeout: timeoutMs, retry: false },
  });

  function failure(action: string, error: PostgrestFailure, status: number): Error {
    const code = error.code ?? "";
    const said = [error.message, error.details, error.hint].filter(Boolean).join("; ");
    const cause = { ...error, status };
    if (status === 0) {
      const timedOut = (error.hint ?? "").includes("aborted");
      return new RetryableError(
        timedOut
          ? `Supabase did not answer the scenes ${action} within ${timeoutMs} ms`
          : `Supabase is unreachable for the scenes ${action}: ${error.message}`,
        { cause },
      );
    }
    if (status >= 500 || status === 429 || status === 408) {
      return new RetryableError(`Supabase answered ${status} to the scenes ${action}: ${said}`, {
        cause,
      });
    }
    if (code === "PGRST205" || code === "42P01") {
      return new UnrecoverableError(`Table ${qualified} is missing: apply supabase/migrations`, {
        cause,
      });
    }
    if (code === "PGRST106") {
      return new UnrecoverableError(
        `Schema "${schema}" is not exposed by the Supabase API: add it to the exposed schemas`,
        { cause },
      );
    }
    if (code === "42501") {
      return new UnrecoverableError(
        `The key lacks privileges on table ${qualified}: use the service role key and apply supabase/migrations (${said})`,
        { cause },
      );
    }
    if (status === 401 || status === 403) {
      return new UnrecoverableError(`Supabase rejected the service role key (${said})`, { cause });
    }
    if (code === "PGRST204" || code === "42703") {
      return new UnrecoverableError(
        `Table ${qualified} does not match the scene rows (${said}): apply supabase/migrations`,
        { cause },
      );
    }
    return new UnrecoverableError(
      `Supabase rejected the scenes ${action} with ${status} ${code}: ${said}`,
      { cause },
    );
  }

  function parsed<T>(schema: z.ZodType<T>, data: unknown, what: string): T {
    const result = schema.safeParse(data);
    if (result.success) return result.data;
    throw new UnrecoverableError(`${what}: ${z.prettifyError(result.error)}`, {
      cause: result.error,
    });
  }

  return {
    async upsert(rows) {
      const valid = parsed(z.array(SceneRowSchema), rows, "Invalid scene rows");
      const keys = new Set(
        valid.map((r) => `${r.video_id}\u0000${r.revision}\u0000${r.scene_number}`),
      );
      if (keys.size !== valid.length) {
        // Postgres refuses one upsert that touches a row twice; it is a caller bug, not a retry.
        throw new UnrecoverableError(
          "Invalid scene rows: the same video, revision and scene number appear twice",
        );
      }
      if (valid.length === 0) return;
      const { error, status } = await client.from(table).upsert(valid, {
        onConflict: CONFLICT_KEY,
      });
      if (error) throw failure("upsert", error, status);
    },

    async latest(videoId) {
      const top = await client.from(table).select("revision").eq("video_id", videoId)
        .order("revision", { ascending: false }).limit(1);
      if (top.error) throw failure("read", top.error, top.status);
      const [head] = parsed(RevisionSchema, top.data, "Supabase returned a malformed revision");
      if (!head) return null;
      const { data, error, status } = await client.from(table).select(COLUMNS)
        .eq("video_id", videoId).eq("revision", head.revision).order("scene_number");
      if (error) throw failure("read", error, status);
      const rows = parsed(z.array(SceneRowSchema), data, "Supabase returned a malformed scene row");
      return { revision: head.revision, rows };
    },

    async check() {
      const { error, status } = await client.from(table).select(COLUMNS).limit(1);
      return error ? { ok: false, error: failure("check", error, status).message } : { ok: true };
    },
  };
}

const SCENE_FIELDS = Object.keys(SceneSchema.shape) as (keyof Scene)[];

/** The scenes of stored rows, without the row's keys (task, video, user, revision, image). */
export function scenesOf(rows: SceneRow[]): Scene[] {
  return rows.map((row) =>
    Object.fromEntries(SCENE_FIELDS.map((field) => [field, row[field]])) as Scene
  );
}
