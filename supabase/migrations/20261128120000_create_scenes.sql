-- Final scenes of each video revision, written by the scene sink with the service role key.
--
-- Names are unqualified on purpose: `supabase db push` applies this into `public`, and the tests
-- apply it into a fresh schema of their own by setting search_path first.
--
-- Idempotent writes: the sink upserts on (video_id, revision, scene_number), so a redelivered
-- event rewrites the same rows instead of adding copies. Older revisions stay in the table.

create table scenes (
  id uuid primary key default gen_random_uuid(),
  task_id text not null,
  video_id text not null,
  user_id text not null,
  revision integer not null check (revision >= 1),
  scene_number integer not null check (scene_number >= 1),
  visual_description text not null,
  voiceover text not null,
  shot_type text not null,
  sound_effects text not null,
  music_direction text not null,
  duration_seconds numeric not null check (duration_seconds > 0),
  image_url text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint scenes_video_revision_scene_key unique (video_id, revision, scene_number)
);

-- "Latest revision of a video" reads the highest revision first.
create index scenes_video_id_revision_idx on scenes (video_id, revision desc);

-- An empty search_path: the body only needs pg_catalog, and a mutable search_path in a function
-- is what Supabase's security advisor flags.
create function scenes_set_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

-- Fires on the DO UPDATE branch of an upsert too.
create trigger scenes_set_updated_at
before update on scenes
for each row execute function scenes_set_updated_at();

-- Row-level security: signed-in users read their own scenes; nobody but the service role writes.
-- service_role has BYPASSRLS in Supabase, so it needs grants and no policies.
alter table scenes enable row level security;

create policy "Users read their own scenes"
on scenes for select
to authenticated
using (user_id = (select auth.uid())::text);

-- Supabase's default privileges grant everything on new tables to anon and authenticated; narrow
-- that to what the policies allow, so a missing policy can never turn into a write path.
revoke all on table scenes from anon, authenticated;
grant select on table scenes to authenticated;
grant select, insert, update, delete on table scenes to service_role;
