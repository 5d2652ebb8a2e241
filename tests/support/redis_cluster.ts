/**
 * Private Redis topologies for tests and the cluster bench: a Redis Cluster (masters with one
 * replica each) and a Sentinel-managed primary with a replica. Every server runs on a free port of
 * 127.0.0.1 with its own temporary folder; `stop()` (or `await using`) kills them all and removes
 * the folders, also when the caller failed half-way.
 */
import { findBinary, MissingBinary, requireBinaries } from "../../src/dev/local_services.ts";
import { freePort } from "../_helpers.ts";

/** A server process of ours: its port and how to kill it. */
export interface ServerProcess {
  port: number;
  /** redis-server's arguments, to start it again as it was. */
  args: string[];
  child: Deno.ChildProcess;
  /** Whether it was killed (kill -9) on purpose by the test. */
  killed: boolean;
}

const decoder = new TextDecoder();

/** A free port whose cluster bus port (port + 10000) is free too. */
function clusterPort(): number {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      Deno.listen({ hostname: "127.0.0.1", port: port + 10_000 }).close();
      return port;
    } catch {
      // Taken: try another.
    }
  }
  throw new Error("No free port pair for a cluster node");
}

/** redis-server and redis-cli (which creates the cluster and asks the servers), or a clear error. */
function requireRedisTools() {
  requireBinaries(["redis"]);
  if (!findBinary("redis-cli")) {
    throw new MissingBinary("Missing: redis-cli (Debian/Ubuntu: apt-get install redis-tools)");
  }
}

/** Runs redis-cli against `port` with `args`; its output as text (throws on a failed exit). */
export async function cli(port: number, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(findBinary("redis-cli")!, {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = decoder.decode(out.stdout);
  if (!out.success) throw new Error(`redis-cli ${args.join(" ")}: ${decoder.decode(out.stderr)}`);
  return text;
}

/** A field of an INFO reply (`field:value` lines). */
export function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*?)\\r?$`, "m").exec(info)?.[1];
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms${last ? ` (${last})` : ""}`);
}

