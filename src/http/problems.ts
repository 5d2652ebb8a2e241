import type { Context } from "hono";
import { ProblemError, UnavailableError } from "../errors.ts";

const PROBLEM = "application/problem+json";

/** An error as an RFC 9457 problem+json response; a 503 says when to retry. */
export function problemResponse(c: Context, error: ProblemError): Response {
  const body = {
    type: "about:blank",
    title: error.title,
    status: error.status,
    detail: error.message,
    ...error.extra,
  };
  const headers: Record<string, string> = { "content-type": PROBLEM };
  if (error.status === 503) headers["retry-after"] = "1";
  return c.body(JSON.stringify(body), error.status, headers);
}

/** Runs a Redis call; any Redis failure becomes a 503 instead of a 500 or a hang. */
export async function fromRedis<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof ProblemError) throw error;
    throw new UnavailableError(error);
  }
}
