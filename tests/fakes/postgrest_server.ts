/**
 * A local server speaking the part of Supabase's REST API (PostgREST behind the API gateway) that
 * the real `@supabase/supabase-js` uses for tables, over a real PostgreSQL: row-level security,
 * constraints, triggers and types are the database's own.
 *
 * Routes: `GET|HEAD /rest/v1/<table>` and `POST /rest/v1/<table>`.
 * - GET: `select` (`*`, columns, `alias:column`), filters `col=[not.]op.value` with op one of
 *   eq, neq, gt, gte, lt, lte, like, ilike (`*` as wildcard), in (`in.(a,b,"c,d")`), is
 *   (null, not_null, true, false, unknown); `order=a.desc.nullslast,b`; `limit`, `offset`;
 *   `Prefer: count=exact`; `Accept: application/vnd.pgrst.object+json` (`.single()`).
 * - POST: an object or an array, columns from `columns` or the objects' keys; `Prefer:
 *   resolution=merge-duplicates` (upsert: ON CONFLICT (on_conflict, else the primary key) DO UPDATE
 *   SET every inserted column = excluded) or `resolution=ignore-duplicates` (DO NOTHING);
 *   `Prefer: return=minimal` (default, 201 without a body) or `return=representation` with `select`.
 * - Schema: `Accept-Profile` (GET/HEAD) or `Content-Profile` (POST), default the first of
 *   `schemas`; any other is PGRST106 (406).
 *
 * Not supported (400 PGRST100 or 405 PGRST117): PATCH, DELETE, RPC, embedding, `or`/`and`, casts.
 *
 * Auth, as Supabase's gateway and PostgREST do it: `apikey` (header or query) must be the service
 * role or anon key, else 401 `{ message: "Invalid API key" }`. `Authorization: Bearer` with the
 * service role key runs as `service_role` (BYPASSRLS), with the anon key as `anon`, with a token
 * from `userToken(sub)` as `authenticated`; without Authorization the apikey's role applies. Each
 * request is one transaction that sets `role` and the `request.jwt.claims` /
 * `request.jwt.claim.sub` settings locally (like `SET LOCAL ROLE`), so `auth.uid()` and the RLS
 * policies apply for real. User tokens are HS256 JWTs signed with a random per-server secret
 * (not Supabase's: only this fake accepts them); a bad signature is 401 PGRST301, an expired one
 * 401 PGRST303. Supabase user ids are UUIDs and `auth.uid()` casts to uuid, so `sub` must be one.
 *
 * Safety: values only ever travel as query parameters; identifiers are checked against the
 * table's real columns (pg_catalog) and then quoted.
 */
import { Buffer } from "node:buffer";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type pg from "pg";

export interface PostgrestFakeOptions {
  /** Connected as a superuser (it switches role per request, as PostgREST's authenticator). */
  pool: pg.Pool;
  /** The exposed schemas (PostgREST's db-schemas); the first is the default. */
  schemas: string[];
  serviceRoleKey: string;
  anonKey: string;
}

/**
 * A failure the fake injects before anything else, for `times` requests (default: until
 * `fault(null)`):
 * - `outage`: the connection is destroyed without an answer (the client sees a network error);
 * - `503`: 503 PGRST002, as PostgREST answers while its database is unreachable;
 * - `500`: 500 with a PostgREST-shaped internal error;
 * - `401`: the gateway's 401 `{ message: "Invalid API key" }`, as if the key had been revoked.
 */
export interface PostgrestFault {
  kind: "outage" | "503" | "500" | "401";
  times?: number;
  /** Only requests with this method are faulted (e.g. "POST" for writes); all when omitted. */
  method?: string;
}

export interface PostgrestRequestRecord {
  method: string;
  /** e.g. `/rest/v1/scenes`. */
  path: string;
  /** The raw query string with its `?`, or "". */
  search: string;
  /** Lower-cased names. */
  headers: Record<string, string>;
  /** The parsed JSON body, or null. */
  body: unknown;
}

