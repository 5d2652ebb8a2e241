import { createHash } from "node:crypto";
import type { RedisClient } from "./client.ts";

/** A Lua script run by EVALSHA, loaded on first NOSCRIPT. */
export class Script {
  readonly sha: string;
  constructor(readonly name: string, readonly source: string) {
    this.sha = createHash("sha1").update(source).digest("hex");
  }

  async run(redis: RedisClient, keys: string[], args: (string | number)[]): Promise<unknown> {
    // One array, not spread into a call: a projection batch has tens of thousands of arguments.
    const rest = [keys.length, ...keys, ...args];
    try {
      return await redis.call("EVALSHA", [this.sha, ...rest]);
    } catch (error) {
      if (!String((error as Error).message).includes("NOSCRIPT")) throw error;
      return await redis.call("EVAL", [this.source, ...rest]);
    }
  }

  /**
   * Runs the script and then `WAIT replicas timeoutMs` in one pipeline, so WAIT goes to the same
   * connection (and node) right after the script's writes. Returns the script's reply and how many
   * replicas acknowledged them.
   */
  async runThenWait(
    redis: RedisClient,
    keys: string[],
    args: (string | number)[],
    wait: { replicas: number; timeoutMs: number },
  ): Promise<[unknown, number]> {
    const send = async (useSha: boolean) => {
      const pipeline = redis.pipeline();
      if (useSha) pipeline.evalsha(this.sha, keys.length, ...keys, ...args);
      else pipeline.eval(this.source, keys.length, ...keys, ...args);
      pipeline.call("WAIT", wait.replicas, wait.timeoutMs);
      const [[error, reply], [waitError, acked]] = (await pipeline.exec()) as [
        Error | null,
        unknown,
      ][];
      return { error, reply, waitError, acked: Number(acked ?? 0) };
    };
    let result = await send(true);
    if (result.error && String(result.error.message).includes("NOSCRIPT")) {
      result = await send(false);
    }
    if (result.error) throw result.error;
    if (result.waitError) throw result.waitError;
    return [result.reply, result.acked];
  }
}

type Names = readonly string[];

/** A script's KEYS and ARGV by name, as declared; the declaration fixes their positions. */
export interface ScriptDefinition<K extends Names, A extends Names> {
  name: string;
  /** The file in `src/redis/lua/` without `.lua` (default: `name`), or any file's URL. */
  file?: string | URL;
  keys: K;
  args: A;
  /**
   * Whether trailing keys or args follow the named ones (passed as `extra` to `run`). The header
   * documents them as `KEYS[n..]` / `ARGV[n..]`; the script finds the first one's index in
   * `EXTRA_KEYS_FROM` / `EXTRA_ARGS_FROM`.
   */
  extra?: { keys?: boolean; args?: boolean };
  /** Values defined as Lua locals before the script (and its includes), e.g. `{ TOKEN: 60000 }`. */
  constants?: Record<string, number>;
}

/** The named keys and args of one call. */
export interface ScriptCall<K extends Names, A extends Names> {
  keys: { readonly [N in K[number]]: string };
  args: { readonly [N in A[number]]: string | number };
}

/** Trailing keys and args, after the named ones. */
export interface ScriptExtra {
  keys?: readonly string[];
  args?: readonly (string | number)[];
}

/** A script whose keys and args are passed by name. */
export class NamedScript<K extends Names, A extends Names> {
  readonly script: Script;
  constructor(readonly definition: ScriptDefinition<K, A>, source: string) {
    this.script = new Script(definition.name, source);
  }

  get name(): string {
    return this.definition.name;
  }

  get source(): string {
    return this.script.source;
  }

