import assert from "node:assert/strict";
import type { EventOf, StoredEvent, TaskEventType } from "../src/events.ts";
import { createKeys } from "../src/keys.ts";
import { ALL_EVENT_TYPES } from "../src/projections/definition.ts";
import { PROJECTION_NAMES, PROJECTIONS } from "../src/projections/registry.ts";
import { stats } from "../src/projections/stats/projection.ts";
import {
  bucketValue,
  durationBucket,
  FINISHED_WINDOW_S,
  histogramPercentile,
  statsKeys,
  statsStatusKey,
} from "../src/projections/stats/view.ts";
import { taskView } from "../src/projections/task_view/projection.ts";
import { taskViewKey } from "../src/projections/task_view/view.ts";
import { videoScenes } from "../src/projections/video_scenes/projection.ts";
import { videoViewKey } from "../src/projections/video_scenes/view.ts";
import type { TaskResult } from "../src/pipeline/scene.ts";
import { given } from "./_given.ts";

let seq = 0;
/** A stored event of `task`, with the next entry id and a time one second after the last. */
function on<T extends TaskEventType>(
  task: string,
  type: T,
  data: EventOf<T>["data"],
): StoredEvent {
  seq += 1;
  const at = new Date(Date.UTC(2025, 0, 1, 0, 0, seq)).toISOString();
  return { id: `${seq}-0`, type, task_id: task, at, data } as StoredEvent;
}

const result = (video_revision: number): TaskResult => ({
  scenes: [{
    scene_number: 1,
    visual_description: `revision ${video_revision}`,
    voiceover: "",
    shot_type: "wide",
    sound_effects: "",
    music_direction: "",
    duration_seconds: 5,
  }],
  image_url: "https://example.com/i.png",
  reframed: true,
  provider: { reframe: "offline", scenes: "offline" },
  revision: video_revision > 1,
  video_revision,
});

const queued = (task: string, video = "v1") =>
  on(task, "task.queued", {
    video_id: video,
    user_id: "u1",
    is_revision: false,
    webhook_entry: "1-0",
  });
const started = (task: string, attempt = 1) => on(task, "task.started", { attempt, worker: "w1" });
const stepCompleted = (task: string, step: "reframe" | "scenes") =>
  on(task, "step.completed", { step, attempt: 1, duration_ms: 120, output: {} });
const failed = (task: string, final: boolean) =>
  on(task, "task.failed", {
    error: "Provider down",
    step: "scenes",
    retryable: !final,
    attempt: 1,
    final,
  });
const completed = (task: string, revision = 1, video = "v1") =>
  on(task, "task.completed", { video_id: video, result: result(revision), duration_ms: 2_500 });
const reprocess = (task: string, run = 2) =>
  on(task, "task.reprocess_requested", {
    run,
    requested_by: "ops",
    reason: "provider fixed",
    source: "replay",
  });

// Task view

Deno.test("task view: queued, started, failed for good gives a failed task with its error", () => {
  given(taskView, [queued("t1"), started("t1")]).when(failed("t1", true)).then((view) => {
    assert.equal(view?.status, "failed");
    assert.equal(view?.retrying, false);
    assert.deepEqual(view?.error, {
      message: "Provider down",
      step: "scenes",
      retryable: false,
      attempt: 1,
    });
    assert.equal(view?.event_count, 3);
  });
});

Deno.test("task view: a retryable failure keeps the task processing and retrying", () => {
  given(taskView, [queued("t1"), started("t1")]).when(failed("t1", false)).then((view) => {
    assert.equal(view?.status, "processing");
    assert.equal(view?.retrying, true);
  });
});

Deno.test("task view: a reprocess starts a new run with no steps, error or dead letter", () => {
  const first = queued("t1");
  given(taskView, [
    first,
    started("t1"),
    stepCompleted("t1", "reframe"),
    failed("t1", true),
    on("t1", "task.dead_lettered", {
      error: "Provider down",
      attempts: 3,
      dead_letter_entry: "9-0",
    }),
  ]).when(reprocess("t1")).then((view) => {
    assert.equal(view?.status, "queued");
    assert.equal(view?.run, 2);
    assert.deepEqual(view?.steps, {});
    assert.equal(view?.error, null);
    assert.equal(view?.dead_letter_entry, null);
    assert.equal(view?.attempts, 0);
    assert.equal(view?.created_at, first.at, "the task keeps its creation time");
    assert.equal(view?.video_id, "v1");
  });
});