export interface PostgrestFake {
  /** SUPABASE_URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** Every request received, in order, faulted ones included. */
  requests: PostgrestRequestRecord[];
  /** A JWT for the Supabase user `sub` (a UUID), role `authenticated`; valid for this fake only. */
  userToken(sub: string, options?: { expiresInS?: number }): string;
  fault(fault: PostgrestFault | null): void;
  close(): Promise<void>;
}

type Role = "anon" | "authenticated" | "service_role";

interface Auth {
  role: Role;
  claims: Record<string, unknown>;
}

interface Table {
  schema: string;
  name: string;
  columns: Set<string>;
  primaryKey: string[];
}

interface PgError {
  code?: string;
  message: string;
  detail?: string;
  hint?: string;
}

/** A PostgREST (or gateway) error answer. */
class ApiError extends Error {
  constructor(readonly status: number, readonly body: Record<string, unknown>) {
    super(String(body.message));
  }
}

function pgrst(status: number, code: string, message: string, extra: {
  details?: string | null;
  hint?: string | null;
} = {}): ApiError {
  return new ApiError(status, {
    code,
    details: extra.details ?? null,
    hint: extra.hint ?? null,
    message,
  });
}

const INVALID_KEY = () =>
  new ApiError(401, {
    message: "Invalid API key",
    hint: "Double check your Supabase `anon` or `service_role` API key.",
  });

const RESERVED = new Set([
  "select",
  "order",
  "limit",
  "offset",
  "on_conflict",
  "columns",
  "apikey",
]);
const OPERATORS: Record<string, string> = {
  eq: "=",
  neq: "<>",
  gt: ">",
  gte: ">=",
  lt: "<",
  lte: "<=",
  like: "like",
  ilike: "ilike",
};
const IS_VALUES: Record<string, string> = {
  null: "is null",
  not_null: "is not null",
  true: "is true",
  false: "is false",
  unknown: "is unknown",
};
const MAX_BODY_BYTES = 10 * 1024 * 1024;

function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function b64url(data: string | Uint8Array): string {
  return Buffer.from(data).toString("base64url");
}

