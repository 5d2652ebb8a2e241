import type { OpenAPIHono } from "@hono/zod-openapi";
import type { MiddlewareHandler } from "hono";
import type { ProjectionRoute, RouteContext } from "../projections/definition.ts";
import { fromRedis } from "./problems.ts";

/** `/task/{task_id}` (OpenAPI) as Hono writes it: `/task/:task_id`. */
export const honoPath = (path: string) => path.replace(/\{(\w+)\}/g, ":$1");

/**
 * Mounts each projection's GET route behind `guard` (the read token check, so a new projection's
 * route is never open by mistake): the handler reads through the projection's query; a Redis
 * failure is a 503, a ProblemError (404) is answered as it is.
 */
export function projectionRoutes(
  app: OpenAPIHono,
  routes: readonly ProjectionRoute[],
  context: RouteContext,
  guard: MiddlewareHandler,
): void {
  for (const route of routes) {
    app.get(honoPath(route.path), guard, async (c) => {
      const params = c.req.param() as Record<string, string>;
      return c.json(await fromRedis(() => route.handle(context, params)));
    });
  }
}