Deno.test("task view: a deleted dead letter leaves the task failed with nothing to redrive", () => {
  const deadLettered = on("t1", "task.dead_lettered", {
    error: "Provider down",
    attempts: 3,
    dead_letter_entry: "9-0",
  });
  const deleted = (entry: string) =>
    on("t1", "task.dead_letter_deleted", {
      dead_letter_entry: entry,
      requested_by: "maya",
      reason: "bad input",
    });
  const history = [queued("t1"), started("t1"), failed("t1", true), deadLettered];
  given(taskView, history).when(deleted("9-0")).then((view) => {
    assert.equal(view?.status, "failed");
    assert.equal(view?.dead_letter_entry, null);
    assert.equal(view?.error?.message, "Provider down");
  });
  // Another (older) dead letter's deletion leaves the current one.
  given(taskView, history).when(deleted("8-0")).then((view) => {
    assert.equal(view?.dead_letter_entry, "9-0");
  });
});

Deno.test("task view: completion records the result and step durations", () => {
  given(taskView, [queued("t1"), started("t1"), stepCompleted("t1", "reframe")])
    .when(stepCompleted("t1", "scenes"), completed("t1"))
    .then((view) => {
      assert.equal(view?.status, "completed");
      assert.equal(view?.current_step, null);
      assert.deepEqual(Object.keys(view?.steps ?? {}).sort(), ["reframe", "scenes"]);
      assert.equal(view?.result?.video_revision, 1);
    });
});

Deno.test("task view: a failed callback keeps the last attempt's status code", () => {
  given(taskView, [queued("t1"), completed("t1")]).when(
    on("t1", "callback.attempted", {
      webhook_id: "msg_1",
      attempt: 1,
      status_code: 502,
      error: "Bad gateway",
      retry_in_ms: 1_000,
    }),
    on("t1", "callback.failed", { webhook_id: "msg_1", attempts: 5, error: "Gave up" }),
  ).then((view) => {
    assert.deepEqual(view?.callback, {
      state: "failed",
      webhook_id: "msg_1",
      attempts: 5,
      last_status_code: 502,
      last_error: "Gave up",
    });
    assert.equal(view?.status, "completed", "a callback does not change the task's status");
  });
});

// Video scenes

Deno.test("video view: only a completed task makes it", () => {
  given(videoScenes, [queued("t1"), started("t1"), failed("t1", true)]).then((view) => {
    assert.equal(view, null);
  });
  given(videoScenes, [queued("t1")]).when(completed("t1", 1)).then((view) => {
    assert.equal(view?.video_id, "v1");
    assert.equal(view?.task_id, "t1");
    assert.equal(view?.revision, 1);
  });
});

Deno.test("video view: keeps the latest revision when an older one completes later", () => {
  given(videoScenes, [completed("t2", 2)]).when(completed("t1", 1)).then((view) => {
    assert.equal(view?.revision, 2);
    assert.equal(view?.task_id, "t2");
  });
  given(videoScenes, [completed("t1", 1)]).when(completed("t2", 2)).then((view) => {
    assert.equal(view?.revision, 2);
    assert.equal(view?.scenes[0].visual_description, "revision 2");
  });
});

// Stats

Deno.test("stats: counters move with a task from queued to processing to completed", () => {
  given(stats, [queued("t1")]).then((s) => {
    assert.deepEqual(s.counters, { total_requests: 1, queued_tasks: 1 });
  });
  given(stats, [queued("t1"), started("t1")]).when(completed("t1")).then((s) => {
    assert.equal(s.counters.total_requests, 1);
    assert.equal(s.counters.queued_tasks, 0);
    assert.equal(s.counters.processing_tasks, 0);
    assert.equal(s.counters.completed_tasks, 1);
    assert.equal(s.counters.processing_ms, 2_500);
    assert.deepEqual(s.status, { t1: "completed" });
    // 2,500 ms falls in the bucket of 2,500–2,599 ms.
    assert.deepEqual(s.durations, { 2500: 1 });
    assert.equal(Object.values(s.finished).reduce((a, b) => a + b, 0), 1);
  });
});