  /** Runs the script (EVALSHA, EVAL on NOSCRIPT) with its keys and args in declared order. */
  async run(redis: RedisClient, call: ScriptCall<K, A>, extra: ScriptExtra = {}): Promise<unknown> {
    return await this.script.run(redis, ...this.#positional(call, extra));
  }

  /** Runs the script, then WAIT on the same connection (see {@linkcode Script.runThenWait}). */
  async runThenWait(
    redis: RedisClient,
    call: ScriptCall<K, A>,
    extra: ScriptExtra,
    wait: { replicas: number; timeoutMs: number },
  ): Promise<[unknown, number]> {
    return await this.script.runThenWait(redis, ...this.#positional(call, extra), wait);
  }

  #positional(call: ScriptCall<K, A>, extra: ScriptExtra): [string[], (string | number)[]] {
    const { name, keys, args, extra: declared = {} } = this.definition;
    const positional = <T>(kind: string, names: Names, values: Record<string, T | undefined>) =>
      names.map((n): T => {
        const value = values[n];
        if (value === undefined) throw new TypeError(`Script "${name}" needs ${kind} "${n}"`);
        return value;
      });
    if (extra.keys?.length && !declared.keys) {
      throw new TypeError(`Script "${name}" takes no extra keys`);
    }
    if (extra.args?.length && !declared.args) {
      throw new TypeError(`Script "${name}" takes no extra args`);
    }
    return [
      [...positional<string>("key", keys, call.keys), ...(extra.keys ?? [])],
      [...positional<string | number>("arg", args, call.args), ...(extra.args ?? [])],
    ];
  }
}

const LUA_DIR = new URL("./lua/", import.meta.url);
const INCLUDE = /^--- @include "([\w-]+)"[ \t]*$/gm;
const NAME = /^[A-Za-z_]\w*$/;
const LUA_RESERVED = new Set(
  ("and break do else elseif end false for function goto if in local nil not or repeat return " +
    "then true until while").split(" "),
);

/**
 * Declares a script kept in `src/redis/lua/<file>.lua`, read once at module load. Throws at
 * start-up when the file's header documents other KEYS/ARGV names than the declaration.
 *
 * @example
 * ```ts
 * const renewLeaseScript = defineScript({
 *   name: "renew_lease",
 *   keys: ["lease"] as const,
 *   args: ["owner", "ttl_ms"] as const,
 * });
 * await renewLeaseScript.run(redis, { keys: { lease: key }, args: { owner, ttl_ms: 30_000 } });
 * ```
 */
export function defineScript<const K extends Names, const A extends Names>(
  definition: ScriptDefinition<K, A>,
): NamedScript<K, A> {
  const file = definition.file ?? definition.name;
  const url = typeof file === "string" ? new URL(`${file}.lua`, LUA_DIR) : file;
  return new NamedScript(definition, buildScriptSource(definition, Deno.readTextFileSync(url)));
}

/**
 * The source sent to Redis: `local KEY = {name = KEYS[1], …}` and `local ARG = {…}` (and the
 * constants) ahead of the file's text, with each `--- @include "name"` line replaced by
 * `src/redis/lua/includes/name.lua` (`readInclude` for tests). Checks the header against the
 * declaration, and that the body reads no `KEY.x` / `ARG.x` that is not declared.
 */
export function buildScriptSource(
  definition: ScriptDefinition<Names, Names>,
  text: string,
  readInclude: (name: string) => string = (name) =>
    Deno.readTextFileSync(new URL(`includes/${name}.lua`, LUA_DIR)),
): string {
  const { name, keys, args, extra = {}, constants = {} } = definition;
  const fail = (message: string): never => {
    throw new Error(`Script "${name}": ${message}`);
  };
  for (const n of [...keys, ...args, ...Object.keys(constants)]) {
    if (!NAME.test(n) || LUA_RESERVED.has(n)) fail(`"${n}" is not a Lua name`);
  }
  const header = /^\s*--\[\[([\s\S]*?)\]\]/.exec(text)?.[1] ??
    fail("the file does not start with a --[[ header ]] comment");
  const documented = (table: "KEYS" | "ARGV") => {
    const named = [...header.matchAll(new RegExp(`^\\s*${table}\\.(\\w+)`, "gm"))].map((m) => m[1]);
    const rest = new RegExp(`^\\s*${table}\\[(\\d+)\\.\\.\\]`, "m").exec(header);
    return { named, from: rest ? Number(rest[1]) : null };
  };
  const check = (table: "KEYS" | "ARGV", declared: Names, variadic = false) => {
    const { named, from } = documented(table);
    if (named.join() !== declared.join()) {
      fail(`the header documents ${table} [${named}], the declaration [${declared}]`);
    }
    const expected = variadic ? declared.length + 1 : null;
    if (from !== expected) {
      fail(
        `the header documents extra ${table} from ${from ?? "none"}, the declaration ` +
          `from ${expected ?? "none"}`,
      );
    }
  };
  check("KEYS", keys, extra.keys);
  check("ARGV", args, extra.args);
  if (!/^\s*(Output|Returns):/m.test(header)) fail("the header does not document its Output:");

  const included = new Set<string>();
  const expand = (source: string): string =>
    source.replace(INCLUDE, (_, include: string) => {
      if (included.has(include)) return "";
      included.add(include);
      return expand(readInclude(include)).trimEnd();
    });
  const body = expand(text);
  const code = body.replace(/--\[\[[\s\S]*?\]\]|--[^\n]*/g, "");
  for (const [, table, field] of code.matchAll(/\b(KEY|ARG)\.(\w+)/g)) {
    if (!(table === "KEY" ? keys : args).includes(field)) fail(`${table}.${field} is not declared`);
  }

  const table = (source: string, names: Names) =>
    `{${names.map((n, i) => `${n} = ${source}[${i + 1}]`).join(", ")}}`;
  const prelude = [
    `local KEY = ${table("KEYS", keys)}`,
    `local ARG = ${table("ARGV", args)}`,
    ...(extra.keys ? [`local EXTRA_KEYS_FROM = ${keys.length + 1}`] : []),
    ...(extra.args ? [`local EXTRA_ARGS_FROM = ${args.length + 1}`] : []),
    ...Object.entries(constants).map(([n, value]) => `local ${n} = ${value}`),
  ];
  return `${prelude.join("\n")}\n${body}`;
}