function spawn(args: string[], port: number): ServerProcess {
  const child = new Deno.Command(findBinary("redis-server")!, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  return { port, args, child, killed: false };
}

function killNow(server: ServerProcess) {
  try {
    server.child.kill("SIGKILL");
  } catch {
    // Already gone.
  }
}

async function kill(server: ServerProcess) {
  try {
    server.child.kill("SIGKILL");
  } catch {
    // Already gone.
  }
  await server.child.status;
}

/** Common settings: loopback only, no RDB snapshots, AOF (everysec) unless told otherwise. */
function serverArgs(port: number, dir: string, appendonly: boolean): string[] {
  return [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--dir",
    dir,
    "--save",
    "",
    "--appendonly",
    appendonly ? "yes" : "no",
    "--appendfsync",
    "everysec",
    // A replica's first sync starts at once (the default waits 5 s for more replicas).
    "--repl-diskless-sync-delay",
    "0",
  ];
}

async function pinged(port: number): Promise<boolean> {
  return (await cli(port, "PING")).trim() === "PONG";
}

export interface ClusterOptions {
  masters?: number;
  /** How long a master may be unreachable before its replica takes over (cluster-node-timeout). */
  nodeTimeoutMs?: number;
  appendonly?: boolean;
}

/** A local Redis Cluster: `masters` masters with one replica each. */
export class LocalCluster {
  readonly servers: ServerProcess[] = [];
  #dirs: string[] = [];

  private constructor() {}

  /** Seed nodes as REDIS_CLUSTER_NODES wants them. */
  get nodes(): string {
    return this.servers.map((s) => `127.0.0.1:${s.port}`).join(",");
  }

  /** Settings for the service: REDIS_CLUSTER_NODES with every node as a seed. */
  get env(): Record<string, string> {
    return { REDIS_CLUSTER_NODES: this.nodes };
  }

  static async start(options: ClusterOptions = {}): Promise<LocalCluster> {
    requireRedisTools();
    const masters = options.masters ?? 3;
    const cluster = new LocalCluster();
    try {
      for (let i = 0; i < masters * 2; i++) {
        const port = clusterPort();
        const dir = await Deno.makeTempDir({ prefix: `vp-cluster-${port}-` });
        cluster.#dirs.push(dir);
        cluster.servers.push(spawn([
          ...serverArgs(port, dir, options.appendonly ?? true),
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          `${dir}/nodes.conf`,
          "--cluster-node-timeout",
          String(options.nodeTimeoutMs ?? 1_000),
          // A replica takes over however long it was cut off from its master.
          "--cluster-replica-validity-factor",
          "0",
          // The other shards keep serving while one fails over.
          "--cluster-require-full-coverage",
          "no",
        ], port));
      }
      for (const server of cluster.servers) {
        await until(() => pinged(server.port), `redis-server on ${server.port}`, 10_000);
      }
      await cli(
        cluster.servers[0].port,
        "--cluster",
        "create",
        ...cluster.servers.map((s) => `127.0.0.1:${s.port}`),
        "--cluster-replicas",
        "1",
        "--cluster-yes",
      );
      await cluster.waitHealthy();
      return cluster;
    } catch (error) {
      await cluster.stop();
      throw error;
    }
  }

  /** The live servers' view of the cluster (CLUSTER NODES of one of them). */
  async topology(): Promise<ClusterNodeInfo[]> {
    const alive = this.servers.find((s) => !s.killed)!;
    return parseClusterNodes(await cli(alive.port, "CLUSTER", "NODES"));
  }

  /**
   * Every live server says cluster_state:ok and knows every live server; every slot has a
   * reachable master; every live replica's link to its master is up and synced.
   */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    const alive = () => this.servers.filter((s) => !s.killed);
    await until(
      async () => {
        for (const server of alive()) {
          const info = await cli(server.port, "CLUSTER", "INFO");
          if (infoField(info, "cluster_state") !== "ok") return false;
          if (infoField(info, "cluster_slots_assigned") !== "16384") return false;
          const nodes = parseClusterNodes(await cli(server.port, "CLUSTER", "NODES"));
          const live = nodes.filter((n) => !n.flags.includes("fail") && !n.flags.includes("fail?"));
          if (live.length !== alive().length) return false;
          const masterSlots = live.filter((n) => n.role === "master")
            .reduce((sum, n) => sum + n.slots.reduce((s, [a, b]) => s + b - a + 1, 0), 0);
          if (masterSlots !== 16_384) return false;
          if (nodes.find((n) => n.port === server.port)?.role === "replica") {
            const replication = await cli(server.port, "INFO", "replication");
            if (infoField(replication, "master_link_status") !== "up") return false;
            if (infoField(replication, "master_sync_in_progress") !== "0") return false;
          }
        }
        return true;
      },
      "a healthy cluster",
      timeoutMs,
    );
  }

  /** The master serving `key`'s slot now. */
  async masterOf(key: string): Promise<ClusterNodeInfo> {
    const alive = this.servers.find((s) => !s.killed)!;
    const slot = Number((await cli(alive.port, "CLUSTER", "KEYSLOT", key)).trim());
    const master = (await this.topology()).find((n) =>
      n.role === "master" && !n.flags.includes("fail") &&
      n.slots.some(([a, b]) => a <= slot && slot <= b)
    );
    if (!master) throw new Error(`No master serves slot ${slot} of "${key}"`);
    return master;
  }

  /** The replica of the master on `port`. */
  async replicaOf(port: number): Promise<ClusterNodeInfo> {
    const nodes = await this.topology();
    const master = nodes.find((n) => n.port === port && n.role === "master");
    const replica = nodes.find((n) => n.masterId === master?.id && !n.flags.includes("fail"));
    if (!replica) throw new Error(`The master on ${port} has no replica`);
    return replica;
  }

  /**
   * Cuts a replica off its master (`cut`: its link is dropped and cannot be made again, as with a
   * network partition) or lets it reconnect (`heal`). What the master takes meanwhile is not
   * replicated. (A wrong masterauth makes its reconnects fail at AUTH.)
   */
  async replication(port: number, action: "cut" | "heal"): Promise<void> {
    const password = action === "cut" ? `cut-${crypto.randomUUID()}` : "";
    await cli(port, "CONFIG", "SET", "masterauth", password);
    if (action === "cut") await cli(port, "CLIENT", "KILL", "TYPE", "master");
  }

  /** kill -9 of the server on `port`. */
  async kill(port: number): Promise<void> {
    const server = this.servers.find((s) => s.port === port);
    if (!server) throw new Error(`No server of ours on port ${port}`);
    server.killed = true;
    await kill(server);
  }

  /**
   * Starts a killed server again with its folder (AOF and nodes.conf): the cluster takes it back,
   * as a replica of the master that replaced it.
   */
  async restart(port: number): Promise<void> {
    const index = this.servers.findIndex((s) => s.port === port && s.killed);
    if (index < 0) throw new Error(`No killed server of ours on port ${port}`);
    this.servers[index] = spawn(this.servers[index].args, port);
    await until(() => pinged(port), `redis-server on ${port} again`, 10_000);
  }

  /** Waits until `key`'s slot is served by a master other than `port` (its replica took over). */
  async waitFailover(key: string, port: number, timeoutMs = 20_000): Promise<ClusterNodeInfo> {
    let master: ClusterNodeInfo | null = null;
    await until(
      async () => {
        master = await this.masterOf(key);
        return master.port !== port;
      },
      `a new master for "${key}"`,
      timeoutMs,
    );
    return master!;
  }

  /** Kills every server and removes their folders; never throws. */
  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => kill(s)));
    for (const dir of this.#dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  /** stop() without waiting, for an unload handler. */
  stopNow(): void {
    this.servers.forEach(killNow);
    for (const dir of this.#dirs) removeNow(dir);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

export interface ClusterNodeInfo {
  id: string;
  port: number;
  role: "master" | "replica";
  flags: string[];
  /** The master's id, for a replica. */
  masterId: string | null;
  /** Slot ranges, inclusive. */
  slots: [number, number][];
}

/** A CLUSTER NODES reply as objects. */
export function parseClusterNodes(text: string): ClusterNodeInfo[] {
  return text.trim().split("\n").filter(Boolean).map((line) => {
    const [id, address, flagText, master, , , , , ...slots] = line.trim().split(" ");
    const flags = flagText.split(",");
    return {
      id,
      port: Number(/:(\d+)@/.exec(address)?.[1]),
      role: flags.includes("master") ? "master" : "replica",
      flags,
      masterId: master === "-" ? null : master,
      slots: slots.filter((s) => !s.startsWith("[")).map((s) => {
        const [a, b] = s.split("-").map(Number);
        return [a, b ?? a] as [number, number];
      }),
    };
  });
}

/** A primary, one replica and `sentinels` sentinels watching them as "vp-primary". */
export class LocalSentinel {
  static readonly NAME = "vp-primary";
  readonly servers: ServerProcess[] = [];
  readonly sentinels: ServerProcess[] = [];
  #dirs: string[] = [];

  private constructor() {}

  get primary(): ServerProcess {
    return this.servers[0];
  }

  /** Settings for the service. */
  get env(): Record<string, string> {
    return {
      REDIS_SENTINELS: this.sentinels.map((s) => `127.0.0.1:${s.port}`).join(","),
      REDIS_SENTINEL_NAME: LocalSentinel.NAME,
    };
  }

  static async start(options: { sentinels?: 1 | 3; downAfterMs?: number } = {}) {
    requireRedisTools();
    const topology = new LocalSentinel();
    const count = options.sentinels ?? 1;
    try {
      for (let i = 0; i < 2; i++) {
        const port = freePort();
        const dir = await Deno.makeTempDir({ prefix: `vp-sentinel-data-${port}-` });
        topology.#dirs.push(dir);
        const replicaOf = i === 0
          ? []
          : ["--replicaof", "127.0.0.1", String(topology.primary.port)];
        topology.servers.push(spawn([...serverArgs(port, dir, true), ...replicaOf], port));
        await until(() => pinged(port), `redis-server on ${port}`, 10_000);
      }
      await until(
        async () => {
          const info = await cli(topology.servers[1].port, "INFO", "replication");
          return infoField(info, "master_link_status") === "up";
        },
        "the replica in sync",
        10_000,
      );
      for (let i = 0; i < count; i++) {
        const port = freePort();
        const dir = await Deno.makeTempDir({ prefix: `vp-sentinel-${port}-` });
        topology.#dirs.push(dir);
        const name = LocalSentinel.NAME;
        await Deno.writeTextFile(
          `${dir}/sentinel.conf`,
          [
            `port ${port}`,
            "bind 127.0.0.1",
            `dir ${dir}`,
            `sentinel monitor ${name} 127.0.0.1 ${topology.primary.port} ${Math.ceil(count / 2)}`,
            `sentinel down-after-milliseconds ${name} ${options.downAfterMs ?? 1_000}`,
            `sentinel failover-timeout ${name} 5000`,
            `sentinel parallel-syncs ${name} 1`,
            "",
          ].join("\n"),
        );
        topology.sentinels.push(spawn([`${dir}/sentinel.conf`, "--sentinel"], port));
        await until(() => pinged(port), `sentinel on ${port}`, 10_000);
      }
      // Every sentinel has found the replica (and the others), so a failover can pick it.
      await until(
        async () => {
          for (const s of topology.sentinels) {
            const replicas = await cli(s.port, "SENTINEL", "REPLICAS", LocalSentinel.NAME);
            if (!replicas.includes(String(topology.servers[1].port))) return false;
          }
          return true;
        },
        "the sentinels to know the replica",
        15_000,
      );
      return topology;
    } catch (error) {
      await topology.stop();
      throw error;
    }
  }

  /** The port the sentinels name as primary now. */
  async primaryPort(): Promise<number> {
    const reply = await cli(
      this.sentinels[0].port,
      "SENTINEL",
      "GET-MASTER-ADDR-BY-NAME",
      LocalSentinel.NAME,
    );
    return Number(reply.trim().split("\n")[1]);
  }

  /** kill -9 of a data server. */
  async kill(port: number): Promise<void> {
    const server = this.servers.find((s) => s.port === port)!;
    server.killed = true;
    await kill(server);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.sentinels, ...this.servers].map((s) => kill(s)));
    for (const dir of this.#dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  stopNow(): void {
    [...this.sentinels, ...this.servers].forEach(killNow);
    for (const dir of this.#dirs) removeNow(dir);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

function removeNow(dir: string) {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // Gone already.
  }
}

/**
 * One topology shared by the tests of a file: started by the first test that asks, stopped by
 * `stop()` (the file's last test) or, should that not run, when the test process unloads.
 */
export function shared<T extends { stop(): Promise<void>; stopNow(): void }>(
  start: () => Promise<T>,
) {
  let started: Promise<T> | null = null;
  let instance: T | null = null;
  globalThis.addEventListener("unload", () => instance?.stopNow());
  return {
    get: () =>
      started ??= start().then((t) => {
        instance = t;
        return t;
      }),
    async stop() {
      if (!started) return;
      await (await started.catch(() => null))?.stop();
      started = null;
      instance = null;
    },
  };
}

/**
 * A test that may start or use a shared topology: its servers outlive the test that started them,
 * so their pending exit is not that test's leak.
 */
export function topologyTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}
