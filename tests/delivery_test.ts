import assert from "node:assert/strict";
import { Delivery } from "../consumers/delivery.ts";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import type { EventStore } from "../src/event_store.ts";
import { createLogger } from "../src/log.ts";

/** A delivery of entry "1-0" whose store only records settles (the kit's own port, no Redis). */
function delivery(settle: EventStore["settle"] = () => Promise.resolve("")) {
  const store = { settle } as unknown as EventStore;
  return new Delivery(
    { id: "1-0", fields: [] },
    new AbortController().signal,
    createLogger("error", {}),
    { store, stream: "s", group: "g", consumer: "c", clock: () => new Date(0) },
  );
}

const policy = { maxAttempts: 3, baseMs: 0, maxMs: 0 };

Deno.test("attempts: a failed begin spends no attempt and leaves the entry to a redelivery", async () => {
  const seen: string[] = [];
  await assert.rejects(
    delivery().attempts({
      first: 1,
      policy,
      begin: () => Promise.reject(new Error("Command timed out")),
      run: () => Promise.resolve(void seen.push("run")),
      retrying: () => Promise.resolve(void seen.push("retrying")),
      givingUp: () => Promise.resolve(void seen.push("givingUp")),
    }),
    /Command timed out/,
  );
  assert.deepEqual(seen, []);
});

Deno.test("attempts: retryable failures retry until the last attempt, then give up", async () => {
  const seen: string[] = [];
  await delivery().attempts({
    first: 2,
    policy,
    begin: (attempt) => Promise.resolve(void seen.push(`begin ${attempt}`)),
    run: () => Promise.reject(new RetryableError("busy", { retryAfterMs: 0 })),
    retrying: (_f, attempt, waitMs) =>
      Promise.resolve(void seen.push(`retry ${attempt} ${waitMs}`)),
    givingUp: (f, attempt) => Promise.resolve(void seen.push(`give up ${attempt} ${f.message}`)),
  });
  assert.deepEqual(seen, ["begin 2", "retry 2 0", "begin 3", "give up 3 busy"]);
});

Deno.test("attempts: an unrecoverable failure gives up at once", async () => {
  const seen: string[] = [];
  await delivery().attempts({
    first: 1,
    policy,
    run: () => Promise.reject(new UnrecoverableError("bad input")),
    retrying: () => Promise.resolve(void seen.push("retry")),
    givingUp: (f) => Promise.resolve(void seen.push(`give up ${f.retryable}`)),
  });
  assert.deepEqual(seen, ["give up false"]);
});

Deno.test("settle and deadLetter are fenced on the delivered entry of this group and consumer", async () => {
  const calls: Parameters<EventStore["settle"]>[0][] = [];
  const d = delivery((input) => {
    calls.push(input);
    return Promise.resolve("");
  });
  await d.settle("t", "ack");
  await d.deadLetter("t", { error: "e", attempts: 2, payload: "{}" });
  assert.deepEqual(
    calls.map((c) => [c.stream, c.group, c.consumer, c.entryId, c.taskId, c.mode]),
    [["s", "g", "c", "1-0", "t", "ack"], ["s", "g", "c", "1-0", "t", "dead"]],
  );
  assert.equal(calls[1].deadLetter?.attempts, 2);
});
