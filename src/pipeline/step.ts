import type { Config } from "../config.ts";
import { timedCall } from "../metrics/providers.ts";
import type { Metrics } from "../metrics/registry.ts";
import type { VideoRequest } from "../webhook.ts";
import type { Scene } from "./scene.ts";

/** Which set of providers runs: live (fal.ai, OpenAI) or offline (deterministic, no network). */
export type ProviderMode = "live" | "offline";

/** What a step sees: the request, the outputs of the steps before it, and a cancel signal. */
export interface StepContext {
  taskId: string;
  request: VideoRequest;
  attempt: number;
  outputs: Partial<Record<string, Record<string, unknown>>>;
  signal: AbortSignal;
  /** Set when an earlier run of this task generated scenes: a reprocess stores over them. */
  storedRevision?: number;
}

/** Where the latest stored scenes of a video are read from (Supabase, or the Redis view). */
export interface VideoHistory {
  latest(videoId: string): Promise<{ revision: number; scenes: Scene[] } | null>;
  /**
   * A revision number no other task of the video has: above `latest` and any handed out; the
   * same one again for the same task.
   */
  claimRevision(videoId: string, latest: number, taskId: string): Promise<number>;
}

/** What steps may use besides their provider: the service's own stores. */
export interface Ports {
  videos: VideoHistory;
  /** Not for steps: bindSteps counts and times each provider call with it. */
  metrics?: Metrics;
}

/**
 * One named stage of the generation pipeline, written once against its provider's interface.
 * Live and offline mode only choose the provider (`providers`). Its output is recorded in the
 * step.completed event, so a redelivered task resumes after the last completed step instead of
 * repeating it; a retry of the step itself is the runtime's business, not the step's.
 */
export interface StepDefinition<Name extends string, Provider> {
  name: Name;
  providers: Record<ProviderMode, (config: Config) => Provider>;
  run(context: StepContext, provider: Provider, ports: Ports): Promise<Record<string, unknown>>;
}

/** Declares a step; the identity function keeps its name's literal type for the step list. */
export function defineStep<Name extends string, Provider>(
  definition: StepDefinition<Name, Provider>,
): StepDefinition<Name, Provider> {
  return definition;
}

/** A step with its provider chosen: what the task worker runs. */
export interface Step<Name extends string = string> {
  name: Name;
  run(context: StepContext): Promise<Record<string, unknown>>;
}

/** The live provider of each step, as provider_calls_total names it (offline: "offline"). */
const LIVE_PROVIDERS: Record<string, string> = { reframe: "fal", scenes: "openai" };

/**
 * Binds each step to the provider of `mode`, built once from the config. Each run is one provider
 * call as the metrics count it (provider_calls_total, provider_call_duration_seconds), labelled
 * with the step's provider.
 */
export function bindSteps<Name extends string>(
  definitions: readonly StepDefinition<Name, unknown>[],
  config: Config,
  mode: ProviderMode,
  ports: Ports,
): Step<Name>[] {
  return definitions.map((definition) => {
    const provider = definition.providers[mode](config);
    const label = mode === "offline"
      ? "offline"
      : LIVE_PROVIDERS[definition.name] ?? definition.name;
    return {
      name: definition.name,
      run: (context) =>
        timedCall(
          ports.metrics,
          label,
          () => definition.run(context, provider, ports),
          context.signal,
        ),
    };
  });
}
