/**
 * Baseline quantizers against float64 scalar references (PAMS's zero-level quantizer, DAQ's
 * per-image channel normalisation), the zero-level STE gradients against finite differences,
 * DAQ's statistics recomputed per image, and the recipe/cost wiring.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertAlmostEquals, assertEquals, assertGreater } from "@std/assert";
import * as Baselines from "../lib/Baselines.ts";
import * as Cost from "../lib/Cost.ts";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Edsr from "../models/edsr.ts";
import { roundHalfEven, scalar, values } from "./_setup.ts";

/** PAMS's quantizer in float64: zero is a level, n = 2^(b−1) − 1 positive levels. */
function zeroRef(x: number, a: number, bits: number): number {
  const n = 2 ** (bits - 1) - 1;
  const c = Math.min(Math.max(x, -a), a);
  return roundHalfEven((c * n) / a) * (a / n);
}

/** The STE surrogate: the rounding residual frozen at its value at the base point. */
function zeroFrozen(x: number, a: number, bits: number, r: number): number {
  const n = 2 ** (bits - 1) - 1;
  const c = Math.min(Math.max(x, -a), a);
  return ((c * n) / a + r) * (a / n);
}

const xs = [-2.1, -1.3, -0.71, -0.4, -0.05, 0, 0.02, 0.33, 0.6, 0.93, 1.27, 1.9];

Deno.test("zeroLevelQuant equals the scalar reference; zero is a level; 2-bit has 3 levels", async () => {
  for (const bits of [2, 3, 4, 8]) {
    const a = 1.3;
    const got = await values(Baselines.zeroLevelQuant(tf.tensor1d(xs), tf.scalar(a), bits));
    xs.forEach((x, i) => assertAlmostEquals(got[i], zeroRef(x, a, bits), 1e-5, `b${bits} x=${x}`));
  }
  const two = await values(Baselines.zeroLevelQuant(tf.tensor1d(xs), tf.scalar(1), 2));
  assertEquals([...new Set(two.map((v) => Math.round(v * 1e6) / 1e6))].sort(), [-1, 0, 1]);
});

Deno.test("zeroLevelQuant gradients (x and α) match finite differences of the STE surrogate", async () => {
  const bits = 3;
  const a = 1.1;
  // Points away from rounding boundaries and from ±α.
  const pts = [-1.7, -0.9, -0.5, -0.03, 0.2, 0.52, 0.83, 1.6];
  const w = pts.map((_, i) => 0.3 + 0.1 * i);
  const n = 2 ** (bits - 1) - 1;
  const res = pts.map((x) => {
    const c = Math.min(Math.max(x, -a), a);
    return roundHalfEven((c * n) / a) - (c * n) / a;
  });
  const f = (xv: number[], av: number) =>
    xv.reduce((s, x, i) => s + w[i] * zeroFrozen(x, av, bits, res[i]), 0);
  const g = tf.grads((x: tf.Tensor, al: tf.Tensor) =>
    tf.sum(tf.mul(Baselines.zeroLevelQuant(x, al as tf.Scalar, bits), tf.tensor1d(w)))
  )([tf.tensor1d(pts), tf.scalar(a)]);
  const h = 1e-5;
  const da = (f(pts, a + h) - f(pts, a - h)) / (2 * h);
  assertAlmostEquals(await scalar(g[1]), da, 1e-3);
  const dx = await values(g[0]);
  for (let i = 0; i < pts.length; i++) {
    const up = pts.map((x, j) => (j === i ? x + h : x));
    const dn = pts.map((x, j) => (j === i ? x - h : x));
    assertAlmostEquals(dx[i], (f(up, a) - f(dn, a)) / (2 * h), 1e-3, `dx[${i}]`);
  }
});

Deno.test("PAMS: α initialised to max|x|, weights use max|W| and learn nothing", async () => {
  const x = tf.tensor1d([-3, 0.5, 2]);
  const p = Baselines.pamsActivation(4).init(x);
  assertEquals(await scalar(p.alpha), 3);
  const wq = Baselines.pamsWeight(2);
  assertEquals(Object.keys(wq.defaults()), []);
  const w = tf.tensor1d([-0.9, -0.2, 0.1, 0.5, 1.2]);
  assertEquals(
    (await values(wq.apply({}, w))).map((v) => v + 0),
    [-1.2, 0, 0, 0, 1.2].map((v) => Math.fround(v)),
  );
});

/** DAQ in float64 on one image (H·W values per channel, NHWC with N = 1). */
function daqRef(img: number[][][], bits: number): number[][][] {
  const h = img.length, w = img[0].length, c = img[0][0].length;
  const step = Baselines.DAQ_STEPS[bits];
  const half = ((2 ** bits - 1) * step) / 2;
  const out = img.map((row) => row.map((px) => px.slice()));
  for (let k = 0; k < c; k++) {
    const v = img.flatMap((row) => row.map((px) => px[k]));
    const mu = v.reduce((s, t) => s + t, 0) / v.length;
    const sd = Math.sqrt(v.reduce((s, t) => s + (t - mu) ** 2, 0) / v.length + 1e-6);
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        const z = Math.min(Math.max((img[i][j][k] - mu) / sd, -half), half);
        const q = roundHalfEven((z + half) / step) * step - half;
        out[i][j][k] = q * sd + mu;
      }
    }
  }
  return out;
}

