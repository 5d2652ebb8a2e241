/**
 * The dashboard's static files (its style sheet, its one client script and its icon), hand-written
 * in `assets/` and served by the app itself: nothing from a CDN, works with no internet. Each URL
 * carries a hash of its content, so browsers may keep a file for a year and still never use a
 * stale one after an upgrade.
 */
import { createHash } from "node:crypto";

const TYPES: Record<string, string> = {
  "dashboard.css": "text/css; charset=utf-8",
  "dashboard.js": "text/javascript; charset=utf-8",
  "icon.svg": "image/svg+xml",
};

interface Asset {
  body: Uint8Array<ArrayBuffer>;
  type: string;
  hash: string;
}

const loaded = new Map<string, Asset>();

/** A dashboard asset by file name, read once; null for any other name. */
export function asset(name: string): Asset | null {
  if (!Object.hasOwn(TYPES, name)) return null;
  let found = loaded.get(name);
  if (!found) {
    const body = Deno.readFileSync(new URL(`./assets/${name}`, import.meta.url));
    const hash = createHash("sha256").update(body).digest("hex").slice(0, 12);
    found = { body: body as Uint8Array<ArrayBuffer>, type: TYPES[name], hash };
    loaded.set(name, found);
  }
  return found;
}

/** The URL of an asset, with its content hash. */
export function assetPath(name: string): string {
  return `/dashboard/assets/${name}?v=${asset(name)!.hash}`;
}
