/** Range policies: the quantile against a sorted float64 reference, and each policy's bounds. */
import * as tf from "@tensorflow/tfjs";
import { assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import * as Range from "../lib/Range.ts";
import * as Rng from "../lib/Rng.ts";
import { values } from "./_setup.ts";

/** numpy's default (linear) quantile on a float64 copy. */
function refQuantile(xs: ArrayLike<number>, p: number): number {
  const s = Array.from(xs).sort((a, b) => a - b);
  const pos = p * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

Deno.test("quantile equals numpy's linear interpolation", async () => {
  const xs = Rng.normal(3, 1001, 0.2, 2);
  for (const p of [0, 0.01, 0.25, 0.5, 0.63, 0.99, 0.999, 1]) {
    const q = Range.quantile(tf.tensor1d(xs), p);
    assertAlmostEquals((await q.data())[0], refQuantile(Float32Array.from(xs), p), 1e-5, `p=${p}`);
    q.dispose();
  }
  // A hand computation: [1, 2, 3, 4], p = 0.5 → pos 1.5 → 2.5.
  const h = Range.quantile(tf.tensor1d([4, 1, 3, 2]), 0.5);
  assertEquals((await h.data())[0], 2.5);
  h.dispose();
  assertThrows(() => Range.quantile(tf.tensor1d([1]), 1.5), RangeError);
});

Deno.test("max, percentile and learnable bounds", async () => {
  const xs = Float32Array.from(Rng.normal(5, 500, 0.3, 1));
  const x = tf.tensor1d(xs);
  const absMax = Math.max(...Array.from(xs, Math.abs));
  const check = async (b: Range.Bounds, l: number, u: number, what: string) => {
    const [gl, gu] = await values(tf.stack([b.lower, b.upper]));
    assertAlmostEquals(gl, l, 1e-5, `${what} lower`);
    assertAlmostEquals(gu, u, 1e-5, `${what} upper`);
  };
  await check(Range.max.bounds({}, x, true), -absMax, absMax, "max sym");
  await check(Range.max.bounds({}, x, false), Math.min(...xs), Math.max(...xs), "max asym");
  const p = Range.percentile(0.99);
  const abs = Array.from(xs, Math.abs);
  await check(p.bounds({}, x, true), -refQuantile(abs, 0.99), refQuantile(abs, 0.99), "pct sym");
  await check(p.bounds({}, x, false), refQuantile(xs, 0.01), refQuantile(xs, 0.99), "pct asym");
  const learn = Range.learnable(Range.percentile(0.99));
  const init = learn.init(x, false);
  await check(
    learn.bounds(init, x, false),
    refQuantile(xs, 0.01),
    refQuantile(xs, 0.99),
    "learnable init",
  );
  assertThrows(() => Range.percentile(0.3), RangeError);
  tf.dispose([x]);
});

Deno.test("clipCorrected recomputes the percentile from the current weights on every call", async () => {
  const cc = Range.clipCorrected(0.99);
  const params = { gamma: tf.scalar(1.5) };
  for (const key of [1, 2]) {
    const ws = Float32Array.from(Rng.normal(key, 400, 0, 0.1 * key));
    const u = tf.tidy(() => cc.bounds(params, tf.tensor1d(ws), true).upper);
    assertAlmostEquals(
      (await u.data())[0],
      1.5 * refQuantile(Array.from(ws, Math.abs), 0.99),
      1e-6,
    );
    u.dispose();
  }
  params.gamma.dispose();
});
