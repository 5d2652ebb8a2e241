import { UnrecoverableError } from "../../errors.ts";
import { offlineSceneWriter } from "../../providers/offline.ts";
import { openAISceneWriter } from "../../providers/openai_scenes.ts";
import type { Scene, SceneChange } from "../scene.ts";
import { defineStep } from "../step.ts";

/** The scenes step's output, recorded in its step.completed event. */
export interface ScenesOutput {
  scenes: Scene[];
  /** "openai:<model>" or "offline". */
  provider: string;
  /** The video revision these scenes will be stored as, fixed when they are generated. */
  video_revision: number;
  changes?: SceneChange[];
  [detail: string]: unknown;
}

/** What a scene writer returns: the scenes, who wrote them, and any usage to record. */
export interface Written {
  scenes: Scene[];
  provider: string;
  usage?: unknown;
}

/** Writes a video's scenes from a prompt and its product image, or revises earlier ones. */
export interface SceneWriter {
  generate(input: { prompt: string; imageUrl: string; signal: AbortSignal }): Promise<Written>;
  revise(
    input: { prompt: string; imageUrl: string; previous: Scene[]; signal: AbortSignal },
  ): Promise<Written & { changes: SceneChange[] }>;
}

/**
 * Writes the scenes (OpenAI live; offline derives them from the prompt), or for a revision
 * rewrites the video's latest stored ones. The video revision is claimed only once the scenes are
 * written, so a failed attempt claims none; a reprocess reuses the task's own.
 */
export const scenesStep = defineStep({
  name: "scenes",
  providers: { live: openAISceneWriter, offline: offlineSceneWriter },
  async run(context, writer: SceneWriter, { videos }) {
    const { request, outputs, signal } = context;
    const imageUrl = String(outputs.reframe?.image_url ?? request.image_url);
    const latest = await videos.latest(request.video_id);
    let written: Written & { changes?: SceneChange[] };
    if (!request.is_revision) {
      written = await writer.generate({ prompt: request.prompt, imageUrl, signal });
    } else if (latest?.scenes.length) {
      written = await writer.revise({
        prompt: request.prompt,
        imageUrl,
        previous: latest.scenes,
        signal,
      });
    } else {
      throw new UnrecoverableError(`Video "${request.video_id}" has no scenes to revise`);
    }
    const output: ScenesOutput = {
      scenes: written.scenes,
      provider: written.provider,
      video_revision: context.storedRevision ??
        await videos.claimRevision(request.video_id, latest?.revision ?? 0, context.taskId),
      ...(written.changes ? { changes: written.changes } : {}),
      ...(written.usage !== undefined ? { usage: written.usage } : {}),
    };
    return output;
  },
});
