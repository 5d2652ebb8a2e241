import { type Config, ConfigError, loadConfig } from "../config.ts";
import { createLogger } from "../log.ts";
import { describeTarget, redisTarget, waitReady } from "../redis/client.ts";
import { createServices, type Services } from "../runtime.ts";

/** Thrown for bad arguments: the CLI prints it with the usage and exits 2. */
export class UsageError extends Error {}

export interface Output {
  line(text: string): void;
  progress(done: number, total: number): void;
  end(): void;
}

/** A progress bar on a terminal, plain lines otherwise. */
export function output(write: (text: string) => void, terminal: boolean): Output {
  let lastPlain = -1;
  return {
    line: (text) => write(`${text}\n`),
    progress(done, total) {
      if (terminal) {
        const width = 30;
        const filled = total ? Math.round((done / total) * width) : width;
        write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total}`);
        return;
      }
      const decile = total ? Math.floor((done / total) * 10) : 10;
      if (decile !== lastPlain || done === total) {
        lastPlain = decile;
        write(`progress ${done}/${total}\n`);
      }
    },
    end: () => terminal && write("\n"),
  };
}

/** Config and services for a command-line tool; a clear message and exit 1 when Redis is down. */
export async function connect(
  env: Record<string, string | undefined>,
): Promise<{ services: Services; config: Config }> {
  let config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) throw new UsageError(error.message);
    throw error;
  }
  const services = createServices(config, createLogger("error"));
  try {
    await waitReady(services.redis, 3_000);
  } catch {
    await services.close();
    throw new Error(`Redis is unreachable at ${describeTarget(redisTarget(config))}`);
  }
  // A tool run with another PARTITIONS than the deployment's would miss tasks: refused.
  await services.partitions.checkCount().catch(async (error) => {
    await services.close();
    throw error;
  });
  return { services, config };
}

/** `--partition N`: a partition number, checked against PARTITIONS once connected. */
export function parsePartition(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,4}$/.test(value)) {
    throw new UsageError(`--partition must be a partition number, got "${value}"`);
  }
  return Number(value);
}

/** The partitions a tool works on: the one named by --partition, or all. */
export function scopeOf(services: Services, partition: number | undefined) {
  try {
    return services.partitions.scope(partition);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export function parseDate(flag: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const date = new Date(value);
  if (Number.isNaN(date.getTime()) || !/^\d{4}-\d{2}-\d{2}/.test(value)) {
    throw new UsageError(`--${flag} must be an ISO-8601 date or time, got "${value}"`);
  }
  return date;
}

type CliMain = (
  args: string[],
  env: Record<string, string | undefined>,
  write: (text: string) => void,
  terminal: boolean,
) => Promise<number>;

/** A CLI module's entry point: its main on this process's arguments, environment and stdout. */
export async function runMain(usage: string, main: CliMain): Promise<never> {
  const stdout = new TextEncoder();
  Deno.exit(
    await runCli(usage, () =>
      main(
        Deno.args,
        Deno.env.toObject(),
        (text) => Deno.stdout.writeSync(stdout.encode(text)),
        Deno.stdout.isTerminal(),
      )),
  );
}

/** Runs a CLI main: usage errors exit 2, other errors 1, with one clear line on stderr. */
export async function runCli(usage: string, main: () => Promise<number>): Promise<number> {
  try {
    return await main();
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`${error.message}\n\n${usage}`);
      return 2;
    }
    console.error(`Error: ${(error as Error).message}`);
    return 1;
  }
}
