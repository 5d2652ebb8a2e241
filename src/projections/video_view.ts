import type { Scene, StoredEvent } from "../events.ts";

export interface VideoView {
  video_id: string;
  /** The stored revision: 1 for the video's first scenes, then one more for each new version. */
  revision: number;
  task_id: string;
  scenes: Scene[];
  image_url: string;
  reframed: boolean;
  provider: { reframe: string; scenes: string };
  changes?: { scene_number: number; changed: boolean; summary: string }[];
  updated_at: string;
}

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
