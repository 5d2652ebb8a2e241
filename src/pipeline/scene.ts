import { z } from "zod";

/** One scene of a video, as the scene writer produces it and the scene sink stores it. */
export const SceneSchema = z.object({
  scene_number: z.number().int().min(1),
  visual_description: z.string(),
  voiceover: z.string(),
  shot_type: z.string(),
  sound_effects: z.string(),
  music_direction: z.string(),
  duration_seconds: z.number().positive(),
});
export type Scene = z.infer<typeof SceneSchema>;

/** For a revision: whether and how one scene changed. */
export const SceneChangeSchema = z.object({
  scene_number: z.number().int().min(1),
  changed: z.boolean(),
  summary: z.string(),
});
export type SceneChange = z.infer<typeof SceneChangeSchema>;

/** A task's result: the scenes and the image they were written from. */
export const TaskResultSchema = z.object({
  scenes: z.array(SceneSchema),
  image_url: z.string(),
  reframed: z.boolean(),
  provider: z.object({ reframe: z.string(), scenes: z.string() }),
  /** Whether the request asked for a revision. */
  revision: z.boolean(),
  /** The video's revision these scenes are stored as: 1 for the first, then one more each time. */
  video_revision: z.number().int().min(1),
  /** For revisions: per scene, whether and how it changed. */
  changes: z.array(SceneChangeSchema).optional(),
});
export type TaskResult = z.infer<typeof TaskResultSchema>;

/** A stored scene: one row per scene, keyed by (video_id, revision, scene_number). */
export const SceneRowSchema = SceneSchema.extend({
  task_id: z.string().min(1),
  video_id: z.string().min(1),
  user_id: z.string().min(1),
  revision: z.number().int().min(1),
  image_url: z.string().min(1),
});
export type SceneRow = z.infer<typeof SceneRowSchema>;
