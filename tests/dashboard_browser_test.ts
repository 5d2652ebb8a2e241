/**
 * The dashboard in a real browser (headless Debian Chromium driven by playwright-core), against
 * the real HTTP server, worker and Redis of one test environment (offline providers, a scene step
 * that fails on demand). One browser is shared by the steps; each step saves a screenshot under
 * tests/.screenshots/ (git-ignored).
 */
import assert from "node:assert/strict";
import type { Browser, Page } from "playwright-core";
import { UnrecoverableError } from "../src/errors.ts";
import { createPipeline } from "../src/runtime.ts";
import { sleep } from "../src/sleep.ts";
import { fixture, freePort, runConsumers, testEnv, waitFor } from "./_helpers.ts";
import { startCallbackReceiver } from "./fakes/callback_receiver.ts";
import {
  chromiumInstalled,
  launchBrowser,
  type PageProblems,
  screenshot,
  watchPage,
} from "./support/browser.ts";

const ADMIN = "admin-token-for-the-browser-test";
const READ = "read-token-for-the-browser-test";
const CALLBACK_SECRET = `whsec_${btoa("callback-secret-for-the-dashboard")}`;

// Browser-side globals, for the functions the tests run in the page (module-scoped).
// deno-lint-ignore no-explicit-any
declare const document: any;
// deno-lint-ignore no-explicit-any
declare function getComputedStyle(element: any): { backgroundColor: string };

/** A small product image, served on loopback so the result's before/after images load. */
const IMAGE =
  `<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200" viewBox="0 0 320 200">
<rect width="320" height="200" fill="#e8eef8"/><circle cx="160" cy="100" r="60" fill="#1d5fd1"/>
<text x="160" y="190" font-size="14" text-anchor="middle" fill="#333">product</text></svg>`;

