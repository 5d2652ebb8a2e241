import { z } from "zod";
import type { StoredEvent } from "../../events.ts";
import { SceneChangeSchema, SceneSchema } from "../../pipeline/scene.ts";

/** A video's latest scenes, as stored and as GET /videos/{video_id}/scenes returns them. */
export const VideoScenesSchema = z.object({
  video_id: z.string(),
  revision: z.number().int(),
  task_id: z.string(),
  scenes: z.array(SceneSchema),
  image_url: z.string(),
  reframed: z.boolean(),
  provider: z.object({ reframe: z.string(), scenes: z.string() }),
  changes: z.array(SceneChangeSchema).optional(),
  updated_at: z.string(),
});
/** `revision`: 1 for the video's first scenes, then one more for each new version. */
export type VideoView = z.infer<typeof VideoScenesSchema>;

/** A video's view key under a generation's view prefix: `{vp}:view:video:<id>` in generation 0. */
export const videoViewKey = (prefix: string, videoId: string) => `${prefix}:video:${videoId}`;

/** Folds one event into a video's latest scenes. Only completed tasks change it. */
export function evolveVideoView(view: VideoView | null, event: StoredEvent): VideoView | null {
  if (event.type !== "task.completed") return view;
  // Completions can be applied out of revision order only by a replay of a reprocessed task:
  // the latest revision wins.
  if (view && view.revision > event.data.result.video_revision) return view;
  const { result, video_id } = event.data;
  return {
    video_id,
    revision: result.video_revision,
    task_id: event.task_id,
    scenes: result.scenes,
    image_url: result.image_url,
    reframed: result.reframed,
    provider: result.provider,
    ...(result.changes ? { changes: result.changes } : {}),
    updated_at: event.at,
  };
}
