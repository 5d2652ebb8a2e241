import assert from "node:assert/strict";
import { createLogger, logFormat, prettyLine } from "../src/log.ts";

Deno.test("pretty logs: one line with time, level, message and the fields that matter", () => {
  const lines: string[] = [];
  const log = createLogger("info", { service: "video-pipeline" }, (l) => lines.push(l), "pretty");
  log.child({ consumer: "host-1-abc" }).info("Task completed", {
    task_id: "t1",
    step: "persist",
    duration_ms: 12.5,
    sink: "supabase",
  });
  log.warn("Callback failed", { error: "refused for maya@example.com", token: "s3cret" });
  log.debug("hidden");
  assert.equal(lines.length, 2);
  const ESC = String.fromCharCode(27);
  const [done, failed] = lines.map((l) => l.replaceAll(new RegExp(`${ESC}\\[\\d+m`, "g"), ""));
  assert.match(done, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}Task completed /);
  assert.ok(done.endsWith("Task completed task_id=t1 step=persist duration_ms=12.5"), done);
  // Redaction and masking hold in pretty lines too; unlisted fields stay in JSON only.
  assert.equal(failed.includes("maya@"), false);
  assert.equal(failed.includes("s3cret"), false);
  assert.ok(failed.includes('WARN  Callback failed error="refused for m***@example.com"'), failed);
  assert.ok(lines[1].includes(`${ESC}[33mWARN`), "warnings are yellow");
});

Deno.test("JSON logs keep every field, one object a line; auto is JSON when not on a terminal", () => {
  const lines: string[] = [];
  createLogger("info", { role: "worker" }, (l) => lines.push(l), "json").info("Started", { a: 1 });
  const record = JSON.parse(lines[0]);
  assert.deepEqual([record.level, record.msg, record.role, record.a], [
    "info",
    "Started",
    "worker",
    1,
  ]);
  assert.equal(logFormat("pretty"), "pretty");
  assert.equal(logFormat("json"), "json");
  // The suite's stderr is a pipe under `deno task test` in CI; on a terminal auto is pretty.
  assert.equal(logFormat("auto"), Deno.stderr.isTerminal() ? "pretty" : "json");
  assert.equal(
    prettyLine({ time: "2026-01-01T10:00:00.000Z", level: "info", msg: "x" }, false),
    "10:00:00.000 INFO  x",
  );
});
