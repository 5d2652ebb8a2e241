/**
 * A fresh schema on the shared test PostgreSQL with the Supabase migrations applied, plus the
 * pieces of a Supabase database the migrations rely on (roles `anon`, `authenticated`,
 * `service_role` and the function `auth.uid()`).
 *
 * The database is shared by concurrent test runs: roles and `auth.uid()` are cluster- or
 * database-wide, so they are only ever created (never dropped), under an advisory lock; everything
 * else a test creates lives in its own randomly named schema, which `close()` drops.
 */
import pg from "pg";

export const PG_URL = Deno.env.get("TEST_DATABASE_URL") ??
  "postgres://postgres@127.0.0.1:5432/test";

export const MIGRATIONS_DIR = new URL("../../supabase/migrations/", import.meta.url);

/** Serializes the idempotent Supabase bootstrap across concurrent test runs (any constant works). */
const BOOTSTRAP_LOCK = 5_802_113_447;

export interface TestSchema {
  /** The schema's name, random per call, e.g. `test_sb_1f2e3d4c`. */
  schema: string;
  /** Connected as the superuser; queries see the test schema first on the search_path. */
  pool: pg.Pool;
  /** Drops the test schema (cascade) and ends the pool. */
  close(): Promise<void>;
}

/** Quotes an identifier for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Creates a fresh schema and applies every migration under `supabase/migrations/` into it, in
 * file name order, with the search_path set to that schema only (migrations use unqualified names).
 * Pass `{ migrations: false }` for an empty schema (a database the migrations were never applied to).
 */
export async function createTestSchema(
  options: { migrations?: boolean } = {},
): Promise<TestSchema> {
  const schema = `test_sb_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const pool = new pg.Pool({
    connectionString: PG_URL,
    max: 4,
    options: `-c search_path=${schema},public`,
  });
  let created = false;
  const close = async () => {
    try {
      if (created) await pool.query(`drop schema if exists ${quoteIdent(schema)} cascade`);
    } finally {
      await pool.end();
    }
  };
  try {
    await ensureSupabaseBasics(pool);
    await pool.query(`create schema ${quoteIdent(schema)}`);
    created = true;
    await pool.query(
      `grant usage on schema ${quoteIdent(schema)} to anon, authenticated, service_role`,
    );
    if (options.migrations !== false) await applyMigrations(pool, schema);
    return { schema, pool, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** Applies each migration file in its own transaction with the search_path set to `schema`. */
export async function applyMigrations(pool: pg.Pool, schema: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(MIGRATIONS_DIR)) {
    if (entry.isFile && entry.name.endsWith(".sql")) files.push(entry.name);
  }
  files.sort();
  const client = await pool.connect();
  try {
    for (const file of files) {
      const sql = await Deno.readTextFile(new URL(file, MIGRATIONS_DIR));
      await client.query("begin");
      try {
        await client.query(`set local search_path to ${quoteIdent(schema)}`);
        await client.query(sql);
        await client.query("commit");
      } catch (error) {
        await client.query("rollback");
        throw new Error(`Migration "${file}" failed: ${(error as Error).message}`, {
          cause: error,
        });
      }
    }
  } finally {
    client.release();
  }
  return files;
}

/**
 * What every Supabase database has before user migrations run. Idempotent and safe to run
 * concurrently: one transaction under an advisory lock, creating only what is missing.
 */
async function ensureSupabaseBasics(pool: pg.Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    try {
      await client.query("select pg_advisory_xact_lock($1)", [BOOTSTRAP_LOCK]);
      await client.query(`
        do $$
        begin
          if not exists (select from pg_roles where rolname = 'anon') then
            create role anon nologin noinherit;
          end if;
          if not exists (select from pg_roles where rolname = 'authenticated') then
            create role authenticated nologin noinherit;
          end if;
          if not exists (select from pg_roles where rolname = 'service_role') then
            create role service_role nologin noinherit bypassrls;
          elsif not (select rolbypassrls from pg_roles where rolname = 'service_role') then
            alter role service_role bypassrls;
          end if;
        end
        $$`);
      await client.query("create schema if not exists auth");
      // Supabase's definition: the subject of the request's JWT, from either claim setting.
      await client.query(`
        create or replace function auth.uid() returns uuid
        language sql stable
        as $$
          select coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
          )::uuid
        $$`);
      await client.query("grant usage on schema auth to anon, authenticated, service_role");
      await client.query(
        "grant execute on function auth.uid() to anon, authenticated, service_role",
      );
      await client.query("commit");
    } catch (error) {
      await client.query("rollback");
      throw error;
    }
  } finally {
    client.release();
  }
}
