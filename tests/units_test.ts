import assert from "node:assert/strict";
import * as configModule from "../src/config.ts";
import { ConfigError, loadConfig, providerMode } from "../src/config.ts";
import { createLogger, maskEmails } from "../src/log.ts";
import { offlineRevision, offlineScenes } from "../src/providers/offline.ts";
import { backoffMs } from "../src/retry.ts";
import { fixture } from "./_helpers.ts";

Deno.test("offline scenes keep the prompt's scene-by-scene order and voiceovers", async () => {
  const { prompt } = JSON.parse(await fixture("new-video.json"));
  const scenes = offlineScenes(prompt, 5);
  assert.equal(scenes.length, 5);
  assert.deepEqual(scenes.map((s) => s.scene_number), [1, 2, 3, 4, 5]);
  assert.equal(scenes[0].voiceover, "Every run starts before the city wakes.");
  assert.equal(scenes[4].voiceover, "AeroRun Pulse. Available now.");
  assert.match(scenes[1].visual_description, /^A runner laces up on a doorstep/);
  assert.equal(scenes.reduce((sum, s) => sum + s.duration_seconds, 0), 30);
  assert.deepEqual(offlineScenes(prompt, 5), scenes, "deterministic");
});

Deno.test("offline scenes split a plain prompt into SCENE_COUNT parts or the count it asks for", async () => {
  const minimal = JSON.parse(await fixture("minimal.json")).prompt;
  assert.equal(offlineScenes(minimal, 5).length, 5);
  assert.equal(offlineScenes(minimal, 2).length, 2);
  const n8n = JSON.parse(await fixture("n8n-envelope.json")).body.prompt;
  assert.equal(offlineScenes(n8n, 5).length, 3, "the prompt asks for three scenes");
  for (const scene of offlineScenes(minimal, 5)) {
    assert.ok(scene.visual_description && scene.voiceover && scene.shot_type);
    assert.ok(scene.duration_seconds > 0);
  }
});

Deno.test("an offline revision changes only the scenes the prompt names", async () => {
  const scenes = offlineScenes(JSON.parse(await fixture("new-video.json")).prompt, 5);
  const { prompt } = JSON.parse(await fixture("revision.json"));
  const revision = offlineRevision(scenes, prompt);
  assert.deepEqual(revision.changed, [3, 5]);
  assert.deepEqual(revision.scenes[0], scenes[0]);
  assert.notDeepEqual(revision.scenes[2], scenes[2]);
});

Deno.test("signing secrets are checked at start, and never echoed", () => {
  const bad: [string, string][] = [
    ["WEBHOOK_SECRET", "whsec_not*base64!"],
    ["WEBHOOK_SECRET", ","],
    ["WEBHOOK_SECRET", "short-secret"],
    ["WEBHOOK_SECRET", `whsec_${btoa("sixteen-bytes-ok")} whsec_${btoa("too-short")}`],
    ["CALLBACK_SECRET", `whsec_${btoa("too-short")}`],
  ];
  for (const [name, value] of bad) {
    assert.throws(() => loadConfig({ [name]: value }), (error: Error) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, new RegExp(name));
      for (const part of value.split(/[\s,]+/).filter(Boolean)) {
        assert.ok(!error.message.includes(part), "the secret stays out of the message");
      }
      return true;
    }, `${name}=${value}`);
  }
  const two = `whsec_${btoa("sixteen-bytes-ok")}, a-plain-secret-of-16+`;
  assert.equal(loadConfig({ WEBHOOK_SECRET: two }).WEBHOOK_SECRET.length, 2);
  assert.deepEqual(loadConfig({}).WEBHOOK_SECRET, []);
});

Deno.test("CONSUMERS lists what a worker process runs", () => {
  assert.deepEqual(loadConfig({}).CONSUMERS, ["tasks", "scenes", "callbacks", "projections"]);
  assert.deepEqual(loadConfig({ CONSUMERS: " projections " }).CONSUMERS, ["projections"]);
  assert.deepEqual(loadConfig({ CONSUMERS: "tasks,scenes" }).CONSUMERS, ["tasks", "scenes"]);
  for (const bad of [",", "tasks,bogus"]) {
    assert.throws(() => loadConfig({ CONSUMERS: bad }), /CONSUMERS/, JSON.stringify(bad));
  }
});

Deno.test("a bad setting stops start-up with a message naming the variable", () => {
  assert.throws(() => loadConfig({ WORKER_CONCURRENCY: "lots" }), (error: Error) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /WORKER_CONCURRENCY/);
    return true;
  });
  assert.throws(
    () => loadConfig({ REDIS_URL: "http://x", PROVIDER_MODE: "cloud" }),
    (e: Error) => /REDIS_URL/.test(e.message) && /PROVIDER_MODE/.test(e.message),
  );
  const config = loadConfig({});
  assert.equal(config.PORT, 8000);
  assert.equal(config.KEY_PREFIX, "vp");
  assert.equal(config.CLAIM_IDLE_MS, 60_000);
  assert.equal(providerMode(config), "offline");
  assert.equal(providerMode(loadConfig({ FAL_KEY: "k", OPENAI_API_KEY: "k" })), "live");
  assert.equal(
    providerMode(loadConfig({ FAL_KEY: "k", OPENAI_API_KEY: "k", PROVIDER_MODE: "offline" })),
    "offline",
  );
});

