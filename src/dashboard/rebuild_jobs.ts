/**
 * Projection rebuilds started from the dashboard run in the background of the server process that
 * took the request; the page follows their progress here. Two rebuilds never race (the rebuild
 * takes `{vp}:view-rebuild-lock`), so a second start while one runs is refused by the rebuild
 * itself, as the CLI and the admin API are.
 */
import type { RebuildResult } from "../projections/rebuild.ts";

export interface RebuildJob {
  id: string;
  started_at: string;
  force: boolean;
  applied: number;
  total: number;
  finished_at: string | null;
  result: RebuildResult | null;
  error: string | null;
}

export type RunRebuild = (options: {
  force: boolean;
  onProgress?: (applied: number, total: number) => void;
}) => Promise<RebuildResult>;

const KEEP = 10;

export class RebuildJobs {
  private readonly jobs = new Map<string, RebuildJob>();

  constructor(private readonly run: RunRebuild, private readonly now: () => Date) {}

  /** Starts a rebuild now; its outcome (or why it was refused) lands in the job. */
  start(force: boolean): RebuildJob {
    const job: RebuildJob = {
      id: crypto.randomUUID(),
      started_at: this.now().toISOString(),
      force,
      applied: 0,
      total: 0,
      finished_at: null,
      result: null,
      error: null,
    };
    this.jobs.set(job.id, job);
    for (const old of [...this.jobs.keys()].slice(0, Math.max(0, this.jobs.size - KEEP))) {
      this.jobs.delete(old);
    }
    this.run({
      force,
      onProgress: (applied, total) => {
        job.applied = applied;
        job.total = total;
      },
    }).then(
      (result) => {
        job.result = result;
        job.applied = job.total = result.events;
      },
      (error) => {
        job.error = error instanceof Error ? error.message : String(error);
      },
    ).finally(() => {
      job.finished_at = this.now().toISOString();
    });
    return job;
  }

  get(id: string): RebuildJob | null {
    return this.jobs.get(id) ?? null;
  }

  /** Jobs, newest first. */
  list(): RebuildJob[] {
    return [...this.jobs.values()].reverse();
  }
}
