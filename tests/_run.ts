/**
 * `deno task test`: runs the suite against Redis on 127.0.0.1:6379 and PostgreSQL on
 * 127.0.0.1:5432 (or TEST_DATABASE_URL) when they answer; otherwise starts private ones (in a
 * temporary folder, removed afterwards) first. Fails at once, naming the packages, when a server
 * is needed and its binaries are missing. Arguments are passed to `deno test` (default: tests/).
 */
import {
  freePort,
  listening,
  type LocalServer,
  MissingBinary,
  redisAnswers,
  requireBinaries,
  startPostgres,
  startRedis,
} from "../src/dev/local_services.ts";

const REDIS_PORT = 6379;
const POSTGRES_PORT = 5432;

async function main(): Promise<number> {
  const started: LocalServer[] = [];
  const env: Record<string, string> = {};
  // Each server's folder directly under the temporary directory: a PostgreSQL run as its own user
  // (when this runs as root) must be able to reach it.
  const dirs: string[] = [];
  const tempDir = async () => {
    dirs.push(await Deno.makeTempDir({ prefix: "video-pipeline-test-" }));
    return dirs.at(-1)!;
  };
  try {
    const needRedis = !await redisAnswers(REDIS_PORT);
    const needPostgres = !Deno.env.get("TEST_DATABASE_URL") && !await listening(POSTGRES_PORT);
    requireBinaries([
      ...(needRedis ? ["redis" as const] : []),
      ...(needPostgres ? ["postgres" as const] : []),
    ]);
    if (needRedis) {
      if (await listening(REDIS_PORT)) {
        console.error(`Port ${REDIS_PORT} is taken by something that is not Redis: free it first`);
        return 1;
      }
      // Tests and the fakes use the default address, so the private Redis takes it.
      started.push(await startRedis({ port: REDIS_PORT, dir: await tempDir() }));
      console.error(`No Redis on 127.0.0.1:${REDIS_PORT}: started a private one for the tests`);
    }
    if (needPostgres) {
      const postgres = await startPostgres({
        port: freePort(),
        dir: await tempDir(),
        database: "test",
      });
      started.push(postgres);
      env.TEST_DATABASE_URL = postgres.url;
      console.error(
        `No PostgreSQL on 127.0.0.1:${POSTGRES_PORT}: started a private one (${postgres.url})`,
      );
    }
    const args = Deno.args.length ? Deno.args : ["tests/"];
    const test = new Deno.Command(Deno.execPath(), {
      args: ["test", "--allow-all", ...args],
      env,
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    const stop = () => test.kill("SIGINT");
    Deno.addSignalListener("SIGINT", stop);
    const { code } = await test.status;
    Deno.removeSignalListener("SIGINT", stop);
    return code;
  } catch (error) {
    if (error instanceof MissingBinary) {
      console.error(`Cannot run the tests: no server is running and ${error.message}`);
      return 1;
    }
    throw error;
  } finally {
    for (const server of started.reverse()) await server.stop();
    for (const dir of dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.exit(await main());
