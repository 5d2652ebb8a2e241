import { Hono } from "hono";
// Only the path helper: the package's main module would load the whole 1.5 MB bundle into the
// heap at start (about 20 MB of RSS) just to serve two static files.
import getAbsoluteFSPath from "swagger-ui-dist/absolute-path.js";

const ASSETS: Record<string, string> = {
  "swagger-ui.css": "text/css; charset=utf-8",
  "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
};

const PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Video pipeline API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/init.js"></script>
</body>
</html>`;

const INIT = `window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#ui" });`;

/** GET /docs: Swagger UI served from the bundled swagger-ui-dist package, no CDN needed. */
export function docsRoutes(): Hono {
  const root = getAbsoluteFSPath();
  const cache = new Map<string, Uint8Array>();
  const app = new Hono();
  app.get("/docs", (c) => c.html(PAGE));
  app.get(
    "/docs/assets/init.js",
    (c) => c.body(INIT, 200, { "content-type": ASSETS["swagger-ui-bundle.js"] }),
  );
  app.get("/docs/assets/:name", async (c) => {
    const name = c.req.param("name");
    if (!Object.hasOwn(ASSETS, name)) return c.notFound();
    const type = ASSETS[name];
    let bytes = cache.get(name);
    if (!bytes) {
      bytes = await Deno.readFile(`${root}/${name}`);
      cache.set(name, bytes);
    }
    return c.body(bytes as Uint8Array<ArrayBuffer>, 200, {
      "content-type": type,
      "cache-control": "public, max-age=86400",
    });
  });
  return app;
}
