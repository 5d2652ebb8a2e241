import type { Config } from "../config.ts";
import type { Scene } from "../pipeline/scene.ts";
import type { Reframer } from "../pipeline/steps/reframe.ts";
import type { SceneWriter } from "../pipeline/steps/scenes.ts";
import { sleep } from "../sleep.ts";

const SHOTS = ["close-up", "medium shot", "tracking shot", "wide shot", "hero shot"];
const SOUNDS = [
  "soft ambient room tone",
  "subtle whoosh transition",
  "footsteps and light foley",
  "gentle wind and distant city",
  "clean product chime",
];
const MUSIC = [
  "calm intro, sparse piano",
  "beat enters, building energy",
  "full groove, driving rhythm",
  "lift and swell",
  "resolve on the final chord",
];
const NUMBER_WORDS: Record<string, number> = {
  one: 1,
  two: 2,
  three: 3,
  four: 4,
  five: 5,
  six: 6,
  seven: 7,
  eight: 8,
  nine: 9,
  ten: 10,
};

/** "Scene 2: A runner laces up. Voiceover: "Ready."" lines, in the prompt's order. */
function sceneLines(prompt: string): { description: string; voiceover?: string }[] {
  const lines = [...prompt.matchAll(/^\s*Scene\s+\d+\s*[:.\-–]\s*(.+)$/gim)].map((m) => m[1]);
  return lines.map((line) => {
    const [description, rest] = line.split(/\bVoice-?over\s*:\s*/i);
    const voiceover = rest?.trim().replace(/^["“']|["”']$/g, "");
    return { description: description.trim().replace(/[.\s]+$/, ""), voiceover };
  });
}

function requestedCount(prompt: string, fallback: number): number {
  const match = prompt.match(
    /\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten)\s+scenes\b/i,
  );
  if (!match) return fallback;
  const n = NUMBER_WORDS[match[1].toLowerCase()] ?? Number(match[1]);
  return Math.min(20, Math.max(1, n));
}

/** Splits the prompt's sentences into `count` roughly equal parts, repeating when too few. */
function promptParts(prompt: string, count: number): string[] {
  const sentences = prompt.split(/(?<=[.!?])\s+/).map((s) => s.trim()).filter(Boolean);
  const parts: string[] = [];
  for (let i = 0; i < count; i++) {
    const from = Math.floor((i * sentences.length) / count);
    const to = Math.max(from + 1, Math.floor(((i + 1) * sentences.length) / count));
    parts.push(sentences.slice(from, to).join(" ") || sentences[i % sentences.length]);
  }
  return parts;
}

/**
 * Deterministic scenes from the prompt: its "Scene N:" lines and voiceovers when present,
 * otherwise the prompt split into `sceneCount` parts (or the count the prompt asks for).
 */
export function offlineScenes(prompt: string, sceneCount: number): Scene[] {
  const explicit = sceneLines(prompt);
  const totalSeconds = Number(prompt.match(/\b(\d{1,3})[- ]second/i)?.[1] ?? 0);
  const quoted = [...prompt.matchAll(/["“]([^"”]{3,})["”]/g)].map((m) => m[1]);
  const beats = explicit.length > 0
    ? explicit
    : promptParts(prompt, requestedCount(prompt, sceneCount)).map((description, i) => ({
      description,
      voiceover: quoted[i],
    }));
  const each = totalSeconds > 0 ? Math.max(1, Math.round(totalSeconds / beats.length)) : 6;
  return beats.map((beat, i) => ({
    scene_number: i + 1,
    visual_description: beat.description,
    voiceover: beat.voiceover ?? beat.description.split(/[,.;]/)[0],
    shot_type: SHOTS[i % SHOTS.length],
    sound_effects: SOUNDS[i % SOUNDS.length],
    music_direction: MUSIC[Math.min(i, MUSIC.length - 1)],
    duration_seconds: each,
  }));
}

/**
 * A deterministic revision: scenes the prompt names ("scene 3") are revised with the prompt's
 * wording; a prompt naming no scene revises them all. Earlier scenes are never modified in place.
 */
export function offlineRevision(previous: Scene[], prompt: string) {
  const named = new Set(
    [...prompt.matchAll(/\bscenes?\s+(\d{1,2})/gi)].map((m) => Number(m[1])),
  );
  const changed: number[] = [];
  const scenes = previous.map((scene) => {
    if (named.size > 0 && !named.has(scene.scene_number)) return scene;
    changed.push(scene.scene_number);
    return { ...scene, visual_description: `${scene.visual_description} (revised: ${prompt})` };
  });
  return { scenes, changed };
}

const delay = (ms: number, signal: AbortSignal) => ms > 0 ? sleep(ms, signal) : Promise.resolve();

/** Offline reframing: the image is kept as it is (`reframed: false`), after OFFLINE_LATENCY_MS. */
export function offlineReframer(config: Pick<Config, "OFFLINE_LATENCY_MS">): Reframer {
  return {
    async reframe({ imageUrl, signal }) {
      await delay(config.OFFLINE_LATENCY_MS, signal);
      return { image_url: imageUrl, reframed: false, provider: "offline" };
    },
  };
}

/** Offline scenes: derived from the prompt without a model, after OFFLINE_LATENCY_MS. */
export function offlineSceneWriter(
  config: Pick<Config, "OFFLINE_LATENCY_MS" | "SCENE_COUNT">,
): SceneWriter {
  return {
    async generate({ prompt, signal }) {
      await delay(config.OFFLINE_LATENCY_MS, signal);
      return { scenes: offlineScenes(prompt, config.SCENE_COUNT), provider: "offline" };
    },
    async revise({ prompt, previous, signal }) {
      await delay(config.OFFLINE_LATENCY_MS, signal);
      const revision = offlineRevision(previous, prompt);
      return {
        scenes: revision.scenes,
        provider: "offline",
        changes: previous.map((scene) => ({
          scene_number: scene.scene_number,
          changed: revision.changed.includes(scene.scene_number),
          summary: revision.changed.includes(scene.scene_number) ? "Revised as asked" : "Unchanged",
        })),
      };
    },
  };
}
