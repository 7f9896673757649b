/**
 * Shared test start-up: starts the backend once (printing the `backend: …` line, so the test
 * output says whether the suite ran on WebGPU or on the cpu fallback) and small helpers.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertLess } from "@std/assert";
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

/**
 * Checks `f`'s gradient with respect to each input against central finite differences along
 * random unit directions v: `⟨∇f, v⟩ ≈ (f(x + εv) − f(x − εv)) / 2ε` within `tol · (‖∇f‖ + 1)`,
 * the scale of any directional derivative (float32 rounds f to ~1e-7 · |f|, so ~1e-5 · |f| / ε).
 */
export async function checkGradients(
  f: (...xs: tf.Tensor[]) => tf.Scalar,
  xs: tf.Tensor[],
  opts: { eps?: number; tol?: number; directions?: number; names?: string[] } = {},
): Promise<void> {
  const eps = opts.eps ?? 1e-2, tol = opts.tol ?? 5e-4;
  const grads = tf.grads(f)(xs);
  for (let i = 0; i < xs.length; i++) {
    const norm = await scalar(tf.tidy(() => tf.norm(grads[i])));
    for (let d = 0; d < (opts.directions ?? 3); d++) {
      const v = tf.tidy(() => {
        const r = tf.randomNormal(xs[i].shape, 0, 1, "float32", 100 * i + d + 1);
        return tf.div(r, tf.norm(r));
      });
      const at = (sign: number) =>
        tf.tidy(() => f(...xs.map((x, j) => (j === i ? tf.add(x, tf.mul(v, sign * eps)) : x))));
      const [plus, minus, dir] = [at(1), at(-1), tf.sum(tf.mul(grads[i], v))];
      const fd = ((await scalar(plus)) - (await scalar(minus))) / (2 * eps);
      const an = await scalar(dir);
      const name = opts.names?.[i] ?? String(i);
      assert(Number.isFinite(an), `${name}: gradient not finite`);
      assertLess(
        Math.abs(an - fd),
        tol * (norm + 1),
        `${name}, direction ${d}: analytic ${an} vs finite difference ${fd} (‖∇‖ ${norm})`,
      );
      tf.dispose([v, plus, minus, dir]);
    }
  }
  tf.dispose(grads);
}
