/**
 * Private Redis and PostgreSQL servers for a laptop or a fresh test machine: found on PATH (or
 * in Debian's /usr/lib/postgresql/<version>/bin), started on a port of ours in a folder of ours,
 * and stopped by whoever started them. Production never uses this: it connects to what it is given.
 */

/** What to install when a server binary is missing, per platform. */
const INSTALL = {
  redis: "redis-server (Debian/Ubuntu: apt-get install redis-server; Fedora: dnf install redis; " +
    "macOS: brew install redis)",
  postgres: "PostgreSQL's initdb and postgres (Debian/Ubuntu: apt-get install postgresql; " +
    "Fedora: dnf install postgresql-server; macOS: brew install postgresql)",
};

export class MissingBinary extends Error {}

/** The path of `name` on PATH or in `extraDirs`, or null. */
export function findBinary(name: string, extraDirs: string[] = []): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":").filter(Boolean), ...extraDirs];
  for (const dir of dirs) {
    try {
      const path = `${dir}/${name}`;
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // Not there.
    }
  }
  return null;
}

/** Debian keeps PostgreSQL's server binaries out of PATH, one folder per major version. */
function postgresDirs(): string[] {
  try {
    return [...Deno.readDirSync("/usr/lib/postgresql")].map((d) => d.name)
      .sort((a, b) => Number(b) - Number(a))
      .map((version) => `/usr/lib/postgresql/${version}/bin`);
  } catch {
    return [];
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:`port` within `timeoutMs`. */
export async function listening(port: number, timeoutMs = 500): Promise<boolean> {
  const attempt = Deno.connect({ hostname: "127.0.0.1", port }).then((c) => {
    c.close();
    return true;
  }, () => false);
  const timer = new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs));
  return await Promise.race([attempt, timer]);
}

/** Whether a Redis answers PING on 127.0.0.1:`port`. */
export async function redisAnswers(port: number, timeoutMs = 500): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => conn?.close(), timeoutMs);
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("PING\r\n"));
    const buffer = new Uint8Array(64);
    const n = await conn.read(buffer);
    return n !== null && new TextDecoder().decode(buffer.subarray(0, n)).startsWith("+PONG");
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // Closed by the timer.
    }
  }
}

/** A port free right now on 127.0.0.1. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

export interface LocalServer {
  port: number;
  url: string;
  stop(): Promise<void>;
}

async function waitUntil(check: () => Promise<boolean>, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not start within ${timeoutMs} ms`);
}

/** Fails at once, naming the packages to install, when a server's binaries are missing. */
export function requireBinaries(which: ("redis" | "postgres")[]): void {
  const missing = which.filter((kind) =>
    kind === "redis"
      ? !findBinary("redis-server")
      : !findBinary("initdb", postgresDirs()) || !findBinary("postgres", postgresDirs())
  );
  if (missing.length) {
    throw new MissingBinary(`Missing: ${missing.map((kind) => INSTALL[kind]).join("; and ")}`);
  }
}

async function stopChild(child: Deno.ChildProcess) {
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  const exited = await Promise.race([
    child.status.then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), 5_000)),
  ]);
  if (!exited) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Gone meanwhile.
    }
    await child.status;
  }
}

/**
 * Spawns a server in its own process group (a Ctrl-C at the terminal stops us, and we stop it
 * after our work) and resolves once `ready` says so; stops it again when it never does.
 */
async function spawnServer(
  [command, ...args]: string[],
  ready: () => Promise<boolean>,
  what: string,
): Promise<Deno.ChildProcess> {
  const child = new Deno.Command(command, {
    args,
    stdout: "null",
    stderr: "null",
    stdin: "null",
    detached: true,
  }).spawn();
  try {
    await waitUntil(ready, what);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  return child;
}

export interface RedisOptions {
  port: number;
  /** Where its append-only file goes; without one it keeps nothing on disk. */
  dir?: string;
  /** With `dir`: how often the AOF is synced (default everysec). */
  appendfsync?: "always" | "everysec";
  /** More server arguments, e.g. `["--replicaof", "127.0.0.1", "6380"]`. */
  args?: string[];
}

/**
 * Spawns `redis-server` on `port` (AOF in `dir` when given, else no persistence) in its own
 * process group, and resolves once it answers PING. The caller stops it (tests kill it -9).
 */
export async function spawnRedis(options: RedisOptions): Promise<Deno.ChildProcess> {
  requireBinaries(["redis"]);
  const persistence = options.dir
    ? [
      "--dir",
      options.dir,
      "--appendonly",
      "yes",
      "--appendfsync",
      options.appendfsync ?? "everysec",
    ]
    : ["--appendonly", "no"];
  if (options.dir) await Deno.mkdir(options.dir, { recursive: true });
  return await spawnServer(
    [
      findBinary("redis-server")!,
      "--port",
      String(options.port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      ...persistence,
      ...(options.args ?? []),
    ],
    () => redisAnswers(options.port),
    `redis-server on port ${options.port}`,
  );
}

/** Starts `redis-server` on `port` with its data in `dir` (AOF on: work survives a restart). */
export async function startRedis(options: RedisOptions & { dir: string }): Promise<LocalServer> {
  const child = await spawnRedis(options);
  return {
    port: options.port,
    url: `redis://127.0.0.1:${options.port}`,
    stop: () => stopChild(child),
  };
}

/**
 * Creates a PostgreSQL cluster in `dir` (trust auth, user postgres) with a database `database`,
 * and starts it on `port`. Resolves once it accepts connections.
 */
export async function startPostgres(
  options: { port: number; dir: string; database: string },
): Promise<LocalServer> {
  requireBinaries(["postgres"]);
  const dirs = postgresDirs();
  const data = `${options.dir}/data`;
  // initdb refuses to run as root; so does postgres. Root (CI containers) runs them as postgres.
  const asRoot = Deno.uid?.() === 0;
  if (asRoot) {
    await Deno.mkdir(data, { recursive: true });
    await new Deno.Command("chown", { args: ["-R", "postgres", options.dir] }).output();
  }
  const wrap = (name: string) =>
    asRoot
      ? ["runuser", "-u", "postgres", "--", findBinary(name, dirs)!]
      : [findBinary(name, dirs)!];
  const exec = async (name: string, args: string[]) => {
    const [command, ...prefix] = wrap(name);
    const out = await new Deno.Command(command, {
      args: [...prefix, ...args],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).output();
    if (!out.success) {
      throw new Error(`${name} failed: ${new TextDecoder().decode(out.stderr).slice(0, 500)}`);
    }
  };
  await exec("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
  const child = await spawnServer(
    [
      ...wrap("postgres"),
      "-D",
      data,
      "-p",
      String(options.port),
      "-k",
      options.dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "fsync=off",
    ],
    () => listening(options.port),
    `postgres on port ${options.port}`,
  );
  try {
    await exec("createdb", [
      "-h",
      "127.0.0.1",
      "-p",
      String(options.port),
      "-U",
      "postgres",
      options.database,
    ]);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  return {
    port: options.port,
    url: `postgres://postgres@127.0.0.1:${options.port}/${options.database}`,
    stop: () => stopChild(child),
  };
}
