import type { Scene, StoredEvent } from "../events.ts";

export interface VideoView {
  video_id: string;
  /** 1 for the first completed task of the video, then one more for each completed revision. */
  revision: number;
  task_id: string;
  scenes: Scene[];
  image_url: string;
  reframed: boolean;
  provider: { reframe: string; scenes: string };
  updated_at: string;
}

/** Folds one event into a video's latest scenes. Only completed tasks change it. */
export function evolveVideoView(view: VideoView | null, event: StoredEvent): VideoView | null {
  if (event.type !== "task.completed") return view;
  const { result, video_id } = event.data;
  return {
    video_id,
    revision: (view?.revision ?? 0) + 1,
    task_id: event.task_id,
    scenes: result.scenes,
    image_url: result.image_url,
    reframed: result.reframed,
    provider: result.provider,
    updated_at: event.at,
  };
}
