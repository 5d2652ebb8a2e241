/**
 * Settles issued in the same turn go to Redis as one settle.lua call (issue #14); each keeps the
 * guarantees of a lone settle: its own fencing, its events appended together and in order before
 * its XACK, its own dead letter, and its own failure.
 */
import assert from "node:assert/strict";
import { ClaimLostError, EventStore, type SettleInput } from "../src/event_store.ts";
import { event, fieldsToRecord, type NewEvent } from "../src/events.ts";
import { createKeys, type Keys } from "../src/keys.ts";
import { deleteMatching } from "../src/projections/rebuild.ts";
import { Batcher } from "../src/redis/batcher.ts";
import { closeRedis, connectRedis, type RedisClient, waitReady } from "../src/redis/client.ts";
import { settleScript } from "../src/redis/scripts.ts";
import { readStream, uniquePrefix } from "./_helpers.ts";

const REDIS_URL = "redis://127.0.0.1:6379";
const GROUP = "workers";
const CONSUMER = "worker-a";
const AT = "2026-01-02T03:04:05.000Z";

interface Setup {
  redis: RedisClient;
  /** `redis` as the store sees it (script calls counted). */
  client: RedisClient;
  keys: Keys;
  store: EventStore;
  /** Script calls (EVALSHA) the store made. */
  scriptCalls(): number;
  /** Adds work entries for `tasks` and delivers them to CONSUMER; their entry ids, in order. */
  hold(tasks: string[]): Promise<string[]>;
}

/** A store on the shared Redis under a prefix of its own, counting its script calls. */
async function withStore(name: string, run: (setup: Setup) => Promise<void>) {
  const redis = connectRedis(REDIS_URL);
  const keys = createKeys(uniquePrefix(name));
  let calls = 0;
  const counted = new Proxy(redis, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (property === "evalsha" || property === "call") {
        return (...args: unknown[]) => {
          if (property === "evalsha" || String(args[0]).toUpperCase() === "EVALSHA") calls++;
          return value.apply(target, args);
        };
      }
      return value.bind(target);
    },
  });
  const store = new EventStore(counted, keys, { idempotencyTtlS: 60, timelineTtlS: 60 });
  try {
    await waitReady(redis);
    // Loaded first, so no call is an EVALSHA answered NOSCRIPT and sent again as EVAL.
    await redis.script("LOAD", settleScript.source);
    await redis.xgroup("CREATE", keys.webhookStream, GROUP, "$", "MKSTREAM");
    await run({
      redis,
      client: counted,
      keys,
      store,
      scriptCalls: () => calls,
      async hold(tasks) {
        const ids = [];
        for (const task of tasks) {
          ids.push(String(await redis.xadd(keys.webhookStream, "*", "task_id", task)));
        }
        await redis.xreadgroup(
          "GROUP",
          GROUP,
          CONSUMER,
          "COUNT",
          tasks.length,
          "STREAMS",
          keys.webhookStream,
          ">",
        );
        return ids;
      },
    });
  } finally {
    await deleteMatching(redis, keys.pattern);
    await deleteMatching(redis, createKeys(keys.prefix, 1).pattern);
    await closeRedis(redis);
  }
}

const started = (step: "reframe" | "scenes") => event("step.started", AT, { step, attempt: 1 });
const failed = (error: string) =>
  event("task.failed", AT, { error, retryable: true, attempt: 1, final: false, retry_in_ms: 10 });

function settleOf(
  taskId: string,
  entryId: string,
  mode: SettleInput["mode"],
  events: NewEvent[],
): SettleInput {
  return { group: GROUP, consumer: CONSUMER, entryId, taskId, mode, events, at: AT };
}

/** The entry ids still pending in the group, and for whom. */
async function pending(redis: RedisClient, keys: Keys): Promise<Map<string, string>> {
  const rows = await redis.xpending(keys.webhookStream, GROUP, "-", "+", 100) as [
    string,
    string,
  ][];
  return new Map(rows.map(([id, consumer]) => [id, consumer]));
}

/** Every event of the log as [task id, type, step or error], in log order. */
async function logOf(redis: RedisClient, keys: Keys) {
  return (await readStream(redis, keys.eventStream)).map((e) => {
    const data = JSON.parse(e.data);
    return [e.task_id, e.type, data.step ?? data.error ?? ""];
  });
}

