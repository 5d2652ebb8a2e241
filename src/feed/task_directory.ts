import type { RedisClient } from "../redis/client.ts";
import { decodeEvent, type StoredEvent } from "../events.ts";
import type { Keys } from "../keys.ts";

/** What the all-tasks stream filters on besides the event itself; events carry only task_id. */
export interface TaskOwner {
  video_id: string;
  user_id: string;
}

/**
 * Which video and user each task belongs to, for the video_id and user_id filters of
 * GET /events/stream: learned from the `task.queued` events the feed passes, and for a task first
 * seen later (queued before this process started, or long ago) looked up once from the head of
 * its timeline, which is always its `task.queued`. Bounded: past `capacity` the oldest entries are
 * forgotten, and a forgotten task costs one more lookup (two Redis round trips).
 */
export class TaskDirectory {
  readonly #owners = new Map<string, TaskOwner | null>();
  readonly #lookups = new Map<string, Promise<TaskOwner | null>>();

  constructor(
    readonly redis: RedisClient,
    readonly keys: Keys,
    readonly capacity = 20_000,
  ) {}

  /** Remembers the owner of a task from its `task.queued`. */
  observe(event: StoredEvent): void {
    if (event.type === "task.queued") {
      this.#remember(event.task_id, { video_id: event.data.video_id, user_id: event.data.user_id });
    }
  }

  /** The owner if known (null: known to be unknown), undefined when it needs a lookup. */
  peek(taskId: string): TaskOwner | null | undefined {
    return this.#owners.get(taskId);
  }

  /** The owner of a task, looking it up on first sight; null when the task is gone. */
  owner(taskId: string): Promise<TaskOwner | null> {
    const known = this.#owners.get(taskId);
    if (known !== undefined) return Promise.resolve(known);
    let lookup = this.#lookups.get(taskId);
    if (!lookup) {
      lookup = this.#lookup(taskId).then((owner) => {
        this.#remember(taskId, owner);
        return owner;
      }).finally(() => this.#lookups.delete(taskId));
      this.#lookups.set(taskId, lookup);
    }
    return lookup;
  }

  async #lookup(taskId: string): Promise<TaskOwner | null> {
    const first = await this.redis.lindex(this.keys.taskTimeline(taskId), 0);
    if (!first) return null;
    const [entry] = await this.redis.xrange(this.keys.eventStream, first, first);
    if (!entry) return null;
    try {
      const event = decodeEvent(entry[0], entry[1]);
      return event.type === "task.queued"
        ? { video_id: event.data.video_id, user_id: event.data.user_id }
        : null;
    } catch {
      return null;
    }
  }

  #remember(taskId: string, owner: TaskOwner | null): void {
    this.#owners.delete(taskId);
    this.#owners.set(taskId, owner);
    if (this.#owners.size > this.capacity) {
      this.#owners.delete(this.#owners.keys().next().value!);
    }
  }
}