/** Starts the fake on an ephemeral loopback port. */
export async function startPostgrest(options: PostgrestFakeOptions): Promise<PostgrestFake> {
  const { pool, schemas, serviceRoleKey, anonKey } = options;
  if (schemas.length === 0) throw new Error("At least one schema must be exposed");
  const secret = randomBytes(32);
  const requests: PostgrestRequestRecord[] = [];
  const inflight = new Set<Promise<void>>();
  let fault: { kind: PostgrestFault["kind"]; left: number; method?: string } | null = null;

  const sign = (input: string) => createHmac("sha256", secret).update(input).digest();

  function userToken(sub: string, { expiresInS = 3600 } = {}): string {
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
    const body = b64url(JSON.stringify({
      sub,
      role: "authenticated",
      aud: "authenticated",
      iat: now,
      exp: now + expiresInS,
    }));
    return `${head}.${body}.${sign(`${head}.${body}`).toString("base64url")}`;
  }

  function verifyToken(token: string): Auth {
    const parts = token.split(".");
    if (parts.length !== 3) {
      throw pgrst(401, "PGRST301", `Expected 3 parts in JWT; got ${parts.length}`);
    }
    const expected = sign(`${parts[0]}.${parts[1]}`);
    const given = Buffer.from(parts[2], "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw pgrst(401, "PGRST301", "JWSError JWSInvalidSignature");
    }
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    if (typeof claims.exp === "number" && claims.exp <= Date.now() / 1000) {
      throw pgrst(401, "PGRST303", "JWT expired");
    }
    if (claims.role !== "authenticated" && claims.role !== "anon") {
      throw pgrst(401, "PGRST301", `JWT role "${claims.role}" is not accepted by this fake`);
    }
    return { role: claims.role, claims };
  }

  function authenticate(headers: http.IncomingHttpHeaders, url: URL): Auth {
    const apikey = header(headers, "apikey") ?? url.searchParams.get("apikey");
    if (!apikey) {
      throw new ApiError(401, {
        message: "No API key found in request",
        hint: "No `apikey` request header or url param was found.",
      });
    }
    if (apikey !== serviceRoleKey && apikey !== anonKey) throw INVALID_KEY();
    const authorization = header(headers, "authorization");
    const token = authorization?.match(/^Bearer\s+(.+)$/i)?.[1];
    if (authorization && !token) throw INVALID_KEY();
    const bearer = token ?? apikey;
    if (bearer === serviceRoleKey) {
      return { role: "service_role", claims: { role: "service_role" } };
    }
    if (bearer === anonKey) return { role: "anon", claims: { role: "anon" } };
    return verifyToken(bearer);
  }

  async function loadTable(schema: string, name: string): Promise<Table> {
    const { rows } = await pool.query(
      `select a.attname as name, coalesce(a.attnum = any(i.indkey), false) as pk
       from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
       join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
       left join pg_index i on i.indrelid = c.oid and i.indisprimary
       where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p', 'v', 'm', 'f')
       order by a.attnum`,
      [schema, name],
    );
    if (rows.length === 0) {
      throw pgrst(
        404,
        "PGRST205",
        `Could not find the table '${schema}.${name}' in the schema cache`,
      );
    }
    return {
      schema,
      name,
      columns: new Set(rows.map((r: { name: string }) => r.name)),
      primaryKey: rows.filter((r: { pk: boolean }) => r.pk).map((r: { name: string }) => r.name),
    };
  }

  /** Runs `run` in one transaction as the request's role, with its JWT claims set. */
  async function asRole<T>(
    auth: Auth,
    readOnly: boolean,
    run: (client: pg.PoolClient) => Promise<T>,
  ): Promise<T> {
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      await client.query(readOnly ? "begin read only" : "begin");
      try {
        await client.query(
          `select set_config('role', $1, true), set_config('request.jwt.claims', $2, true),
                  set_config('request.jwt.claim.sub', $3, true),
                  set_config('request.jwt.claim.role', $1, true)`,
          [auth.role, JSON.stringify(auth.claims), String(auth.claims.sub ?? "")],
        );
        const result = await run(client);
        await client.query("commit");
        return result;
      } catch (error) {
        await client.query("rollback").catch((e: Error) => broken = e);
        throw error;
      }
    } finally {
      client.release(broken);
    }
  }

  async function handle(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    state: { role: Role },
  ): Promise<void> {
    const url = new URL(req.url ?? "/", "http://localhost");
    const raw = await readBody(req);
    let body: unknown = null;
    let bodyError = false;
    if (raw.length > 0) {
      try {
        body = JSON.parse(raw);
      } catch {
        bodyError = true;
      }
    }
    requests.push({
      method: req.method ?? "GET",
      path: url.pathname,
      search: url.search,
      headers: Object.fromEntries(
        Object.entries(req.headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : v ?? ""]),
      ),
      body,
    });

    if (fault && (!fault.method || fault.method === req.method)) {
      const { kind } = fault;
      if (--fault.left <= 0) fault = null;
      if (kind === "outage") {
        req.socket.destroy();
        return;
      }
      if (kind === "401") throw INVALID_KEY();
      if (kind === "503") {
        throw pgrst(
          503,
          "PGRST002",
          "Could not query the database for the schema cache. Retrying.",
        );
      }
      throw pgrst(500, "XX000", "Internal server error (injected by the fake)");
    }

    const match = url.pathname.match(/^\/rest\/v1\/([^/]+)\/?$/);
    if (!match) throw pgrst(404, "PGRST125", "Invalid path specified in request URL");
    const auth = authenticate(req.headers, url);
    state.role = auth.role;
    const method = req.method ?? "GET";
    const profile = header(
      req.headers,
      method === "GET" || method === "HEAD" ? "accept-profile" : "content-profile",
    );
    const schema = profile ?? schemas[0];
    if (!schemas.includes(schema)) {
      throw pgrst(406, "PGRST106", `Invalid schema: ${schema}`, {
        hint: `Only the following schemas are exposed: ${schemas.join(", ")}`,
      });
    }
    const table = await loadTable(schema, decodeURIComponent(match[1]));
    const single = (header(req.headers, "accept") ?? "").includes(
      "application/vnd.pgrst.object+json",
    );
    const prefer = parsePrefer(header(req.headers, "prefer"));

    if (method === "GET" || method === "HEAD") {
      const { status, payload, range } = await read(table, url, auth, prefer, single);
      send(res, status, method === "HEAD" ? undefined : payload, { "content-range": range });
      return;
    }
    if (method === "POST") {
      if (bodyError || body === null || typeof body !== "object") {
        throw pgrst(400, "PGRST102", "Empty or invalid json");
      }
      const payload = await insert(table, url, auth, prefer, single, body as object);
      send(res, 201, payload, { "content-range": "*/*" });
      return;
    }
    throw pgrst(405, "PGRST117", `Unsupported HTTP method: ${method}`);
  }

  async function read(
    table: Table,
    url: URL,
    auth: Auth,
    prefer: Map<string, string>,
    single: boolean,
  ) {
    const params: unknown[] = [];
    const select = selectList(table, url.searchParams.get("select") ?? "*");
    const where = filters(table, url.searchParams, params);
    const order = orderBy(table, url.searchParams.get("order"));
    const limit = count(url.searchParams.get("limit"), "limit");
    const offset = count(url.searchParams.get("offset"), "offset") ?? 0;
    const from = `${ident(table.schema)}.${ident(table.name)}`;
    const page = [
      limit === undefined ? "" : `limit ${limit}`,
      offset ? `offset ${offset}` : "",
    ].join(" ");
    return await asRole(auth, true, async (client) => {
      const { rows } = await client.query(
        `select coalesce(json_agg(_postgrest_t), '[]')::text as body, count(*)::int as n
         from (select ${select} from ${from} ${where} ${order} ${page}) _postgrest_t`,
        params,
      );
      const n: number = rows[0].n;
      let total = "*";
      if (prefer.get("count") === "exact") {
        const counted = await client.query(
          `select count(*)::int as n from ${from} ${where}`,
          params,
        );
        total = String(counted.rows[0].n);
      }
      const range = n > 0 ? `${offset}-${offset + n - 1}/${total}` : `*/${total}`;
      return { status: 200, payload: singular(rows[0].body, n, single), range };
    });
  }

  async function insert(
    table: Table,
    url: URL,
    auth: Auth,
    prefer: Map<string, string>,
    single: boolean,
    body: object,
  ): Promise<string | undefined> {
    const objects = (Array.isArray(body) ? body : [body]) as Record<string, unknown>[];
    if (objects.some((o) => o === null || typeof o !== "object" || Array.isArray(o))) {
      throw pgrst(400, "PGRST102", "Empty or invalid json");
    }
    const columnsParam = url.searchParams.get("columns");
    let columns: string[];
    if (columnsParam !== null) {
      columns = splitList(columnsParam).map(unquote);
    } else {
      columns = Object.keys(objects[0] ?? {});
      const key = columns.toSorted().join("\u0000");
      if (objects.some((o) => Object.keys(o).toSorted().join("\u0000") !== key)) {
        throw pgrst(400, "PGRST102", "All object keys must match");
      }
    }
    for (const column of columns) {
      if (!table.columns.has(column)) {
        throw pgrst(
          400,
          "PGRST204",
          `Could not find the '${column}' column of '${table.name}' in the schema cache`,
        );
      }
    }
    const resolution = prefer.get("resolution");
    let conflict = "";
    if (resolution === "merge-duplicates" || resolution === "ignore-duplicates") {
      const onConflict = url.searchParams.get("on_conflict");
      const target = onConflict === null ? table.primaryKey : splitList(onConflict).map(unquote);
      for (const column of target) checkColumn(table, column);
      const targetSql = target.length ? `(${target.map(ident).join(", ")})` : "";
      conflict = resolution === "ignore-duplicates" || columns.length === 0
        ? `on conflict ${targetSql} do nothing`
        : `on conflict ${targetSql} do update set ${
          columns.map((c) => `${ident(c)} = excluded.${ident(c)}`).join(", ")
        }`;
    }
    const representation = prefer.get("return") === "representation";
    const select = representation ? selectList(table, url.searchParams.get("select") ?? "*") : "";
    const into = `${ident(table.schema)}.${ident(table.name)}`;
    const params: unknown[] = [JSON.stringify(objects)];
    const source = columns.length
      ? `(${columns.map(ident).join(", ")}) select ${columns.map(ident).join(", ")}
         from json_populate_recordset(null::${into}, $1::json)`
      : `select from generate_series(1, json_array_length($1::json))`;
    if (objects.length === 0) return representation ? singular("[]", 0, single) : undefined;
    return await asRole(auth, false, async (client) => {
      const { rows } = await client.query(
        `with pgrst_source as (
           insert into ${into} ${source} ${conflict}
           returning ${representation ? `${into}.*` : "1"}
         )
         select ${
          representation ? `coalesce(json_agg(_postgrest_t), '[]')::text` : "null::text"
        } as body, count(*)::int as n
         from (select ${representation ? select : "1"} from pgrst_source) _postgrest_t`,
        params,
      );
      return representation ? singular(rows[0].body, rows[0].n, single) : undefined;
    });
  }

  const server = http.createServer((req, res) => {
    const state: { role: Role } = { role: "anon" };
    const done = handle(req, res, state).catch((error) => {
      if (res.headersSent || res.destroyed) return;
      const { status, body } = toApiError(error, state.role);
      send(res, status, JSON.stringify(body));
    });
    inflight.add(done);
    done.finally(() => inflight.delete(done));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    userToken,
    fault(next) {
      fault = next ? { kind: next.kind, left: next.times ?? Infinity, method: next.method } : null;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await Promise.allSettled([...inflight]);
      await closed;
    },
  };
}

