import type { Config } from "../config.ts";
import { createFalReframe } from "../providers/fal_reframe.ts";
import { createOpenAIScenes } from "../providers/openai_scenes.ts";
import { UnrecoverableError } from "../errors.ts";
import {
  nextRevision,
  type Pipeline,
  type ReframeOutput,
  type ScenesOutput,
  type VideoHistory,
} from "./pipeline.ts";

/**
 * The production pipeline: fal.ai reframes the product image for vertical video, OpenAI writes
 * the scenes from the reframed image. No silent fallback: a provider failure fails the step.
 */
export function livePipeline(config: Config, history: VideoHistory): Pipeline {
  const reframe = createFalReframe({
    key: config.FAL_KEY ?? "",
    model: config.FAL_REFRAME_MODEL,
    aspectRatio: config.REFRAME_ASPECT_RATIO,
    baseUrl: config.FAL_BASE_URL,
    timeoutMs: config.REFRAME_TIMEOUT_MS,
    pollIntervalMs: config.FAL_POLL_INTERVAL_MS,
  });
  const writer = createOpenAIScenes({
    apiKey: config.OPENAI_API_KEY ?? "",
    model: config.OPENAI_MODEL,
    baseURL: config.OPENAI_BASE_URL,
    sceneCount: config.SCENE_COUNT,
    timeoutMs: config.SCENES_TIMEOUT_MS,
  });
  return [
    {
      name: "reframe",
      async run({ request, signal }) {
        const result = await reframe({ imageUrl: request.image_url, signal });
        const output: ReframeOutput = {
          image_url: result.image_url,
          reframed: true,
          provider: `fal:${result.model}`,
          original_image_url: request.image_url,
          width: result.width,
          height: result.height,
          aspect_ratio: result.aspect_ratio,
          fal_request_id: result.request_id,
        };
        return output;
      },
    },
    {
      name: "scenes",
      async run(context) {
        const { request, outputs, signal } = context;
        const imageUrl = String(outputs.reframe?.image_url ?? request.image_url);
        const latest = await history.latest(request.video_id);
        if (!request.is_revision) {
          const written = await writer.generate({ prompt: request.prompt, imageUrl, signal });
          const output: ScenesOutput = {
            scenes: written.scenes,
            provider: `openai:${written.model}`,
            video_revision: await nextRevision(context, history, latest),
            usage: written.usage,
          };
          return output;
        }
        if (!latest?.scenes.length) {
          throw new UnrecoverableError(`Video "${request.video_id}" has no scenes to revise`);
        }
        const revised = await writer.revise({
          prompt: request.prompt,
          imageUrl,
          previous: latest.scenes,
          signal,
        });
        const output: ScenesOutput = {
          scenes: revised.scenes,
          provider: `openai:${revised.model}`,
          video_revision: await nextRevision(context, history, latest),
          changes: revised.changes,
          usage: revised.usage,
        };
        return output;
      },
    },
  ];
}
