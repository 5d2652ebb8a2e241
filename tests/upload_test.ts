/**
 * Uploads against a real server (a `main.ts serve` process, or Deno.serve in this process) with raw
 * TCP clients: deadlines, body-read caps, refusals before the body is read, closed connections.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { deleteMatching } from "../src/projections/rebuild.ts";
import { waitReady } from "../src/redis/client.ts";
import { createServices } from "../src/runtime.ts";
import { childEnv, fixture, freePort, uniquePrefix, waitFor } from "./_helpers.ts";

const SECRET = `whsec_${btoa("incoming-secret-0123456789abcdef")}`;
const MAIN = new URL("../main.ts", import.meta.url).pathname;
const utf8 = new TextEncoder();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Server extends AsyncDisposable {
  port: number;
  pid: number;
  prefix: string;
}

/** A `main.ts serve` process on a free loopback port, under a key prefix of its own. */
async function startServer(name: string, env: Record<string, string> = {}): Promise<Server> {
  const prefix = uniquePrefix(name);
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "serve"],
    clearEnv: true,
    env: {
      ...childEnv(),
      KEY_PREFIX: prefix,
      PORT: String(port),
      HOST: "127.0.0.1",
      LOG_LEVEL: "error",
      ...env,
    },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    const config = loadConfig({ KEY_PREFIX: prefix });
    const services = createServices(config, createLogger("error", {}, () => {}));
    try {
      await waitReady(services.redis);
      await deleteMatching(services.redis, services.keys.pattern);
    } finally {
      await services.close();
    }
  };
  try {
    await waitFor(async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/health`);
        await res.body?.cancel();
        return true;
      } catch {
        return false;
      }
    }, { timeoutMs: 20_000, what: `server on ${port}` });
  } catch (error) {
    await stop();
    throw error;
  }
  return { port, pid: child.pid, prefix, [Symbol.asyncDispose]: stop };
}

/** Resident memory of a process, in bytes (Linux). */
function rssOf(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

interface Exchange {
  /** Everything the server sent. */
  response: string;
  /** Body bytes the client had written when the first response byte arrived (null: none). */
  sentAtResponse: number | null;
  /** Milliseconds from the start until the first response byte (null: none). */
  answeredAfterMs: number | null;
  /** Milliseconds from the start until the server closed the connection (null: still open). */
  closedAfterMs: number | null;
  /** Body bytes written in all. */
  sent: number;
}

/**
 * Sends `head`, then body pieces from `next` (null: pause `pauseMs`; done when it returns
 * undefined), `gapMs` apart, until
 * the server closes the connection or `maxMs` passes, reading whatever the server answers.
 */
async function exchange(
  port: number,
  head: string,
  next: (sent: number) => Uint8Array | null | undefined,
  options: { maxMs: number; pauseMs?: number; gapMs?: number; stopOnAnswer?: boolean },
): Promise<Exchange> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const t0 = Date.now();
  const result: Exchange = {
    response: "",
    sentAtResponse: null,
    answeredAfterMs: null,
    closedAfterMs: null,
    sent: 0,
  };
  const decoder = new TextDecoder();
  const reading = (async () => {
    const buffer = new Uint8Array(4096);
    while (true) {
      let n: number | null;
      try {
        n = await conn.read(buffer);
      } catch {
        n = null; // reset by the server
      }
      if (n === null) {
        result.closedAfterMs = Date.now() - t0;
        return;
      }
      result.sentAtResponse ??= result.sent;
      result.answeredAfterMs ??= Date.now() - t0;
      result.response += decoder.decode(buffer.subarray(0, n));
    }
  })();
  try {
    await conn.write(utf8.encode(head));
    while (result.closedAfterMs === null && Date.now() - t0 < options.maxMs) {
      if (options.stopOnAnswer && result.answeredAfterMs !== null) break;
      const piece = next(result.sent);
      if (piece === undefined) break;
      if (piece === null) {
        await sleep(options.pauseMs ?? 50);
        continue;
      }
      try {
        await conn.write(piece);
      } catch {
        break; // the server closed the connection while we were sending
      }
      result.sent += piece.byteLength;
      await sleep(options.gapMs ?? 0);
    }
    const left = Math.max(0, options.maxMs - (Date.now() - t0));
    await Promise.race([reading, sleep(options.stopOnAnswer ? Math.min(left, 200) : left)]);
  } finally {
    try {
      conn.close();
    } catch { /* already closed */ }
    await reading;
  }
  return result;
}

const statusOf = (response: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);

function head(options: { length?: number; chunked?: boolean; headers?: Record<string, string> }) {
  const lines = [
    "POST /webhook HTTP/1.1",
    "Host: 127.0.0.1",
    "Content-Type: application/json",
    options.chunked ? "Transfer-Encoding: chunked" : `Content-Length: ${options.length}`,
    ...Object.entries(options.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
  ];
  return `${lines.join("\r\n")}\r\n\r\n`;
}

Deno.test("50 slow-body clients are cut at the deadline and the server's memory stays flat", async () => {
  const timeoutMs = 1_500;
  await using server = await startServer("slow-body", {
    REQUEST_TIMEOUT_MS: String(timeoutMs),
    BODY_READS_PER_ADDRESS: "64",
  });
  const warm = await fetch(`http://127.0.0.1:${server.port}/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: await fixture("minimal.json"),
  });
  assert.equal(warm.status, 202);
  await warm.body?.cancel();
  const baseline = rssOf(server.pid);
  let peak = baseline;
  const sampler = setInterval(() => peak = Math.max(peak, rssOf(server.pid)), 50);
  try {
    // Each declares 1,048,000 bytes, sends 64 KB at once and then 16 bytes every 200 ms.
    const burst = new Uint8Array(64 * 1024).fill(0x20);
    const drip = new Uint8Array(16).fill(0x20);
    let lastDrip = 0;
    const clients = Array.from(
      { length: 50 },
      () =>
        exchange(server.port, head({ length: 1_048_000 }), (sent) => {
          if (sent === 0) return burst;
          if (Date.now() - lastDrip < 200) return null;
          lastDrip = Date.now();
          return drip;
        }, { maxMs: timeoutMs + 3_000, stopOnAnswer: true }),
    );
    const results = await Promise.all(clients);
    for (const result of results) {
      // The read is cut at the deadline: its slot and buffered bytes are released and the 408
      // goes out. (Whether Deno then drops the socket at once depends on the client: see guard.ts.)
      const at = result.answeredAfterMs;
      assert.ok(
        at !== null && at >= timeoutMs - 100 && at < timeoutMs + 1_500,
        `answered at ${at}`,
      );
      assert.equal(statusOf(result.response), 408, result.response);
      assert.match(result.response, /connection: close\r\n/i);
    }
  } finally {
    clearInterval(sampler);
  }
  const grown = (peak - baseline) / 1e6;
  assert.ok(grown < 40, `RSS grew by ${grown.toFixed(1)} MB`);
  // The server is fine afterwards.
  const after = await fetch(`http://127.0.0.1:${server.port}/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: await fixture("minimal.json"),
  });
  assert.equal(after.status, 202);
  await after.body?.cancel();
});

Deno.test("past the body-read cap per address, 503 with Retry-After at once, without reading", async () => {
  await using server = await startServer("read-cap", {
    REQUEST_TIMEOUT_MS: "2000",
    BODY_READS_PER_ADDRESS: "2",
  });
  const stalled = () =>
    exchange(
      server.port,
      head({ length: 10_000 }),
      (sent) => sent === 0 ? utf8.encode("{") : null,
      { maxMs: 4_000, stopOnAnswer: true },
    );
  const holding = [stalled(), stalled()];
  await sleep(200);
  const started = Date.now();
  const total = 1_000_000;
  const piece = new Uint8Array(2 * 1024).fill(0x20);
  const refused = await exchange(
    server.port,
    head({ length: total }),
    (sent) => sent >= total ? undefined : piece,
    { maxMs: 2_000, gapMs: 2 },
  );
  assert.equal(statusOf(refused.response), 503, refused.response);
  assert.match(refused.response, /retry-after: 1\r\n/i);
  assert.ok(Date.now() - started < 1_500, "answered quickly");
  assert.notEqual(refused.closedAfterMs, null, "connection closed");
  assert.ok(
    refused.sentAtResponse !== null && refused.sentAtResponse < total,
    `answered after ${refused.sentAtResponse} of ${total} bytes`,
  );
  for (const held of await Promise.all(holding)) assert.equal(statusOf(held.response), 408);
  const after = await fetch(`http://127.0.0.1:${server.port}/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: await fixture("minimal.json"),
  });
  assert.equal(after.status, 202, "slots are free again");
  await after.body?.cancel();
});