Deno.test({
  name: "dashboard in a browser: sign-in, live pages, search, pages, redrive, CSRF, sign-out",
  ignore: !chromiumInstalled(),
  async fn(t) {
    await using env = await testEnv("dash-browser", {
      ADMIN_TOKEN: ADMIN,
      READ_TOKEN: READ,
      ALLOW_PRIVATE_CALLBACKS: "true",
      CALLBACK_SECRET,
    });
    // Scenes fail (unrecoverably: dead-lettered at once) for videos "broken-…" while broken.on;
    // every step of a video "slow-…" takes 600 ms more, so a page can watch it run.
    const broken = { on: true };
    const pipeline = createPipeline(env.config, env.services).map((step) => ({
      name: step.name,
      run: async (context: Parameters<typeof step.run>[0]) => {
        const video = context.request.video_id;
        if (video.startsWith("slow-")) await sleep(600);
        if (step.name === "scenes" && broken.on && video.startsWith("broken-")) {
          throw new UnrecoverableError("Scene writer rejected the prompt");
        }
        return await step.run(context);
      },
    }));
    const receiver = startCallbackReceiver(CALLBACK_SECRET);
    const consumers = await runConsumers(env, { pipeline });
    const images = Deno.serve(
      { hostname: "127.0.0.1", port: freePort(), onListen() {} },
      () => new Response(IMAGE, { headers: { "content-type": "image/svg+xml" } }),
    );
    const port = freePort();
    const server = Deno.serve(
      { hostname: "127.0.0.1", port, onListen() {} },
      env.services.uploads.wrap(env.services.app.fetch),
    );
    const base = `http://127.0.0.1:${port}`;
    const imageUrl = `http://127.0.0.1:${images.addr.port}/product.svg`;
    const template = JSON.parse(await fixture("new-video.json"));
    const post = async (patch: Record<string, unknown> = {}) => {
      const res = await env.post({
        ...template,
        image_url: imageUrl,
        callback_url: receiver.url,
        idempotency_key: crypto.randomUUID(),
        ...patch,
      });
      assert.equal(res.status, 202);
      return (await res.json()).task_id as string;
    };

    let browser: Browser | null = null;
    let firstTask: string | null = null;
    try {
      browser = await launchBrowser();
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const page = await context.newPage();
      const watch = watchPage(page);

      await t.step(
        "sign-in refuses a wrong token, then signs in with the admin token",
        async () => {
          await page.goto(`${base}/dashboard`);
          assert.equal(new URL(page.url()).pathname, "/dashboard/sign-in");
          watch.expect("/dashboard/sign-in", 401);
          await page.fill("#token", "not-the-token-at-all");
          await page.click("button[type=submit]");
          await page.waitForSelector("[role=alert]");
          assert.match(await page.textContent("[role=alert]") ?? "", /not valid/);
          assert.doesNotMatch(page.url(), /token/);
          await screenshot(page, "sign-in-refused");
          // By keyboard: the token field has the focus, Enter sends the form.
          await page.fill("#token", "");
          await page.keyboard.type(ADMIN);
          await page.keyboard.press("Enter");
          await page.waitForURL(`${base}/dashboard`);
          // The first Tab reaches the skip link, the next one the navigation.
          const focused = () => page.evaluate(() => document.activeElement.textContent);
          await page.keyboard.press("Tab");
          assert.equal(await focused(), "Skip to content");
          await page.keyboard.press("Tab");
          assert.equal(await focused(), "Overview");
          const cookie = (await context.cookies()).find((c) => c.name === "vp_dashboard");
          assert.ok(cookie?.httpOnly, "the session cookie is HttpOnly");
          assert.equal(cookie?.sameSite, "Strict");
          assert.doesNotMatch(page.url(), /token/);
          assertClean(watch);
        },
      );

      await t.step("every page loads with no console error and no failed request", async () => {
        const done = await post({ video_id: "vid-pages", prompt: "A calm ad. Three scenes." });
        firstTask = done;
        await waitFor(async () => (await view(base, done))?.status === "completed");
        const pages = [
          ["overview", "/dashboard"],
          ["tasks", "/dashboard/tasks"],
          ["task", `/dashboard/tasks/${done}`],
          ["dead-letters", "/dashboard/dead-letters"],
          ["replay", "/dashboard/replay"],
        ];
        for (const [name, path] of pages) {
          const response = await page.goto(base + path);
          assert.equal(response?.status(), 200, path);
          await page.waitForFunction(() =>
            // deno-lint-ignore no-explicit-any
            [...document.images].every((i: any) => i.complete && i.naturalWidth > 0)
          );
          await screenshot(page, `page-${name}`);
          assertClean(watch, path);
          // The page, its style sheet, script and icon, as sent (uncompressed, cache or not).
          const bytes: number = await page.evaluate(() =>
            // deno-lint-ignore no-explicit-any
            (performance.getEntries() as any[]).reduce(
              (sum, e) => sum + (e.encodedBodySize ?? 0),
              0,
            )
          );
          assert.ok(bytes < 300_000, `${path}: ${bytes} bytes`);
          if (Deno.env.get("DASHBOARD_TEST_REPORT")) console.log(`${path}: ${bytes} bytes`);
        }
        // Dark, as the system asks.
        await page.emulateMedia({ colorScheme: "dark" });
        await page.goto(`${base}/dashboard/tasks/${done}`);
        const background: string = await page.evaluate(() =>
          getComputedStyle(document.documentElement).backgroundColor
        );
        assert.equal(background, "rgb(16, 19, 24)");
        await screenshot(page, "dark-task");
        await page.emulateMedia({ colorScheme: "light" });
        // A narrow phone screen: nothing wider than the viewport but the tables' own scrollers.
        await page.setViewportSize({ width: 375, height: 740 });
        await page.goto(`${base}/dashboard/tasks/${done}`);
        const overflow: number = await page.evaluate(
          "document.documentElement.scrollWidth - document.documentElement.clientWidth",
        );
        assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px on a phone`);
        await screenshot(page, "phone-task");
        await page.setViewportSize({ width: 1280, height: 900 });
      });

      await t.step("a posted task shows on the overview and atop the list within 1 s", async () => {
        const overview = await context.newPage();
        const overviewWatch = watchPage(overview);
        await overview.goto(`${base}/dashboard`);
        await page.goto(`${base}/dashboard/tasks`);
        await Promise.all([liveConnected(page, "#tasks"), liveConnected(overview, "#overview")]);
        await markPage(page);
        await markPage(overview);
        const before = Number(await overview.textContent("[data-testid=task-counts] .value"));
        const t0 = performance.now();
        const taskId = await post({ video_id: "vid-live" });
        await page.waitForSelector(`#tasks tbody tr:first-child[data-task="${taskId}"]`, {
          timeout: 1_000,
        });
        await overview.waitForFunction(
          (n) => Number(document.querySelector("[data-testid=task-counts] .value").textContent) > n,
          before,
          { timeout: Math.max(1, 1_000 - (performance.now() - t0)) },
        );
        const took = performance.now() - t0;
        assert.ok(took < 1_000, `shown after ${Math.round(took)} ms`);
        if (Deno.env.get("DASHBOARD_TEST_REPORT")) {
          console.log(`shown after ${Math.round(took)} ms`);
        }
        assert.ok(await stillMarked(page), "the task list was not reloaded");
        assert.ok(await stillMarked(overview), "the overview was not reloaded");
        await screenshot(page, "tasks-live");
        await screenshot(overview, "overview-live");
        assertClean(overviewWatch, "overview");
        await overview.close();
      });

      await t.step("a task's page shows its steps arriving live until completed", async () => {
        const taskId = await post({ video_id: "slow-detail" });
        await page.goto(`${base}/dashboard/tasks/${taskId}`);
        await markPage(page);
        // Record every status the page shows, as it changes, without reloading.
        await page.evaluate(`{
          const seen = window.seen = [];
          const record = () => {
            const status = document.querySelector("[data-testid=task-status]")?.textContent ?? "";
            const steps = [...document.querySelectorAll("[data-testid=waterfall] tr[data-step]")]
              .map((r) => r.dataset.step).join(",");
            const entry = status + "|" + steps;
            if (seen.at(-1) !== entry) seen.push(entry);
          };
          record();
          new MutationObserver(record).observe(document.body, { childList: true, subtree: true });
        }`);
        await page.waitForSelector("[data-testid=task-status] .st-completed", { timeout: 10_000 });
        await page.waitForSelector("[data-testid=scenes] tbody tr");
        const seen: string[] = await page.evaluate("window.seen");
        assert.ok(await stillMarked(page), "the task page was not reloaded");
        assert.ok(seen.length >= 3, `states seen: ${seen.join(" → ")}`);
        assert.doesNotMatch(seen[0], /^completed/, `the page began before completion: ${seen}`);
        assert.match(seen.at(-1)!, /^completed\|queue,reframe,scenes,persist$/);
        const scenes = await page.locator("[data-testid=scenes] tbody tr").count();
        assert.equal(scenes, 5);
        assert.match(await page.textContent("main") ?? "", /m\*\*\*@/, "the e-mail is masked");
        await screenshot(page, "task-completed");
        assertClean(watch);
      });

      await t.step("search finds a task by its video id and by a prompt substring", async () => {
        const taskId = await post({
          video_id: "vid-search-7781",
          prompt: "Scene 1: A heron stands in the marmalade-coloured dusk. Scene 2: It flies.",
        });
        await waitFor(async () => (await view(base, taskId))?.status === "completed");
        for (const term of ["vid-search-7781", "Marmalade-Coloured dusk"]) {
          await page.goto(`${base}/dashboard/tasks`);
          await page.fill("#q", term);
          await page.click("form[role=search] button[type=submit]");
          await page.waitForURL(/q=/);
          const ids = await taskIds(page);
          assert.deepEqual(ids, [taskId], `search "${term}"`);
        }
        await screenshot(page, "search");
        assertClean(watch);
      });

      await t.step("paging older shows no task twice while new tasks arrive", async () => {
        const created: string[] = [];
        for (let i = 0; i < 7; i++) created.push(await post({ video_id: `vid-page-${i}` }));
        await waitFor(async () => (await view(base, created.at(-1)!)) !== null);
        await page.goto(`${base}/dashboard/tasks?limit=4`);
        const shown: string[] = [];
        for (let n = 0; n < 20; n++) {
          await page.waitForSelector("#tasks table, [data-testid=no-tasks]");
          shown.push(...await taskIds(page));
          if (n === 0) await screenshot(page, "tasks-first-page");
          // New tasks arrive between pages.
          await post({ video_id: `vid-page-new-${n}` });
          const older = page.locator("[data-testid=older]");
          if (await older.count() === 0) break;
          await older.click();
          await page.waitForURL(/cursor=/);
        }
        assert.equal(new Set(shown).size, shown.length, "no task is shown twice");
        for (const id of created) assert.ok(shown.includes(id), `${id} was listed`);
        await screenshot(page, "tasks-older-page");
        assertClean(watch);
      });

      await t.step(
        "a dead-lettered task is redriven from the dashboard and completes",
        async () => {
          const taskId = await post({ video_id: "broken-redrive" });
          await waitFor(async () => (await view(base, taskId))?.dead_letter_entry, {
            what: "the dead letter",
          });
          await page.goto(`${base}/dashboard/dead-letters`);
          const row = page.locator("tr", { hasText: taskId });
          await row.locator("input[type=checkbox]").check();
          await screenshot(page, "dead-letters");
          await page.click("button[value=redrive]");
          await page.waitForSelector("[data-testid=confirm]");
          assert.match(await page.textContent("[data-testid=outcomes]") ?? "", /start run 2/);
          await screenshot(page, "redrive-confirm");
          broken.on = false;
          await page.click("[data-testid=confirm] button[type=submit]");
          await page.waitForSelector("[data-testid=outcomes]");
          assert.match(await page.textContent("main") ?? "", /Redrove 1 dead letter/);
          await page.goto(`${base}/dashboard/tasks/${taskId}`);
          await page.waitForSelector("[data-testid=task-status] .st-completed", {
            timeout: 10_000,
          });
          const events = await env.services.store.timeline(taskId);
          const request = events.find((e) => e.type === "task.reprocess_requested");
          assert.equal(request?.data.requested_by, "dashboard");
          assert.equal(request?.data.source, "redrive");
          await screenshot(page, "redriven-completed");
          assertClean(watch);
        },
      );

      await t.step(
        "a dead letter is inspected, then deleted for good, and that is recorded",
        async () => {
          broken.on = true;
          const taskId = await post({ video_id: "broken-delete" });
          const letter = await waitFor(async () => (await view(base, taskId))?.dead_letter_entry, {
            what: "the dead letter",
          });
          await page.goto(`${base}/dashboard/dead-letters`);
          await page.click(`a[href="/dashboard/dead-letters/${letter}"]`);
          assert.match(await page.textContent("pre.json") ?? "", /m\*\*\*@example\.com/);
          await page.click("button[formaction$='/dead-letters/delete']");
          await page.waitForSelector("[data-testid=confirm]");
          await page.fill("#reason", "a test prompt, not worth redoing");
          await page.click("[data-testid=confirm] button[type=submit]");
          await page.waitForSelector("[data-testid=deletions]");
          assert.match(await page.textContent("main") ?? "", /Deleted 1 dead letter/);
          const events = await env.services.store.timeline(taskId);
          const deleted = events.find((e) => e.type === "task.dead_letter_deleted");
          assert.deepEqual(deleted?.data, {
            requested_by: "dashboard",
            reason: "a test prompt, not worth redoing",
            dead_letter_entry: letter,
          });
          await page.goto(`${base}/dashboard/dead-letters`);
          assert.equal(await page.locator(`tr[data-dead-letter="${letter}"]`).count(), 0);
          assertClean(watch);
        },
      );

      await t.step(
        "replay: a confirmed rebuild shows its progress; a reprocess dry run",
        async () => {
          await page.goto(`${base}/dashboard/replay`);
          await page.click("form[action$='/replay/rebuild'] button");
          await page.waitForSelector("[data-testid=confirm]");
          await page.click("[data-testid=confirm] button[type=submit]");
          await page.waitForURL(`${base}/dashboard/replay`);
          // The list of rebuilds refreshes itself until this one is done.
          await markPage(page);
          await page.waitForSelector("[data-testid=rebuild-jobs] li[data-state=done]", {
            timeout: 15_000,
          });
          assert.match(
            await page.textContent("[data-testid=rebuild-jobs]") ?? "",
            /generation 0 → 1/,
          );
          assert.ok(await stillMarked(page), "progress arrived without a reload");
          await screenshot(page, "replay-rebuilt");
          // Everything finished: a dry run of "reprocess the completed ones" lists them, changes nothing.
          const before = (await env.services.store.timeline(firstTask!)).length;
          await page.selectOption("#status", "completed");
          await page.click("form[action$='/replay/reprocess'] button[type=submit]");
          await page.waitForSelector("[data-testid=confirm]");
          assert.match(await page.textContent("[data-testid=outcomes]") ?? "", /start run 2/);
          assert.match(await page.textContent("main") ?? "", /Dry run: nothing has changed yet/);
          await screenshot(page, "reprocess-dry-run");
          assert.equal((await env.services.store.timeline(firstTask!)).length, before);
          await page.click("[data-testid=confirm] a.button");
          await page.waitForURL(`${base}/dashboard/replay`);
          assertClean(watch);
        },
      );

      await t.step("a mutation without the session's CSRF token is refused", async () => {
        const letterless = await page.request.post(`${base}/dashboard/replay/rebuild`, {
          form: { confirm: "yes" },
          maxRedirects: 0,
        });
        assert.equal(letterless.status(), 403);
        const wrong = await page.request.post(`${base}/dashboard/replay/rebuild`, {
          form: { confirm: "yes", _csrf: "forged" },
          maxRedirects: 0,
        });
        assert.equal(wrong.status(), 403);
        // A read-only session sees no mutation buttons, and its own token does not help it.
        const reader = await browser!.newContext();
        const readPage = await reader.newPage();
        await readPage.goto(`${base}/dashboard/sign-in`);
        await readPage.fill("#token", READ);
        await readPage.click("button[type=submit]");
        await readPage.waitForURL(`${base}/dashboard`);
        await readPage.goto(`${base}/dashboard/replay`);
        assert.equal(await readPage.$("form[action$='/replay/rebuild']"), null);
        const csrf = await readPage.inputValue("input[name=_csrf]");
        const refused = await readPage.request.post(`${base}/dashboard/replay/rebuild`, {
          form: { confirm: "yes", _csrf: csrf },
          maxRedirects: 0,
        });
        assert.equal(refused.status(), 403);
        await screenshot(readPage, "read-only-replay");
        await reader.close();
      });

      await t.step("sign-out ends the session on the server", async () => {
        const cookie = (await context.cookies()).find((c) => c.name === "vp_dashboard")!;
        await page.goto(`${base}/dashboard`);
        await screenshot(page, "overview-end");
        // A live refresh or stream still on its way when the session ends is answered 401 (the
        // client script then goes to the sign-in page): expected here, and only here.
        watch.expect("/dashboard", 401);
        watch.expect("/dashboard/live/events", 401);
        await page.click(".sign-out button");
        await page.waitForURL(`${base}/dashboard/sign-in`);
        await screenshot(page, "signed-out");
        // The old cookie, replayed by hand, no longer opens anything.
        const replayed = await fetch(`${base}/dashboard`, {
          headers: { cookie: `vp_dashboard=${cookie.value}` },
          redirect: "manual",
        });
        await replayed.body?.cancel();
        assert.equal(replayed.status, 303);
        assert.equal(replayed.headers.get("location"), "/dashboard/sign-in");
        assertClean(watch);
      });
      await context.close();
    } finally {
      await browser?.close();
      await server.shutdown();
      await images.shutdown();
      await consumers.stop(1_000);
      await receiver.close();
    }
  },
});

function assertClean(watch: PageProblems, where = "") {
  assert.deepEqual(watch.problems, [], `problems on the page ${where}`);
}

async function view(base: string, taskId: string) {
  const res = await fetch(`${base}/task/${taskId}`, { headers: { "x-read-token": READ } });
  if (res.status !== 200) {
    await res.body?.cancel();
    return null;
  }
  return await res.json() as { status: string; dead_letter_entry: string | null };
}

async function taskIds(page: Page): Promise<string[]> {
  return await page.evaluate(
    `[...document.querySelectorAll("#tasks tbody tr[data-task]")].map((r) => r.dataset.task)`,
  );
}

/** Waits until the region's event stream is open, so nothing posted afterwards is missed. */
async function liveConnected(page: Page, region: string) {
  await page.waitForSelector(`${region}[data-live-connected=true]`);
}

/** Marks the page's window; a reload would lose the mark. */
async function markPage(page: Page) {
  await page.evaluate("window.mark = true");
}

async function stillMarked(page: Page): Promise<boolean> {
  return await page.evaluate("window.mark === true");
}
