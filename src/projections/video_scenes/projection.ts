import type { RedisClient } from "../../redis/client.ts";
import { z } from "zod";
import { ProblemError } from "../../errors.ts";
import type { Keys } from "../../keys.ts";
import { currentViews } from "../../queries.ts";
import { defineProjection, planJsonDocuments } from "../definition.ts";
import { evolveVideoView, VideoScenesSchema, type VideoView, videoViewKey } from "./view.ts";

/** A video's latest scenes as projected, or null before any task of it completed. */
export async function readVideoView(
  redis: RedisClient,
  keys: Keys,
  videoId: string,
): Promise<VideoView | null> {
  const raw = await redis.get(videoViewKey((await currentViews(redis, keys)).prefix, videoId));
  return raw ? JSON.parse(raw) as VideoView : null;
}

/** The latest scenes per video, one JSON document per video. */
export const videoScenes = defineProjection({
  name: "video-scenes",
  handles: ["task.completed"],
  initialState: (): VideoView | null => null,
  evolve: evolveVideoView,
  ownedKeys: (prefix) => [videoViewKey(prefix, "*")],
  plan(context, events) {
    return planJsonDocuments(context, events, {
      keyOf: (e) =>
        e.type === "task.completed" ? videoViewKey(context.prefix, e.data.video_id) : null,
      evolve: evolveVideoView,
    });
  },
  route: {
    path: "/videos/{video_id}/scenes",
    summary: "The latest scenes of a video",
    params: z.object({ video_id: z.string() }),
    response: { schema: VideoScenesSchema, description: "The latest revision's scenes" },
    problems: { 404: "No completed task for this video" },
    async handle({ redis, partitions }, { video_id }) {
      const view = await readVideoView(redis, partitions.ofVideo(video_id).keys, video_id);
      if (view) return view;
      throw new ProblemError(404, "Video not found", `No scenes for video "${video_id}"`);
    },
  },
});
