import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import type { SceneRow } from "../src/pipeline/scene.ts";
import { createSupabaseScenes, type SupabaseScenes } from "../src/providers/supabase_scenes.ts";
import { createTestSchema, type TestSchema } from "./fakes/postgres.ts";
import { type PostgrestFake, startPostgrest } from "./fakes/postgrest_server.ts";

const SERVICE_KEY = `sb_secret_test_${crypto.randomUUID()}`;
const ANON_KEY = `sb_publishable_test_${crypto.randomUUID()}`;

interface Env {
  db: TestSchema;
  fake: PostgrestFake;
  scenes: SupabaseScenes;
  /** A supabase-js client with the anon key, acting as `token`'s user when given. */
  // deno-lint-ignore no-explicit-any -- untyped tables, as in the provider
  userClient(token?: string): SupabaseClient<any, string>;
  count(where?: string, params?: unknown[]): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A fresh schema (migrated unless told otherwise), the fake REST API over it and the provider. */
async function setup(options: { migrations?: boolean } = {}): Promise<Env> {
  const db = await createTestSchema(options);
  let fake: PostgrestFake;
  try {
    fake = await startPostgrest({
      pool: db.pool,
      schemas: [db.schema],
      serviceRoleKey: SERVICE_KEY,
      anonKey: ANON_KEY,
    });
  } catch (error) {
    await db.close();
    throw error;
  }
  return {
    db,
    fake,
    scenes: createSupabaseScenes({ url: fake.url, serviceRoleKey: SERVICE_KEY, schema: db.schema }),
    userClient: (token) =>
      // deno-lint-ignore no-explicit-any -- untyped tables, as in the provider
      createClient<any, string>(fake.url, ANON_KEY, {
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
        db: { schema: db.schema, retry: false },
        global: token ? { headers: { Authorization: `Bearer ${token}` } } : {},
      }),
    async count(where = "true", params = []) {
      const { rows } = await db.pool.query(
        `select count(*)::int as n from "${db.schema}".scenes where ${where}`,
        params,
      );
      return rows[0].n;
    },
    async [Symbol.asyncDispose]() {
      try {
        await fake.close();
      } finally {
        await db.close();
      }
    },
  };
}

function scene(
  over: Partial<SceneRow> & Pick<SceneRow, "scene_number">,
): SceneRow {
  return {
    task_id: "task-1",
    video_id: "video-1",
    user_id: "00000000-0000-4000-8000-000000000001",
    revision: 1,
    visual_description: `Shot ${over.scene_number}`,
    voiceover: `Line ${over.scene_number}`,
    shot_type: "close-up",
    sound_effects: "whoosh",
    music_direction: "upbeat",
    duration_seconds: 2.5,
    image_url: "https://cdn.example.com/reframed.png",
    ...over,
  };
}

async function rejects<T extends Error>(
  promise: Promise<unknown>,
  type: new (...args: never[]) => T,
  message: RegExp,
): Promise<T> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${error}`);
    assert.match(error.message, message);
    return error;
  }
  assert.fail(`expected a ${type.name} matching ${message}`);
}

Deno.test("the migration applies into fresh schemas with constraints, index, trigger and RLS", async () => {
  // Two at once: the Supabase bootstrap (roles, auth.uid()) must tolerate concurrency.
  const [db, other] = await Promise.all([createTestSchema(), createTestSchema()]);
  try {
    assert.notEqual(db.schema, other.schema);
    const { rows: [table] } = await db.pool.query(
      `select c.relrowsecurity as rls, (select count(*)::int from pg_policies p
         where p.schemaname = n.nspname and p.tablename = 'scenes') as policies
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = $1 and c.relname = 'scenes'`,
      [db.schema],
    );
    assert.deepEqual(table, { rls: true, policies: 1 });
    const { rows: indexes } = await db.pool.query(
      "select indexdef from pg_indexes where schemaname = $1 and tablename = 'scenes'",
      [db.schema],
    );
    const defs = indexes.map((r: { indexdef: string }) => r.indexdef).join("\n");
    assert.match(defs, /UNIQUE INDEX .* \(video_id, revision, scene_number\)/);
    assert.match(defs, /INDEX scenes_video_id_revision_idx .* \(video_id, revision DESC\)/);

    const insert = (revision: number, scene: number, duration: number) =>
      db.pool.query(
        `insert into scenes (task_id, video_id, user_id, revision, scene_number,
           visual_description, voiceover, shot_type, sound_effects, music_direction,
           duration_seconds, image_url)
         values ('t', 'v', 'u', $1, $2, 'd', 'o', 's', 'e', 'm', $3, 'i') returning id`,
        [revision, scene, duration],
      );
    const { rows: [{ id }] } = await insert(1, 1, 2);
    assert.match(id, /^[0-9a-f-]{36}$/);
    for (const [revision, scene, duration] of [[0, 1, 2], [1, 0, 2], [1, 2, 0]]) {
      await assert.rejects(insert(revision, scene, duration), { code: "23514" });
    }
    await assert.rejects(insert(1, 1, 3), { code: "23505" });

    const { rows: [updated] } = await db.pool.query(
      `update scenes set voiceover = 'new' where id = $1
       returning updated_at > created_at as fresh`,
      [id],
    );
    assert.equal(updated.fresh, true);
  } finally {
    await Promise.all([db.close(), other.close()]);
  }
});

Deno.test("close drops the test schema and nothing else", async () => {
  const db = await createTestSchema();
  const probe = await createTestSchema({ migrations: false });
  try {
    await db.close();
    const { rows } = await probe.pool.query(
      "select nspname from pg_namespace where nspname in ($1, 'auth')",
      [db.schema],
    );
    assert.deepEqual(rows.map((r: { nspname: string }) => r.nspname), ["auth"]);
    const roles = await probe.pool.query(
      `select rolname, rolbypassrls from pg_roles
       where rolname in ('anon', 'authenticated', 'service_role') order by rolname`,
    );
    assert.deepEqual(roles.rows, [
      { rolname: "anon", rolbypassrls: false },
      { rolname: "authenticated", rolbypassrls: false },
      { rolname: "service_role", rolbypassrls: true },
    ]);
  } finally {
    await probe.close();
  }
});

Deno.test("a redelivered upsert stores each scene once and updates changed fields", async () => {
  await using env = await setup();
  const rows = [1, 2, 3].map((n) => scene({ scene_number: n }));
  await env.scenes.upsert(rows);
  const { rows: [before] } = await env.db.pool.query(
    "select id, updated_at from scenes where scene_number = 2",
  );

  await env.scenes.upsert([rows[0], { ...rows[1], voiceover: "Rewritten", duration_seconds: 4 }]);

  assert.equal(await env.count(), 3);
  const { rows: stored } = await env.db.pool.query(
    `select scene_number, voiceover, duration_seconds::float8 as d, id, updated_at
     from scenes order by scene_number`,
  );
  assert.deepEqual(
    stored.map((r: { scene_number: number; voiceover: string; d: number }) => [
      r.scene_number,
      r.voiceover,
      r.d,
    ]),
    [[1, "Line 1", 2.5], [2, "Rewritten", 4], [3, "Line 3", 2.5]],
  );
  assert.equal(stored[1].id, before.id, "the row is updated in place, not replaced");
  assert.ok(stored[1].updated_at > before.updated_at, "updated_at moves on update");

  // The request supabase-js sent: PostgREST's upsert protocol, in the configured schema.
  const post = env.fake.requests.at(-1)!;
  assert.equal(post.method, "POST");
  assert.equal(post.path, "/rest/v1/scenes");
  const search = new URLSearchParams(post.search);
  assert.equal(search.get("on_conflict"), "video_id,revision,scene_number");
  assert.match(post.headers["prefer"], /resolution=merge-duplicates/);
  assert.equal(post.headers["content-profile"], env.db.schema);
  assert.equal(post.headers["apikey"], SERVICE_KEY);
  assert.equal(post.headers["authorization"], `Bearer ${SERVICE_KEY}`);
});

Deno.test("latest returns the highest revision by scene number and keeps older revisions", async () => {
  await using env = await setup();
  assert.equal(await env.scenes.latest("video-1"), null);
  const first = [1, 2, 3].map((n) => scene({ scene_number: n }));
  const second = [2, 1].map((n) =>
    scene({ scene_number: n, revision: 2, task_id: "task-2", voiceover: `Take 2 line ${n}` })
  );
  await env.scenes.upsert(first);
  await env.scenes.upsert(second);
  await env.scenes.upsert([scene({ scene_number: 1, video_id: "video-2", revision: 7 })]);

  const latest = await env.scenes.latest("video-1");
  assert.deepEqual(latest, { revision: 2, rows: [second[1], second[0]] });
  assert.equal(typeof latest?.rows[0].duration_seconds, "number");
  assert.equal(await env.count("video_id = 'video-1' and revision = 1"), 3);
  assert.equal((await env.scenes.latest("video-2"))?.revision, 7);
  assert.equal(await env.scenes.latest("video-3"), null);
});

Deno.test("row-level security: a signed-in user reads only their own scenes", async () => {
  await using env = await setup();
  const alice = crypto.randomUUID();
  const bob = crypto.randomUUID();
  await env.scenes.upsert([
    scene({ scene_number: 1, user_id: alice }),
    scene({ scene_number: 2, user_id: alice }),
    scene({ scene_number: 1, user_id: bob, video_id: "video-bob" }),
  ]);

  const asAlice = await env.userClient(env.fake.userToken(alice)).from("scenes")
    .select("user_id,scene_number").order("scene_number");
  assert.equal(asAlice.error, null);
  assert.deepEqual(asAlice.data, [
    { user_id: alice, scene_number: 1 },
    { user_id: alice, scene_number: 2 },
  ]);
  const asBob = await env.userClient(env.fake.userToken(bob)).from("scenes").select("*");
  assert.deepEqual(asBob.data?.map((r) => r.video_id), ["video-bob"]);
  // Even asking for someone else's video by id.
  const peek = await env.userClient(env.fake.userToken(bob)).from("scenes").select("*")
    .eq("video_id", "video-1");
  assert.deepEqual(peek.data, []);

  const anon = await env.userClient().from("scenes").select("*");
  assert.equal(anon.status, 401);
  assert.equal(anon.error?.code, "42501");

  const forged = env.fake.userToken(alice).replace(/\.[^.]+$/, ".AAAA");
  const bad = await env.userClient(forged).from("scenes").select("*");
  assert.equal(bad.status, 401);
  assert.equal(bad.error?.code, "PGRST301");
});

Deno.test("anon and signed-in users cannot insert or upsert scenes", async () => {
  await using env = await setup();
  const alice = crypto.randomUUID();
  const row = scene({ scene_number: 1, user_id: alice });
  await env.scenes.upsert([row]);

  const user = env.userClient(env.fake.userToken(alice));
  const inserted = await user.from("scenes").insert({ ...row, scene_number: 2 });
  assert.equal(inserted.status, 403);
  assert.equal(inserted.error?.code, "42501");
  const upserted = await user.from("scenes").upsert({ ...row, voiceover: "hijacked" }, {
    onConflict: "video_id,revision,scene_number",
  });
  assert.equal(upserted.error?.code, "42501");
  const anon = await env.userClient().from("scenes").insert({ ...row, scene_number: 3 });
  assert.equal(anon.status, 401);
  assert.equal(anon.error?.code, "42501");

  const { rows } = await env.db.pool.query("select scene_number, voiceover from scenes");
  assert.deepEqual(rows, [{ scene_number: 1, voiceover: row.voiceover }]);
});

Deno.test("a missing table is unrecoverable and check says to apply the migrations", async () => {
  await using env = await setup({ migrations: false });
  const message = new RegExp(
    `Table "${env.db.schema}\\.scenes" is missing: apply supabase/migrations`,
  );
  await rejects(env.scenes.upsert([scene({ scene_number: 1 })]), UnrecoverableError, message);
  await rejects(env.scenes.latest("video-1"), UnrecoverableError, message);
  const health = await env.scenes.check();
  assert.equal(health.ok, false);
  assert.match(health.ok ? "" : health.error, message);
  assert.equal(env.fake.requests.length, 3);
});

Deno.test("a table that lost a column is unrecoverable and check reports it", async () => {
  await using env = await setup();
  assert.deepEqual(await env.scenes.check(), { ok: true });
  await env.db.pool.query("alter table scenes drop column music_direction");
  const message = /does not match the scene rows .*music_direction.*apply supabase\/migrations/;
  const error = await rejects(
    env.scenes.upsert([scene({ scene_number: 1 })]),
    UnrecoverableError,
    message,
  );
  assert.equal((error.cause as { code: string }).code, "PGRST204");
  const health = await env.scenes.check();
  assert.match(health.ok ? "" : health.error, message);
});

Deno.test("a wrong or revoked key is unrecoverable and check says it was rejected", async () => {
  await using env = await setup();
  const wrong = createSupabaseScenes({
    url: env.fake.url,
    serviceRoleKey: "sb_secret_wrong",
    schema: env.db.schema,
  });
  await rejects(
    wrong.upsert([scene({ scene_number: 1 })]),
    UnrecoverableError,
    /Supabase rejected the service role key/,
  );
  await rejects(wrong.latest("video-1"), UnrecoverableError, /rejected the service role key/);
  const health = await wrong.check();
  assert.match(health.ok ? "" : health.error, /^Supabase rejected the service role key/);

  env.fake.fault({ kind: "401" });
  await rejects(env.scenes.latest("video-1"), UnrecoverableError, /rejected the service role key/);
  env.fake.fault(null);
  assert.deepEqual(await env.scenes.check(), { ok: true });

  // The anon key where the service role key belongs: readable error, not a silent empty result.
  const anon = createSupabaseScenes({
    url: env.fake.url,
    serviceRoleKey: ANON_KEY,
    schema: env.db.schema,
  });
  await rejects(
    anon.upsert([scene({ scene_number: 1 })]),
    UnrecoverableError,
    /lacks privileges on table .*use the service role key/,
  );
  assert.equal(await env.count(), 0);
});

Deno.test("an outage or a 5xx is retryable and writes resume after it", async () => {
  await using env = await setup();
  const row = scene({ scene_number: 1 });
  env.fake.fault({ kind: "outage" });
  await rejects(env.scenes.upsert([row]), RetryableError, /Supabase is unreachable/);
  await rejects(env.scenes.latest("video-1"), RetryableError, /Supabase is unreachable/);
  const health = await env.scenes.check();
  assert.match(health.ok ? "" : health.error, /unreachable/);

  env.fake.fault({ kind: "503", times: 1 });
  await rejects(env.scenes.upsert([row]), RetryableError, /answered 503/);
  env.fake.fault({ kind: "500", times: 1 });
  await rejects(env.scenes.latest("video-1"), RetryableError, /answered 500/);

  // No fault left: supabase-js did not retry on its own, and the write goes through.
  await env.scenes.upsert([row]);
  assert.equal(await env.count(), 1);
  assert.equal(env.fake.requests.length, 6, "one request per call: supabase-js retries are off");

  await env.fake.close();
  await rejects(env.scenes.upsert([row]), RetryableError, /Supabase is unreachable/);
});

Deno.test("a schema the API does not expose is unrecoverable", async () => {
  await using env = await setup();
  const other = createSupabaseScenes({
    url: env.fake.url,
    serviceRoleKey: SERVICE_KEY,
    schema: "not_exposed",
  });
  await rejects(other.latest("video-1"), UnrecoverableError, /Schema "not_exposed" is not exposed/);
  assert.equal(env.fake.requests.at(-1)?.headers["accept-profile"], "not_exposed");
});

Deno.test("invalid rows are refused before any request", async () => {
  await using env = await setup();
  await rejects(
    env.scenes.upsert([scene({ scene_number: 0 })]),
    UnrecoverableError,
    /Invalid scene rows/,
  );
  await rejects(
    env.scenes.upsert([scene({ scene_number: 1 }), scene({ scene_number: 1 })]),
    UnrecoverableError,
    /appear twice/,
  );
  await env.scenes.upsert([]);
  assert.equal(env.fake.requests.length, 0);
});

Deno.test("the fake answers filters, ordering, paging and single like PostgREST", async () => {
  await using env = await setup();
  await env.scenes.upsert([
    ...[1, 2, 3, 4].map((n) => scene({ scene_number: n, revision: 1 })),
    ...[1, 2].map((n) => scene({ scene_number: n, revision: 2, shot_type: "wide, slow" })),
  ]);
  const db = env.userClient(SERVICE_KEY);
  const ordered = await db.from("scenes").select("r:revision,scene_number")
    .order("revision", { ascending: false }).order("scene_number").range(1, 3);
  assert.deepEqual(ordered.data, [
    { r: 2, scene_number: 2 },
    { r: 1, scene_number: 1 },
    { r: 1, scene_number: 2 },
  ]);
  const filtered = await db.from("scenes").select("scene_number", { count: "exact" })
    .in("shot_type", ["wide, slow", "other"]).gte("scene_number", 2).neq("revision", 1);
  assert.deepEqual(filtered.data, [{ scene_number: 2 }]);
  assert.equal(filtered.count, 1);
  const one = await db.from("scenes").select("scene_number").eq("revision", 1)
    .lt("scene_number", 2).single();
  assert.deepEqual(one.data, { scene_number: 1 });
  const many = await db.from("scenes").select("scene_number").gt("scene_number", 1).single();
  assert.equal(many.status, 406);
  assert.equal(many.error?.code, "PGRST116");
  const badColumn = await db.from("scenes").select("nope");
  assert.equal(badColumn.status, 400);
  assert.equal(badColumn.error?.code, "42703");
  const returned = await db.from("scenes").insert(scene({ scene_number: 9 })).select("id");
  assert.equal(returned.status, 201);
  assert.match(String(returned.data?.[0]?.id), /^[0-9a-f-]{36}$/);
  const duplicate = await db.from("scenes").insert(scene({ scene_number: 9 }));
  assert.equal(duplicate.status, 409);
  assert.equal(duplicate.error?.code, "23505");
  const missing = await db.from("nothing").select("*");
  assert.equal(missing.status, 404);
  assert.equal(missing.error?.code, "PGRST205");
  assert.match(
    missing.error?.message ?? "",
    /Could not find the table '.*\.nothing' in the schema cache/,
  );
  const injection = await db.from("scenes").select("*").eq("video_id", "x' or '1'='1");
  assert.deepEqual(injection.data, []);
});
