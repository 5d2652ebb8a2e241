import type { Config } from "../config.ts";
import type { TaskResult } from "./scene.ts";
import { bindSteps, type Ports, type ProviderMode, type Step, type StepContext } from "./step.ts";
import { type ReframeOutput, reframeStep } from "./steps/reframe.ts";
import { type ScenesOutput, scenesStep } from "./steps/scenes.ts";

/** The task worker's steps, in the order they run. Adding a step: its definition and one line. */
export const PIPELINE_STEPS = [
  reframeStep,
  scenesStep,
] as const;

/** Steps run outside the task worker: `persist` by the scene sink; `notify` is reserved. */
const DOWNSTREAM_STEPS = ["persist", "notify"] as const;

export type PipelineStepName = (typeof PIPELINE_STEPS)[number]["name"];
export type StepName = PipelineStepName | (typeof DOWNSTREAM_STEPS)[number];

/** Every step name an event may carry, from the list above. */
export const STEP_NAMES: [StepName, ...StepName[]] = [
  PIPELINE_STEPS[0].name,
  ...PIPELINE_STEPS.slice(1).map((step) => step.name),
  ...DOWNSTREAM_STEPS,
];

/** The worker's steps, each bound to its provider. */
export type Pipeline = readonly Step<PipelineStepName>[];

/** The worker's steps with the providers of `mode`. */
export function bindPipeline(config: Config, mode: ProviderMode, ports: Ports): Pipeline {
  return bindSteps<PipelineStepName>(PIPELINE_STEPS, config, mode, ports);
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
