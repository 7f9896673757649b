/** Losses against scalar references; tf.addN (with our webgpu AddN) against a hand sum. */
import * as tf from "@tensorflow/tfjs";
import { assertAlmostEquals, assertEquals } from "@std/assert";
import * as Loss from "../lib/Loss.ts";
import type * as Nn from "../lib/Nn.ts";
import * as Rng from "../lib/Rng.ts";
import { values } from "./_setup.ts";

Deno.test("mismatch equals Σ_i ‖X_i − q(X_i)‖_F computed in float64", async () => {
  const shapes = [[2, 3, 3, 4], [1, 5, 2, 3], [7]];
  let ref = 0;
  const taps: Nn.Tap[] = shapes.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = Rng.normal(10 + i, n);
    const q = Float32Array.from(x, (v) => Math.round(v * 2) / 2);
    let s = 0;
    for (let k = 0; k < n; k++) s += (x[k] - q[k]) ** 2;
    ref += Math.sqrt(s + Loss.NORM_EPSILON);
    return { path: `l${i}`, x: tf.tensor(x, shape), q: tf.tensor(q, shape) };
  });
  const m = Loss.mismatch(taps);
  assertAlmostEquals((await values(m))[0], ref, 1e-4);
  // detach: ∂M/∂X = e/‖e‖ and nothing reaches q.
  const [gx, gq] = tf.grads((x: tf.Tensor, q: tf.Tensor) => Loss.mismatch([{ path: "a", x, q }]))([
    taps[0].x,
    taps[0].q,
  ]);
  const e = await values(tf.sub(taps[0].x, taps[0].q));
  const norm = Math.sqrt(e.reduce((a, v) => a + v * v, 0));
  const g = await values(gx);
  e.forEach((v, k) => assertAlmostEquals(g[k], v / norm, 1e-5));
  assertEquals((await values(gq)).every((v) => v === 0), true);
  tf.dispose([m, gx, gq, ...taps.flatMap((t) => [t.x, t.q])]);
});

Deno.test("l1 is the mean absolute error", async () => {
  const l = Loss.l1(tf.tensor1d([1, 2, 3, 4]), tf.tensor1d([2, 2, 1, 8]));
  assertEquals((await values(l))[0], (1 + 0 + 2 + 4) / 4);
  l.dispose();
});

// tfjs-webgpu's own AddN binds one storage buffer per input and silently drops inputs past the
// adapter's maxStorageBuffersPerShaderStage − 1 (15 on GL llvmpipe, 31 on lavapipe).
Deno.test("tf.addN sums any number of tensors exactly, past the adapter's storage-buffer limit", async () => {
  for (const n of [1, 2, 15, 16, 17, 31, 32, 33, 40, 100, 333]) {
    const xs = Array.from({ length: n }, (_, i) => tf.scalar(i + 1));
    const s = tf.addN(xs);
    assertEquals((await values(s))[0], (n * (n + 1)) / 2, `n = ${n}`);
    tf.dispose([s, ...xs]);
  }
});