Deno.test("stats: durations go to fixed buckets, exact below 100 ms, two digits above", () => {
  assert.equal(durationBucket(0), 0);
  assert.equal(durationBucket(99.4), 99);
  assert.equal(durationBucket(100), 100);
  assert.equal(durationBucket(1_234), 1_200);
  assert.equal(durationBucket(99_999), 99_000);
  assert.equal(durationBucket(86_400_000), 86_000_000);
  assert.equal(bucketValue(42), 42);
  assert.equal(bucketValue(1_200), 1_250);
  // Every bucket of a day's range: 100 exact ones plus 90 per decade.
  const buckets = new Set<number>();
  for (let ms = 0; ms < 86_400_000; ms = Math.max(ms + 1, Math.floor(ms * 1.001))) {
    buckets.add(durationBucket(ms));
  }
  assert.ok(buckets.size <= 100 + 90 * 6, `${buckets.size} buckets`);
  // Nearest-rank percentiles over the buckets, within 5 % of the exact value.
  const exact = Array.from({ length: 1_000 }, (_, i) => 50 + i * 7);
  const histogram: Record<string, number> = {};
  for (const ms of exact) histogram[durationBucket(ms)] = (histogram[durationBucket(ms)] ?? 0) + 1;
  for (const q of [0.5, 0.95]) {
    const truth = exact[Math.ceil(q * exact.length) - 1];
    const got = histogramPercentile(histogram, q);
    assert.ok(Math.abs(got - truth) / truth <= 0.05, `p${q * 100}: ${got} vs ${truth}`);
  }
  assert.equal(histogramPercentile({}, 0.5), 0);
});

Deno.test("stats: the throughput window keeps the last seconds before the newest finish", () => {
  const finishAt = (task: string, second: number) =>
    ({
      ...completed(task),
      at: new Date(Date.UTC(2025, 0, 2) + second * 1000).toISOString(),
    }) as StoredEvent;
  const base = Date.UTC(2025, 0, 2) / 1000;
  const history = Array.from({ length: 300 }, (_, i) => finishAt(`w${i}`, i));
  given(stats, history).then((s) => {
    const seconds = Object.keys(s.finished).map(Number);
    assert.equal(Math.max(...seconds), base + 299);
    assert.equal(Math.min(...seconds), base + 299 - FINISHED_WINDOW_S);
    assert.equal(seconds.length, FINISHED_WINDOW_S + 1);
    assert.equal(s.counters.completed_tasks, 300, "counters keep everything");
  });
  // A late finish older than the window is counted, but not kept in it.
  given(stats, history).when(finishAt("late", 10)).then((s) => {
    assert.equal(s.finished[base + 10], undefined);
    assert.equal(s.counters.completed_tasks, 301);
  });
  // Whatever the order, the same events give the same window.
  given(stats, [...history].reverse()).then((reversed) => {
    given(stats, history).then((s) => assert.deepEqual(reversed.finished, s.finished));
  });
});

Deno.test("stats: a reprocessed failure moves from failed back to queued, counted once", () => {
  given(stats, [queued("t1"), started("t1"), failed("t1", true)]).then((s) => {
    assert.equal(s.counters.failed_tasks, 1);
    assert.equal(s.counters.processing_tasks, 0);
  });
  given(stats, [queued("t1"), started("t1"), failed("t1", true)]).when(reprocess("t1")).then(
    (s) => {
      assert.equal(s.counters.failed_tasks, 0);
      assert.equal(s.counters.queued_tasks, 1);
      assert.equal(s.counters.reprocessed_tasks, 1);
      assert.equal(s.counters.total_requests, 1);
    },
  );
});

Deno.test("stats: a retryable failure moves nothing; a repeated queued event counts once", () => {
  given(stats, [queued("t1"), started("t1")]).when(failed("t1", false)).then((s) => {
    assert.equal(s.counters.processing_tasks, 1);
    assert.equal(s.counters.failed_tasks ?? 0, 0);
    assert.deepEqual(s.finished, {});
  });
  given(stats, [queued("t1")]).when(queued("t1")).then((s) => {
    assert.equal(s.counters.total_requests, 1);
    assert.equal(s.counters.queued_tasks, 1);
  });
});