Deno.test("an unsigned 1 MB upload is refused before its body is read", async () => {
  await using server = await startServer("unsigned", { WEBHOOK_SECRET: SECRET });
  const total = 1_000_000;
  const piece = new Uint8Array(8 * 1024).fill(0x20);
  const send = (sent: number) => sent >= total ? undefined : piece;
  const cases: [string, Record<string, string>][] = [
    ["no credentials", {}],
    ["stale signature headers", {
      "webhook-id": "msg_stale",
      "webhook-timestamp": String(Math.floor(Date.now() / 1000) - 3_600),
      "webhook-signature": "v1,c2lnbmF0dXJl",
    }],
    ["malformed timestamp", {
      "webhook-id": "msg_bad",
      "webhook-timestamp": "yesterday",
      "webhook-signature": "v1,c2lnbmF0dXJl",
    }],
  ];
  for (const [what, headers] of cases) {
    const result = await exchange(server.port, head({ length: total, headers }), send, {
      maxMs: 5_000,
      pauseMs: 5,
    });
    assert.equal(statusOf(result.response), 401, `${what}: ${result.response}`);
    assert.ok(
      result.sentAtResponse !== null && result.sentAtResponse < total / 2,
      `${what}: answered after ${result.sentAtResponse} of ${total} bytes`,
    );
    assert.notEqual(result.closedAfterMs, null, `${what}: connection closed`);
    assert.ok(result.sent < total, `${what}: ${result.sent} bytes sent`);
  }
});

