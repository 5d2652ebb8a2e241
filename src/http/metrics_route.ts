import type { OpenAPIHono } from "@hono/zod-openapi";
import type { MiddlewareHandler } from "hono";
import { matchedRoutes } from "hono/route";
import type { Metrics } from "../metrics/registry.ts";
import { CONTENT_TYPE, scrape, type ScrapeSources } from "../metrics/scrape.ts";
import { tokenMatcher } from "../security/signature.ts";
import { bearerToken } from "./auth.ts";

export interface MetricsEndpoint {
  metrics: Metrics;
  sources: ScrapeSources;
  /** METRICS_TOKEN: when set, `Authorization: Bearer <token>` is required. */
  token?: string;
}

/**
 * Answers a scrape: the text exposition format, or 401 without the bearer token when one is set,
 * 405 for methods other than GET and HEAD. Plain Request → Response, so the HTTP app and the
 * worker's METRICS_PORT server (src/worker_http.ts) serve the same.
 */
export function metricsHandler(
  endpoint: MetricsEndpoint,
): (request: Request) => Promise<Response> {
  const matches = endpoint.token ? tokenMatcher(endpoint.token) : null;
  return async function serveMetrics(request) {
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    if (matches) {
      const bearer = bearerToken(request.headers);
      if (bearer === undefined || !matches(bearer)) {
        return new Response("A valid metrics token is required\n", {
          status: 401,
          headers: { "www-authenticate": 'Bearer realm="metrics"' },
        });
      }
    }
    const body = await scrape(endpoint.metrics, endpoint.sources);
    return new Response(request.method === "HEAD" ? null : body, {
      headers: { "content-type": CONTENT_TYPE, "cache-control": "no-store" },
    });
  };
}

/**
 * Mounts `/metrics` on the HTTP app. An operator endpoint in Prometheus's text format, not part
 * of the API: it is mounted for every method (answering 405 to all but GET and HEAD) and left out
 * of the OpenAPI document, like `/docs`.
 */
export function metricsRoute(app: OpenAPIHono, endpoint: MetricsEndpoint): void {
  const handler = metricsHandler(endpoint);
  app.all("/metrics", (c) => handler(c.req.raw));
}

/**
 * Times every request into http_request_duration_seconds, labelled with the route pattern that
 * answered (`/task/:task_id`, never the raw path: task ids are not labels), the method and the
 * status class; requests no route matched are "unmatched".
 */
export function httpMetrics(metrics: Metrics): MiddlewareHandler {
  return async function timeRequest(c, next) {
    const t0 = performance.now();
    try {
      await next();
    } finally {
      const handler = matchedRoutes(c).findLast((r) => r.method !== "ALL" || r.path === "/metrics");
      metrics.httpDuration.observe({
        route: handler?.path ?? "unmatched",
        method: METHODS.has(c.req.method) ? c.req.method : "other",
        status_class: `${Math.floor(c.res.status / 100)}xx`,
      }, (performance.now() - t0) / 1000);
    }
  };
}

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
