import type { Scene, SceneChangeSchema, StepName, TaskResult } from "../events.ts";
import type { VideoRequest } from "../webhook.ts";
import type { z } from "zod";

/** What a step sees: the request, the outputs of the steps before it, and a cancel signal. */
export interface StepContext {
  taskId: string;
  request: VideoRequest;
  attempt: number;
  outputs: Partial<Record<StepName, Record<string, unknown>>>;
  signal: AbortSignal;
  /** Set when an earlier run of this task generated scenes: a reprocess stores over them. */
  storedRevision?: number;
}

/**
 * One named stage of the generation pipeline. Its output is recorded in the step.completed event,
 * so a redelivered task resumes after the last completed step instead of repeating it.
 */
export interface Step {
  name: StepName;
  run(context: StepContext): Promise<Record<string, unknown>>;
}

export type Pipeline = readonly Step[];

/** Where the latest stored scenes of a video are read from (Supabase, or the Redis view). */
export interface VideoHistory {
  latest(videoId: string): Promise<{ revision: number; scenes: Scene[] } | null>;
  /** A revision number no other task of the video has: above `latest` and any handed out. */
  claimRevision(videoId: string, latest: number): Promise<number>;
}

export interface ReframeOutput {
  image_url: string;
  reframed: boolean;
  provider: string;
  [detail: string]: unknown;
}

export interface ScenesOutput {
  scenes: Scene[];
  provider: string;
  /** The video revision these scenes will be stored as, fixed when they are generated. */
  video_revision: number;
  changes?: z.infer<typeof SceneChangeSchema>[];
  [detail: string]: unknown;
}

/**
 * The revision new scenes are stored as: the task's own from an earlier run, else a new one
 * claimed from the history. Call it once the scenes are written, so a failed attempt claims none.
 */
export async function nextRevision(
  context: StepContext,
  history: VideoHistory,
  latest: { revision: number } | null,
): Promise<number> {
  return context.storedRevision ??
    await history.claimRevision(context.request.video_id, latest?.revision ?? 0);
}

/** The task's result from its recorded step outputs. */
export function buildResult(outputs: StepContext["outputs"], revision: boolean): TaskResult {
  const reframe = (outputs.reframe ?? {}) as Partial<ReframeOutput>;
  const scenes = (outputs.scenes ?? {}) as Partial<ScenesOutput>;
  return {
    scenes: scenes.scenes ?? [],
    image_url: String(reframe.image_url ?? ""),
    reframed: Boolean(reframe.reframed),
    provider: { reframe: String(reframe.provider ?? ""), scenes: String(scenes.provider ?? "") },
    revision,
    video_revision: scenes.video_revision ?? 1,
    ...(scenes.changes ? { changes: scenes.changes } : {}),
  };
}
