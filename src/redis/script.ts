import { createHash } from "node:crypto";
import type { Redis } from "ioredis";

/** A Lua script run by EVALSHA, loaded on first NOSCRIPT. */
export class Script {
  readonly sha: string;
  constructor(readonly name: string, readonly source: string) {
    this.sha = createHash("sha1").update(source).digest("hex");
  }

  async run(redis: Redis, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!String((error as Error).message).includes("NOSCRIPT")) throw error;
      return await redis.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}
