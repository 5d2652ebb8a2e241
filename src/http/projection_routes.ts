import type { OpenAPIHono } from "@hono/zod-openapi";
import type { MiddlewareHandler } from "hono";
import type { z } from "zod";
import type { ProjectionRoute, RouteContext } from "../projections/definition.ts";
import { ProblemError } from "../errors.ts";
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
      const query = route.query ? parseQuery(route.query, c.req.query()) : undefined;
      return c.json(await fromRedis(() => route.handle(context, params, query)));
    });
  }
}

/** A route's query string through its schema: 400 naming every bad parameter. */
function parseQuery(schema: z.ZodType, raw: Record<string, string>): unknown {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const errors = parsed.error.issues.map((issue) => ({
    field: issue.path.join(".") || "(query)",
    message: issue.message,
  }));
  throw new ProblemError(
    400,
    "Invalid query",
    errors.map((e) => `${e.field}: ${e.message}`).join("; "),
    { errors },
  );
}