Deno.test("settles issued together go in one script call; a fenced-off one writes nothing, the others go through", async () => {
  await withStore("settle-batch-fence", async ({ redis, keys, store, scriptCalls, hold }) => {
    const tasks = ["t0", "t1", "t2", "t3", "t4"];
    const entries = await hold(tasks);
    // Another consumer reclaims t2's entry: worker-a's settle for it must be refused.
    await redis.xclaim(keys.webhookStream, GROUP, "worker-b", 0, entries[2]);

    const outcomes = await Promise.allSettled(
      tasks.map((task, i) =>
        store.settle(settleOf(task, entries[i], i % 2 ? "append" : "ack", [
          event("task.started", AT, { attempt: 1, worker: "w" }),
          started("reframe"),
        ]))
      ),
    );

    assert.equal(scriptCalls(), 1, "one script call for the whole batch");
    const rejected = outcomes[2] as PromiseRejectedResult;
    assert.equal(outcomes[2].status, "rejected");
    assert.ok(rejected.reason instanceof ClaimLostError);
    assert.match(rejected.reason.message, new RegExp(entries[2]));
    for (const i of [0, 1, 3, 4]) assert.equal(outcomes[i].status, "fulfilled", tasks[i]);

    // The fenced-off settle wrote nothing: no event, no timeline, the entry still worker-b's.
    const log = await logOf(redis, keys);
    assert.equal(log.filter(([task]) => task === "t2").length, 0);
    assert.equal(await redis.exists(keys.taskTimeline("t2")), 0);
    // "ack" settles (t0, t4) acknowledged their entries, "append" ones (t1, t3) kept them.
    assert.deepEqual(
      await pending(redis, keys),
      new Map([[entries[1], CONSUMER], [entries[2], "worker-b"], [entries[3], CONSUMER]]),
    );
    // Each settle's reply is its own last event, the last of its task's timeline.
    for (const i of [0, 1, 3, 4]) {
      const timeline = await redis.lrange(keys.taskTimeline(tasks[i]), 0, -1);
      assert.equal(timeline.length, 2);
      assert.equal((outcomes[i] as PromiseFulfilledResult<string>).value, timeline[1]);
    }
  });
});

Deno.test("each settle of a batch appends its events together, in order, to the log and its timeline", async () => {
  await withStore("settle-batch-order", async ({ redis, keys, store, scriptCalls, hold }) => {
    const tasks = ["a", "b", "c"];
    const entries = await hold(tasks);
    const first = tasks.map((task, i) =>
      store.settle(settleOf(task, entries[i], "append", [
        event("task.started", AT, { attempt: 1, worker: "w" }),
        started("reframe"),
      ]))
    );
    await Promise.all(first);
    const second = tasks.map((task, i) =>
      store.settle(settleOf(task, entries[i], "ack", [
        failed(`${task} once`),
        started("scenes"),
        failed(`${task} twice`),
      ]))
    );
    await Promise.all(second);
    assert.equal(scriptCalls(), 2);

    // Log order is batch order, and no settle's events are split by another's.
    const started1 = (t: string) => [[t, "task.started", ""], [t, "step.started", "reframe"]];
    const then = (t: string) => [
      [t, "task.failed", `${t} once`],
      [t, "step.started", "scenes"],
      [t, "task.failed", `${t} twice`],
    ];
    assert.deepEqual(await logOf(redis, keys), [
      ...tasks.flatMap(started1),
      ...tasks.flatMap(then),
    ]);
    // Each timeline lists exactly its task's events, in log order.
    const log = await readStream(redis, keys.eventStream);
    for (const task of tasks) {
      assert.deepEqual(
        await redis.lrange(keys.taskTimeline(task), 0, -1),
        log.filter((e) => e.task_id === task).map((e) => e.id),
      );
      assert.ok(await redis.ttl(keys.taskTimeline(task)) > 0);
    }
    assert.equal((await pending(redis, keys)).size, 0);
  });
});