Deno.test("every range limit is checked at start, naming the variable", () => {
  // [variable, lowest accepted, highest accepted]; one past either end is refused.
  const ranges: [string, number, number | null][] = [
    ["PORT", 0, 65_535],
    ["METRICS_PORT", 0, 65_535],
    ["HTTP_PROCESSES", 1, 64],
    ["SCENE_COUNT", 1, 20],
    ["MAX_BODY_BYTES", 64, null],
    ["VIEW_RETENTION_S", 60, null],
    ["STREAM_RETENTION_S", 60, null],
    ["CLAIM_IDLE_MS", 50, null],
    ["WORKER_CONCURRENCY", 1, null],
    ["MAX_ATTEMPTS", 1, null],
    ["MAX_JSON_DEPTH", 2, null],
    ["REQUEST_TIMEOUT_MS", 100, null],
    ["FAL_POLL_INTERVAL_MS", 10, null],
  ];
  for (const [name, low, high] of ranges) {
    assert.equal(loadConfig({ [name]: String(low) })[name as "PORT"], low, name);
    const refused = [low - 1, ...(high === null ? [] : [high + 1])];
    if (high !== null) assert.equal(loadConfig({ [name]: String(high) })[name as "PORT"], high);
    for (const value of refused) {
      assert.throws(() => loadConfig({ [name]: String(value) }), (error: Error) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, new RegExp(`^Invalid configuration:\\n  ${name}: `));
        return true;
      }, `${name}=${value}`);
    }
  }
});

Deno.test("RETRY_BASE_MS above RETRY_MAX_MS is refused", () => {
  assert.throws(
    () => loadConfig({ RETRY_BASE_MS: "5000", RETRY_MAX_MS: "1000" }),
    /RETRY_BASE_MS: must not be above RETRY_MAX_MS \(1000\)/,
  );
  const equal = loadConfig({ RETRY_BASE_MS: "1000", RETRY_MAX_MS: "1000" });
  assert.equal(equal.RETRY_BASE_MS, equal.RETRY_MAX_MS);
});

Deno.test("PORT=70000 stops start-up with a message naming PORT, no stack trace", async () => {
  const main = new URL("../main.ts", import.meta.url).pathname;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "serve"],
    env: { PORT: "70000", REDIS_URL: "redis://127.0.0.1:1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assert.equal(code, 1, text);
  assert.match(text, /Invalid configuration:\n {2}PORT: /);
  assert.doesNotMatch(text, /RangeError|\n\s+at /);
});

Deno.test("logs mask e-mails and redact secret fields", () => {
  const lines: string[] = [];
  const log = createLogger("info", {}, (line) => lines.push(line));
  log.info("Accepted maya@example.com", { user_email: "maya@example.com", api_key: "sk-123" });
  log.debug("hidden");
  assert.equal(lines.length, 1);
  const record = JSON.parse(lines[0]);
  assert.equal(record.msg, "Accepted m***@example.com");
  assert.equal(record.user_email, "m***@example.com");
  assert.equal(record.api_key, "[redacted]");
  assert.equal(maskEmails("no address here"), "no address here");
});

Deno.test("backoff grows exponentially with jitter and is capped", () => {
  assert.equal(backoffMs(1, 1000, 60_000, () => 0), 500);
  assert.equal(backoffMs(1, 1000, 60_000, () => 1), 1000);
  assert.equal(backoffMs(3, 1000, 60_000, () => 0), 2000);
  assert.equal(backoffMs(3, 1000, 60_000, () => 1), 4000);
  assert.equal(backoffMs(20, 1000, 60_000, () => 1), 60_000);
});

Deno.test(".env.example is a valid configuration that names every setting", () => {
  const text = Deno.readTextFileSync(new URL("../.env.example", import.meta.url));
  const env: Record<string, string> = {};
  const named = new Set<string>();
  for (const line of text.split("\n")) {
    const match = line.match(/^#?\s*([A-Z][A-Z0-9_]+)=(\S*)/);
    if (!match) continue;
    named.add(match[1]);
    if (!line.startsWith("#")) env[match[1]] = match[2];
  }
  const config = loadConfig(env);
  assert.equal(config.PORT, 8000);
  const { ConfigSchema } = configModule;
  for (const key of Object.keys(ConfigSchema.shape)) assert.ok(named.has(key), key);
});
