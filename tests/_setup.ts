/**
 * Shared test start-up: starts the backend once (printing the `backend: …` line, so the test
 * output says whether the suite ran on WebGPU or on the cpu fallback) and small helpers.
 */
import * as tf from "@tensorflow/tfjs";
import * as Backend from "../lib/Backend.ts";

/** The backend the suite runs on. */
export const backend: Backend.Info = await Backend.initialize();

/** Reads a tensor back as a plain number array (WebGPU under Deno has no dataSync). */
export async function values(t: tf.Tensor): Promise<number[]> {
  return Array.from(await t.data());
}

/** Reads a scalar tensor back. */
export async function scalar(t: tf.Tensor): Promise<number> {
  return (await t.data())[0];
}

/** Round half to even on float64, the reference for `tf.round`. */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Max relative difference `|a − b| / max(1, |b|)` over two arrays. */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
  }
  return m;
}