Deno.test("a dead-letter settle inside a batch writes its dead letter and task.dead_lettered, and acks only its entry", async () => {
  await withStore("settle-batch-dead", async ({ redis, keys, store, scriptCalls, hold }) => {
    const entries = await hold(["ok-1", "dead", "ok-2"]);
    const [one, dead, two] = await Promise.all([
      store.settle(settleOf("ok-1", entries[0], "append", [started("reframe")])),
      store.settle({
        ...settleOf("dead", entries[1], "dead", [failed("gave up")]),
        deadLetter: { error: "gave up", attempts: 3, payload: '{"video_id":"v"}' },
      }),
      store.settle(settleOf("ok-2", entries[2], "ack", [started("scenes")])),
    ]);
    assert.equal(scriptCalls(), 1);

    const letters = await readStream(redis, keys.deadLetterStream);
    assert.equal(letters.length, 1);
    assert.deepEqual(
      { ...letters[0], id: undefined },
      {
        id: undefined,
        task_id: "dead",
        group: GROUP,
        entry: entries[1],
        error: "gave up",
        attempts: "3",
        payload: '{"video_id":"v"}',
        at: AT,
      },
    );
    const log = await readStream(redis, keys.eventStream);
    assert.deepEqual(log.map((e) => [e.task_id, e.type]), [
      ["ok-1", "step.started"],
      ["dead", "task.failed"],
      ["dead", "task.dead_lettered"],
      ["ok-2", "step.started"],
    ]);
    assert.deepEqual(JSON.parse(log[2].data), {
      error: "gave up",
      attempts: 3,
      dead_letter_entry: letters[0].id,
    });
    assert.deepEqual([one, dead, two], [log[0].id, log[2].id, log[3].id]);
    assert.deepEqual(await pending(redis, keys), new Map([[entries[0], CONSUMER]]));
  });
});

Deno.test("a settle of a batch that fails in Redis fails alone; the others are written", async () => {
  await withStore("settle-batch-error", async ({ redis, keys, store, scriptCalls, hold }) => {
    const entries = await hold(["a", "b"]);
    const outcomes = await Promise.allSettled([
      store.settle(settleOf("a", entries[0], "ack", [started("reframe")])),
      // A group that does not exist: XPENDING fails before this settle writes anything.
      store.settle({ ...settleOf("x", entries[1], "ack", [started("reframe")]), group: "nope" }),
      store.settle(settleOf("b", entries[1], "ack", [started("reframe")])),
    ]);
    assert.equal(scriptCalls(), 1);
    assert.equal(outcomes[0].status, "fulfilled");
    assert.equal(outcomes[1].status, "rejected");
    assert.match(String((outcomes[1] as PromiseRejectedResult).reason), /NOGROUP/);
    assert.ok(!((outcomes[1] as PromiseRejectedResult).reason instanceof ClaimLostError));
    assert.equal(outcomes[2].status, "fulfilled");
    assert.deepEqual((await logOf(redis, keys)).map(([task]) => task), ["a", "b"]);
    assert.equal((await pending(redis, keys)).size, 0);
  });
});

Deno.test("a settle for an entry acked earlier in the same batch is fenced off, as it would be alone", async () => {
  await withStore("settle-batch-same-entry", async ({ redis, keys, store, scriptCalls, hold }) => {
    const [entry] = await hold(["t"]);
    const outcomes = await Promise.allSettled([
      store.settle(settleOf("t", entry, "ack", [started("reframe")])),
      store.settle(settleOf("t", entry, "append", [started("scenes")])),
    ]);
    assert.equal(scriptCalls(), 1);
    assert.equal(outcomes[0].status, "fulfilled");
    assert.ok((outcomes[1] as PromiseRejectedResult).reason instanceof ClaimLostError);
    assert.deepEqual(await logOf(redis, keys), [["t", "step.started", "reframe"]]);
  });
});

Deno.test("a malformed batch is refused before anything is written", async () => {
  await withStore("settle-batch-malformed", async ({ redis, keys, hold }) => {
    const [entry] = await hold(["t"]);
    const valid = [GROUP, CONSUMER, entry, "ack", "t", AT, "", 0, "", 1, "step.started", AT, "{}"];
    const call = (extraKeys: string[], extraArgs: (string | number)[]) =>
      settleScript.run(redis, {
        keys: { events: keys.eventStream, dead_letters: keys.deadLetterStream },
        args: { timeline_ttl_s: 60 },
      }, { keys: extraKeys, args: extraArgs });
    const settleKeys = [keys.taskTimeline("t"), keys.webhookStream];
    // The second settle says it has 2 events but carries 1; or has an unknown mode; or no keys.
    const bad = [...valid.slice(0, 9), 2, "step.started", AT, "{}"];
    const badMode = [...valid.slice(0, 3), "acknowledge", ...valid.slice(4)];
    await assert.rejects(call([...settleKeys, ...settleKeys], [...valid, ...bad]), /malformed/);
    await assert.rejects(call([...settleKeys, ...settleKeys], [...valid, ...badMode]), /malformed/);
    await assert.rejects(call(settleKeys, [...valid, ...valid]), /malformed/);
    await assert.rejects(call([...settleKeys, ...settleKeys], valid), /keys without a settle/);
    assert.equal(await redis.xlen(keys.eventStream), 0);
    assert.deepEqual(await pending(redis, keys), new Map([[entry, CONSUMER]]));
    // The same settle well-formed goes through.
    const [id] = await call(settleKeys, valid) as string[];
    const [written] = await redis.xrange(keys.eventStream, "-", "+");
    assert.equal(written[0], id);
    assert.deepEqual(fieldsToRecord(written[1]), {
      type: "step.started",
      task_id: "t",
      at: AT,
      data: "{}",
    });
  });
});