/** PostgREST's answer for an error thrown while serving a request as `role`. */
function toApiError(error: unknown, role: Role): ApiError {
  if (error instanceof ApiError) return error;
  const e = error as PgError;
  if (typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code)) {
    return pgrst(pgStatus(e.code, role !== "anon"), e.code, e.message, {
      details: e.detail,
      hint: e.hint,
    });
  }
  // The database is unreachable (or the pool is gone): what PostgREST answers then.
  return pgrst(503, "PGRST000", "Could not connect with the database", {
    details: String((error as Error)?.message ?? error),
  });
}

/** PostgREST's status for a PostgreSQL error code (docs/errors.rst, "HTTP Status Codes"). */
function pgStatus(code: string, authed: boolean): number {
  if (code === "42501") return authed ? 403 : 401;
  const exact: Record<string, number> = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "P0001": 400,
  };
  if (exact[code]) return exact[code];
  const prefix: Record<string, number> = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 413,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
  };
  return prefix[code.slice(0, 2)] ?? 400;
}

function header(headers: http.IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(", ") : value;
}

function parsePrefer(value: string | undefined): Map<string, string> {
  const prefs = new Map<string, string>();
  for (const part of (value ?? "").split(",")) {
    const [key, val = ""] = part.trim().split("=");
    if (key) prefs.set(key.trim(), val.trim());
  }
  return prefs;
}