Deno.test("a chunked body over MAX_BODY_BYTES gets its 413 and the connection closed", async () => {
  await using server = await startServer("chunked", { MAX_BODY_BYTES: "65536" });
  const chunk = new Uint8Array(16 * 1024).fill(0x20);
  const framed = new Uint8Array([
    ...utf8.encode(`${chunk.byteLength.toString(16)}\r\n`),
    ...chunk,
    ...utf8.encode("\r\n"),
  ]);
  const chunked = await exchange(server.port, head({ chunked: true }), () => framed, {
    maxMs: 3_000,
  });
  assert.equal(statusOf(chunked.response), 413, chunked.response);
  assert.notEqual(chunked.closedAfterMs, null, "connection closed, not drained");
  assert.ok(chunked.sent < 8 * 1024 * 1024, `${chunked.sent} bytes taken`);

  const declared = await exchange(
    server.port,
    head({ length: 50_000_000 }),
    () => chunk,
    { maxMs: 3_000 },
  );
  assert.equal(statusOf(declared.response), 413, declared.response);
  assert.notEqual(declared.closedAfterMs, null, "connection closed, not drained");
  assert.ok(declared.sent < 8 * 1024 * 1024, `${declared.sent} bytes taken`);
});

Deno.test("an aborted upload is logged at debug, not error, and counted", async () => {
  const prefix = uniquePrefix("aborted");
  const lines: { level: string; msg: string }[] = [];
  const log = createLogger("debug", {}, (line) => lines.push(JSON.parse(line)));
  const services = createServices(loadConfig({ KEY_PREFIX: prefix }), log);
  await waitReady(services.redis);
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {}, onError: services.uploads.onError },
    services.uploads.wrap(services.app.fetch),
  );
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    await conn.write(utf8.encode(head({ length: 10_000 })));
    await conn.write(utf8.encode('{"prompt": "half a body'));
    await sleep(100);
    conn.close();
    await waitFor(() => services.uploads.counters.aborted.value === 1, {
      what: "the aborted upload counted",
    });
    assert.ok(lines.some((l) => l.level === "debug" && /aborted/i.test(l.msg)));
    assert.deepEqual(lines.filter((l) => l.level === "error"), []);
  } finally {
    await deleteMatching(services.redis, services.keys.pattern);
    await services.close();
  }
});