// The registry

Deno.test("every projection leaves its state alone for the events it does not handle", () => {
  const history = [
    queued("t1"),
    started("t1"),
    stepCompleted("t1", "reframe"),
    failed("t1", false),
    completed("t1"),
  ];
  const others: Record<TaskEventType, StoredEvent> = {
    "task.queued": queued("t1"),
    "task.reprocess_requested": reprocess("t1"),
    "task.started": started("t1", 2),
    "step.started": on("t1", "step.started", { step: "scenes", attempt: 1 }),
    "step.completed": stepCompleted("t1", "scenes"),
    "scenes.generated": on("t1", "scenes.generated", {
      video_id: "v1",
      user_id: "u1",
      result: result(1),
    }),
    "task.completed": completed("t1", 2),
    "task.failed": failed("t1", true),
    "task.dead_lettered": on("t1", "task.dead_lettered", {
      error: "x",
      attempts: 3,
      dead_letter_entry: "9-0",
    }),
    "task.dead_letter_deleted": on("t1", "task.dead_letter_deleted", {
      dead_letter_entry: "9-0",
      requested_by: "maya",
      reason: "x",
    }),
    "callback.attempted": on("t1", "callback.attempted", {
      webhook_id: "m",
      attempt: 1,
      status_code: 500,
      error: "x",
      retry_in_ms: 10,
    }),
    "callback.delivered": on("t1", "callback.delivered", {
      webhook_id: "m",
      attempts: 1,
      status_code: 200,
    }),
    "callback.failed": on("t1", "callback.failed", { webhook_id: "m", attempts: 1, error: "x" }),
  };
  assert.deepEqual(Object.keys(others).sort(), [...ALL_EVENT_TYPES].sort());
  for (const projection of PROJECTIONS) {
    const unhandled = ALL_EVENT_TYPES.filter((t) => !projection.handles.includes(t));
    given<unknown>(projection, history).then((before) => {
      for (const type of unhandled) {
        given<unknown>(projection, history).when(others[type]).then((after) => {
          assert.deepEqual(after, before, `${projection.name} ignores ${type}`);
        });
      }
    });
  }
});

Deno.test("projection names, and so consumer groups, are unchanged", () => {
  assert.deepEqual(PROJECTION_NAMES, ["task-view", "video-scenes", "stats", "task-index"]);
});

Deno.test("view keys per generation are the same strings as before", () => {
  const keys = createKeys("vp");
  assert.equal(taskViewKey(keys.views(0).prefix, "t"), "{vp}:view:task:t");
  assert.equal(videoViewKey(keys.views(3).prefix, "v"), "{vp}:view@3:video:v");
  const { minute, ...named } = statsKeys(keys.views(0).prefix);
  assert.deepEqual(named, {
    counters: "{vp}:view:stats",
    statusPrefix: "{vp}:view:stats:task:",
    durations: "{vp}:view:stats:duration-buckets",
    finished: "{vp}:view:stats:finished-by-second",
    minutes: "{vp}:view:stats:finished-by-minute",
    minutePattern: "{vp}:view:stats:minute:*",
  });
  assert.equal(minute(29_000_000), "{vp}:view:stats:minute:29000000");
  assert.equal(statsStatusKey(keys.views(0).prefix, "t"), "{vp}:view:stats:task:t");
  // The keys of the earlier unbounded layout stay owned, so a reset or rebuild drops them.
  assert.deepEqual(stats.ownedKeys(keys.views(2).prefix), [
    "{vp}:view@2:stats",
    "{vp}:view@2:stats:task:*",
    "{vp}:view@2:stats:duration-buckets",
    "{vp}:view@2:stats:finished-by-second",
    "{vp}:view@2:stats:finished-by-minute",
    "{vp}:view@2:stats:minute:*",
    "{vp}:view@2:stats:status",
    "{vp}:view@2:stats:durations",
    "{vp}:view@2:stats:finished",
  ]);
  assert.deepEqual(taskView.ownedKeys(keys.views(0).prefix), ["{vp}:view:task:*"]);
  assert.equal(keys.views(1).viewPattern, "{vp}:view@1:*");
});