function checkColumn(table: Table, column: string): void {
  if (!table.columns.has(column)) {
    throw pgrst(400, "42703", `column ${table.name}.${column} does not exist`);
  }
}

/** Splits on commas outside double quotes. */
function splitList(value: string): string[] {
  const items: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === "\\" && quoted && i + 1 < value.length) {
      current += c + value[++i];
    } else if (c === '"') {
      quoted = !quoted;
      current += c;
    } else if (c === "," && !quoted) {
      items.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  items.push(current);
  return items;
}

function unquote(value: string): string {
  const v = value.trim();
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"')
    ? v.slice(1, -1).replace(/\\(.)/g, "$1")
    : v;
}

function selectList(table: Table, select: string): string {
  if (select === "" || select === "*") return "*";
  return splitList(select).map((item) => {
    if (item === "*") return "*";
    if (/[()]|::|->/.test(item)) {
      throw pgrst(400, "PGRST100", `failed to parse select parameter (${select})`, {
        details: "Embedding, casts and JSON paths are not supported by this fake",
      });
    }
    const colon = item.indexOf(":");
    const alias = colon >= 0 ? unquote(item.slice(0, colon)) : undefined;
    const column = unquote(colon >= 0 ? item.slice(colon + 1) : item);
    checkColumn(table, column);
    return alias ? `${ident(column)} as ${ident(alias)}` : ident(column);
  }).join(", ");
}