Deno.test("settles of two partitions issued together go in a script call each, to their own keys", async () => {
  await withStore("settle-batch-partitions", async (setup) => {
    const { redis, client, keys, store, scriptCalls, hold } = setup;
    const other = createKeys(keys.prefix, 1);
    const otherStore = new EventStore(client, other, { idempotencyTtlS: 60, timelineTtlS: 60 });
    await redis.xgroup("CREATE", other.webhookStream, GROUP, "$", "MKSTREAM");
    const [zero] = await hold(["p0"]);
    const one = String(await redis.xadd(other.webhookStream, "*", "task_id", "p1"));
    await redis.xreadgroup("GROUP", GROUP, CONSUMER, "STREAMS", other.webhookStream, ">");

    await Promise.all([
      store.settle(settleOf("p0", zero, "ack", [started("reframe")])),
      otherStore.settle(settleOf("p1", one, "ack", [started("reframe")])),
    ]);
    // One call per partition: a Redis Cluster runs a script only on keys of one slot.
    assert.equal(scriptCalls(), 2);
    assert.deepEqual((await logOf(redis, keys)).map(([task]) => task), ["p0"]);
    assert.deepEqual((await logOf(redis, other)).map(([task]) => task), ["p1"]);
    assert.equal(await redis.llen(other.taskTimeline("p1")), 1);
  });
});

Deno.test("batcher: items added in one turn go out together; each caller gets its own outcome", async () => {
  const sent: number[][] = [];
  const batcher = new Batcher<number, string>((items) => {
    sent.push(items);
    return Promise.resolve(items.map((n) => n < 0 ? new RangeError(`bad ${n}`) : `ok ${n}`));
  }, { max: 3 });
  const outcomes = await Promise.allSettled([1, -2, 3, 4, 5].map((n) => batcher.add(n)));
  // Split at `max`; the rest went at the end of the turn.
  assert.deepEqual(sent, [[1, -2, 3], [4, 5]]);
  assert.deepEqual(outcomes.map((o) => o.status === "fulfilled" ? o.value : String(o.reason)), [
    "ok 1",
    "RangeError: bad -2",
    "ok 3",
    "ok 4",
    "ok 5",
  ]);
  // A lone item waits for no timer: it is sent within its turn's microtasks.
  const lone = batcher.add(6);
  await Promise.resolve();
  assert.deepEqual(sent.at(-1), [6]);
  assert.equal(await lone, "ok 6");
});

Deno.test("batcher: a batch whose send fails fails every caller in it, and the next batch goes on", async () => {
  let fail = true;
  const batcher = new Batcher<number, number>((items) => {
    if (fail) return Promise.reject(new Error("Connection is closed."));
    return Promise.resolve(items);
  }, { max: 10 });
  const outcomes = await Promise.allSettled([batcher.add(1), batcher.add(2)]);
  assert.deepEqual(outcomes.map((o) => o.status), ["rejected", "rejected"]);
  assert.match(String((outcomes[0] as PromiseRejectedResult).reason), /Connection is closed/);
  fail = false;
  assert.deepEqual(await Promise.all([batcher.add(3), batcher.add(4)]), [3, 4]);
  // A send answering for the wrong number of items fails them all too.
  const short = new Batcher<number, number>((items) => Promise.resolve(items.slice(1)), {
    max: 10,
  });
  const results = await Promise.allSettled([short.add(1), short.add(2)]);
  assert.deepEqual(results.map((o) => o.status), ["rejected", "rejected"]);
});
