import type { Scene, StepName } from "../events.ts";
import type { VideoRequest } from "../webhook.ts";

/** What a step sees: the request, the outputs of the steps before it, and a cancel signal. */
export interface StepContext {
  taskId: string;
  request: VideoRequest;
  attempt: number;
  outputs: Partial<Record<StepName, Record<string, unknown>>>;
  signal: AbortSignal;
}

/**
 * One named stage of the video pipeline. Its output is recorded in the step.completed event, so a
 * redelivered task resumes after the last completed step instead of repeating it.
 */
export interface Step {
  name: StepName;
  run(context: StepContext): Promise<Record<string, unknown>>;
}

export type Pipeline = readonly Step[];

export interface ReframeOutput {
  image_url: string;
  reframed: boolean;
  provider: string;
}

export interface ScenesOutput {
  scenes: Scene[];
  provider: string;
}