const imgA = [[[0.1, 5], [0.7, -2]], [[1.9, 3.3], [0.4, 8]], [[-0.6, 1], [2.2, 0.5]]]; // 3×2×2
const imgB = [[[10, -1], [13, -0.2]], [[7.5, -3], [9, -0.7]], [[21, 0.4], [11, 0.1]]];

Deno.test("DAQ equals the scalar reference and recomputes its statistics per image", async () => {
  for (const bits of [2, 4]) {
    const q = Baselines.daq(bits);
    // Through a wrapped layer in eval mode, as at evaluation time: a 1×1 conv with identity
    // weights, full-precision weights, DAQ on its input.
    const layer = Quant.wrap({ input: q })(Nn.conv2d({ in: 2, out: 2, kernel: 1 }));
    const params = { weight: tf.tensor4d([1, 0, 0, 1], [1, 1, 2, 2]), bias: tf.zeros([2]) };
    const run = (imgs: number[][][][]) =>
      values(layer.apply(params, tf.tensor4d(imgs), Nn.context("eval")));
    const both = await run([imgA, imgB]);
    const a = await run([imgA]);
    const b = await run([imgB]);
    const refA = daqRef(imgA, bits).flat(2);
    const refB = daqRef(imgB, bits).flat(2);
    both.slice(0, 12).forEach((v, i) => assertAlmostEquals(v, refA[i], 1e-4, `A[${i}]`));
    both.slice(12).forEach((v, i) => assertAlmostEquals(v, refB[i], 1e-4, `B[${i}]`));
    assertEquals(a, both.slice(0, 12));
    assertEquals(b, both.slice(12));
    // Statistics pooled over the batch would give a different result for the second image.
    const pooled = daqRef([...imgA, ...imgB], bits).flat(2).slice(12);
    assertGreater(Math.max(...pooled.map((v, i) => Math.abs(v - refB[i]))), 1e-2);
  }
});

Deno.test("DAQ: no parameters, gradients reach the input", async () => {
  const q = Baselines.daq(3);
  assertEquals(Object.keys(q.defaults()), []);
  const g = tf.grad((x: tf.Tensor) => tf.sum(tf.mul(q.apply({}, x), x)))(
    tf.tensor4d([imgA]),
  );
  const v = await values(g);
  assert(v.every(Number.isFinite) && v.some((t) => t !== 0));
});

Deno.test("recipes build the baselines; Cost charges DAQ's statistics and PAMS's α", () => {
  const base = {
    name: "t",
    model: { arch: "edsr" as const, scale: 2 as const, options: { numFeat: 4, numBlock: 1 } },
    train: { steps: 1 },
  };
  const make = (v: Baselines.Variation) =>
    Recipe.parse({
      ...base,
      quant: { wbits: 4, abits: 4, ...v.quant },
      regularizer: v.regularizer,
    });
  const cost = (r: Recipe.Recipe) => {
    const q = Recipe.quantizers(r)!;
    const m = Quant.quantize(Edsr.edsr({ numFeat: 4, numBlock: 1, upscale: 2 }), Edsr.placement(q));
    return { q, c: Cost.of(m, { outputHeight: 16, outputWidth: 16, scale: 2 }) };
  };
  const odm = cost(make(Baselines.methods.odm));
  const pams = cost(make(Baselines.methods.pams));
  const daq = cost(make(Baselines.methods.daq));
  const lsq = cost(make(Baselines.methods.lsq));
  assert(pams.q.weight.name.startsWith("zero4"), pams.q.weight.name);
  assert(pams.q.input.name.startsWith("zero4·pamsAlpha"), pams.q.input.name);
  assert(daq.q.input.name === "daq4", daq.q.input.name);
  assert(lsq.q.weight.name.includes("learnable"), lsq.q.weight.name);
  // Two quantized convs: ODM stores γ + l + u each, PAMS α only, DAQ nothing.
  assertAlmostEquals((odm.c.storageK - daq.c.storageK) * 1000, 6, 1e-9);
  assertAlmostEquals((pams.c.storageK - daq.c.storageK) * 1000, 2, 1e-9);
  // DAQ: 8 FLOPs per input value + 2 per channel, on two 8×8×4 inputs, at 32·32 bits.
  const extra = 2 * (8 * 8 * 8 * 4 + 2 * 4);
  assertEquals(daq.c.flops - odm.c.flops, extra);
  assertEquals(daq.c.bitops - odm.c.bitops, extra * 32 * 32);
});
