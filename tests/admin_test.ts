import assert from "node:assert/strict";
import { UsageError } from "../src/cli/_common.ts";
import { dlqMain } from "../src/cli/dlq.ts";
import { parseReplayArgs } from "../src/cli/replay.ts";
import { testEnv } from "./_helpers.ts";

const TOKEN = "admin-token-0123456789";

async function admin(env: Awaited<ReturnType<typeof testEnv>>, path: string, body?: unknown) {
  const res = await env.services.app.request(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type"), body: JSON.parse(text) };
}

/** The CLI's refusal (a UsageError, exit 2) of the same request. */
function cliRefuses(run: () => unknown, message: RegExp) {
  assert.throws(run, (error: Error) => error instanceof UsageError && message.test(error.message));
}

Deno.test("admin replay refuses what the replay CLI refuses, with 400 and the same rule", async () => {
  await using env = await testEnv("admin-replay", { ADMIN_TOKEN: TOKEN });
  const cases: [string[], unknown, RegExp][] = [
    [[], {}, /^Nothing to do: give /],
    [[], { tasks: [], dry_run: true }, /^Nothing to do: give /],
    [
      ["--since", "2026-11-28T00:00:00Z", "--until", "2026-11-01T00:00:00Z"],
      { since: "2026-11-28T00:00:00Z", until: "2026-11-01T00:00:00Z" },
      /must not be after/,
    ],
    [
      ["--task", "a", "--since", "2026-11-01T00:00:00Z"],
      { tasks: ["a"], since: "2026-11-01T00:00:00Z" },
      /^Give either .*tasks?.* or .*since.*\/.*until.*, not both$/,
    ],
  ];
  for (const [args, body, message] of cases) {
    cliRefuses(() => parseReplayArgs(args), message);
    const res = await admin(env, "/admin/replay", body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.type, "application/problem+json");
    assert.match(res.body.detail, message);
    assert.equal(res.body.status, 400);
  }
  const nothing = await admin(env, "/admin/replay", {});
  assert.equal(
    nothing.body.detail,
    'Nothing to do: give projections: true, "tasks", "since"/"until" or "status"',
  );
  // Fields of the wrong type stay 422 with `errors`, bad JSON 400.
  const wrongType = await admin(env, "/admin/replay", { status: "weird" });
  assert.equal(wrongType.status, 422);
  assert.equal(wrongType.body.errors[0].field, "status");
  assert.equal((await admin(env, "/admin/replay", "{")).status, 400);
  // A valid selection that finds nothing answers 200.
  const fine = await admin(env, "/admin/replay", { tasks: ["nope"], dry_run: true });
  assert.equal(fine.status, 200);
  assert.equal(fine.body.tasks.length, 1);
});

Deno.test("admin dead letters: count and redrive checked as the dlq CLI checks them", async () => {
  await using env = await testEnv("admin-dlq", { ADMIN_TOKEN: TOKEN });
  const dlq = (args: string[]) => () => dlqMain(args, {}, () => {}, false);
  for (const count of ["0", "-1", "abc", "2.5", ""]) {
    await assert.rejects(dlq(["list", `--count=${count}`]), /--count must be a positive integer/);
    const res = await admin(env, `/admin/dead-letters?count=${count}`);
    assert.equal(res.status, 400, count);
    assert.match(res.body.detail, /^"count" must be a positive integer, got "/);
  }
  const tooMany = await admin(env, "/admin/dead-letters?count=1001");
  assert.equal(tooMany.status, 400);
  assert.match(tooMany.body.detail, /"count" must be at most 1000/);
  assert.equal((await admin(env, "/admin/dead-letters?count=1000")).status, 200);
  assert.equal((await admin(env, "/admin/dead-letters?count=1")).status, 200);

  await assert.rejects(dlq(["redrive"]), /redrive takes dead-letter ids or --all/);
  await assert.rejects(dlq(["redrive", "1-0", "--all"]), /Give either ids or --all, not both/);
  const none = await admin(env, "/admin/dead-letters/redrive", {});
  assert.equal(none.status, 400);
  assert.equal(none.body.detail, 'redrive takes dead-letter "ids" or all: true');
  const both = await admin(env, "/admin/dead-letters/redrive", { ids: ["1-0"], all: true });
  assert.equal(both.status, 400);
  assert.equal(both.body.detail, 'Give either "ids" or all: true, not both');
});