function filters(table: Table, search: URLSearchParams, params: unknown[]): string {
  const conditions: string[] = [];
  for (const [key, value] of search) {
    if (RESERVED.has(key)) continue;
    if (key === "or" || key === "and" || key.startsWith("not.") || key.includes(".")) {
      throw pgrst(400, "PGRST100", `failed to parse logic tree (${key}=${value})`, {
        details: "Logic trees and embedded filters are not supported by this fake",
      });
    }
    checkColumn(table, key);
    const m = value.match(/^(not\.)?([a-z_]+)\.(.*)$/s);
    if (!m) throw pgrst(400, "PGRST100", `failed to parse filter (${value})`);
    const [, not, op, operand] = m;
    const column = ident(key);
    let condition: string;
    if (op in OPERATORS) {
      params.push(op === "like" || op === "ilike" ? operand.replaceAll("*", "%") : operand);
      condition = `${column} ${OPERATORS[op]} $${params.length}`;
    } else if (op === "in") {
      const list = operand.match(/^\((.*)\)$/s);
      if (!list) throw pgrst(400, "PGRST100", `failed to parse filter (${value})`);
      params.push(list[1] === "" ? [] : splitList(list[1]).map(unquote));
      condition = `${column} = any($${params.length})`;
    } else if (op === "is" && operand in IS_VALUES) {
      condition = `${column} ${IS_VALUES[operand]}`;
    } else {
      throw pgrst(400, "PGRST100", `failed to parse filter (${value})`, {
        details: `Operator "${op}" is not supported by this fake`,
      });
    }
    conditions.push(not ? `not (${condition})` : condition);
  }
  return conditions.length ? `where ${conditions.join(" and ")}` : "";
}

function orderBy(table: Table, order: string | null): string {
  if (!order) return "";
  return "order by " + splitList(order).map((term) => {
    const [name, ...mods] = term.split(".");
    const column = unquote(name);
    checkColumn(table, column);
    let sql = ident(column);
    for (const mod of mods) {
      if (mod === "asc" || mod === "desc") sql += ` ${mod}`;
      else if (mod === "nullsfirst") sql += " nulls first";
      else if (mod === "nullslast") sql += " nulls last";
      else throw pgrst(400, "PGRST100", `failed to parse order (${order})`);
    }
    return sql;
  }).join(", ");
}

function count(value: string | null, name: string): number | undefined {
  if (value === null) return undefined;
  if (!/^\d{1,15}$/.test(value)) {
    throw pgrst(400, "PGRST100", `failed to parse ${name} parameter (${value})`);
  }
  return Number(value);
}

/** The JSON array as is, or its only element for `Accept: application/vnd.pgrst.object+json`. */
function singular(json: string, n: number, single: boolean): string {
  if (!single) return json;
  if (n !== 1) {
    throw pgrst(406, "PGRST116", "Cannot coerce the result to a single JSON object", {
      details: `The result contains ${n} rows`,
    });
  }
  return JSON.stringify((JSON.parse(json) as unknown[])[0]);
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw pgrst(413, "PGRST102", "Request body too large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string | undefined,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    ...(body === undefined ? {} : { "content-type": "application/json; charset=utf-8" }),
    ...headers,
  });
  res.end(body);
}
