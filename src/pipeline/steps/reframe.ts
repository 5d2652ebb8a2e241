import { falReframer } from "../../providers/fal_reframe.ts";
import { offlineReframer } from "../../providers/offline.ts";
import { defineStep } from "../step.ts";

/** The reframe step's output, recorded in its step.completed event. */
export interface ReframeOutput {
  image_url: string;
  reframed: boolean;
  /** "fal:<model>" or "offline". */
  provider: string;
  [detail: string]: unknown;
}

/** Turns a product image into one framed for vertical video. */
export interface Reframer {
  reframe(input: { imageUrl: string; signal: AbortSignal }): Promise<ReframeOutput>;
}

/** Reframes the request's product image (fal.ai live; offline keeps the image as it is). */
export const reframeStep = defineStep({
  name: "reframe",
  providers: { live: falReframer, offline: offlineReframer },
  run: ({ request, signal }, reframer: Reframer) =>
    reframer.reframe({ imageUrl: request.image_url, signal }),
});
