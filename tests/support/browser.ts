/**
 * Headless Chromium for the dashboard's browser tests: Debian's `chromium` driven by
 * playwright-core, with the background networking that would otherwise hammer a closed network
 * turned off. Each page is watched for console errors, uncaught exceptions and failed requests.
 */
import { type Browser, chromium, type Page } from "playwright-core";

export const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";

/** Where the tests leave their screenshots (git-ignored), for a person to look at. */
export const SCREENSHOTS = new URL("../.screenshots/", import.meta.url);

export function chromiumInstalled(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

/**
 * Launches Chromium headless. Playwright gives it a fresh temporary profile (`--user-data-dir`)
 * and removes it on close.
 */
export async function launchBrowser(): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** What went wrong on a page: console errors, uncaught exceptions, failed requests. */
export interface PageProblems {
  problems: string[];
  /** Statuses ≥ 400 the test expects (a wrong sign-in's 401), by path. */
  expect(path: string, status: number): void;
  clear(): void;
}

/**
 * Records every console error, page error, failed request and unexpected HTTP error of `page`.
 * An event stream, a live region's refresh, the icon or a navigation cut by leaving the page
 * (net::ERR_ABORTED) is not a failure.
 */
export function watchPage(page: Page): PageProblems {
  const problems: string[] = [];
  const expected = new Set<string>();
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    // Chromium logs every HTTP error response to the console; statuses are checked below.
    if (/Failed to load resource: the server responded with a status of/.test(text)) return;
    problems.push(`console: ${text}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("requestfailed", (request) => {
    const failure = request.failure()?.errorText ?? "failed";
    const url = new URL(request.url());
    // Leaving a page cuts its event streams, any refresh still on its way, and the icon, which
    // Chromium asks for after the page has loaded; a navigation overtaken by another (a form's
    // redirect and the client script both going to the sign-in page) is cut the same way. The
    // page finally shown is checked by the test (and any HTTP error by the handler below).
    const cut = url.pathname.includes("/live/") || request.headers()["x-dashboard-fragment"] ||
      url.pathname.endsWith("/icon.svg") || request.isNavigationRequest();
    if (failure === "net::ERR_ABORTED" && cut) return;
    problems.push(`request failed: ${request.method()} ${url.pathname} ${failure}`);
  });
  page.on("response", (response) => {
    const url = new URL(response.url());
    const status = response.status();
    if (status >= 400 && !expected.has(`${url.pathname} ${status}`)) {
      problems.push(`HTTP ${status}: ${response.request().method()} ${url.pathname}`);
    }
  });
  return {
    problems,
    expect: (path, status) => expected.add(`${path} ${status}`),
    clear: () => problems.splice(0),
  };
}

/** Saves a full-page screenshot as `<name>.png` under SCREENSHOTS. */
export async function screenshot(page: Page, name: string): Promise<void> {
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: new URL(`${name}.png`, SCREENSHOTS).pathname, fullPage: true });
}
