/**
 * The QatQuantile kernel: exact numpy-linear quantiles against a float64 sort reference, the cpu
 * twin, a zero gradient, and no leaked tensors.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { KERNEL, quantile, quantileOf, quantiles } from "../lib/internal/quantile.ts";
import { backend } from "./_setup.ts";

const PS = [0, 0.01, 0.5, 0.99, 1];

/** mulberry32 + Box–Muller: reproducible float32 normals. */
function normals(seed: number, n: number): Float32Array {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  }
  return out;
}

/**
 * numpy's default (linear) quantile on a float64 sorted copy, and the largest magnitude of the
 * two values it interpolates (for the float32 rounding tolerance).
 */
function reference(xs: Float32Array, p: number): { value: number; scale: number } {
  const s = Float64Array.from(xs).sort();
  const pos = p * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  const t = pos - lo;
  const [a, b] = [s[lo], s[hi]];
  const value = t === 0 || a === b ? a : t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
  return { value, scale: Math.max(Math.abs(a), Math.abs(b)) };
}

/** Our quantile for every p, read back at once. */
async function ours(x: tf.Tensor, ps: number[]): Promise<number[]> {
  const qs = ps.map((p) => quantile(x, p));
  const stacked = tf.stack(qs);
  const v = Array.from(await stacked.data());
  tf.dispose([stacked, ...qs]);
  return v;
}

/** Checks all of {@link PS} on `xs` (shaped `shape`) against the reference and the cpu twin. */
async function check(xs: Float32Array, what: string, shape: number[] = [xs.length], ps = PS) {
  const x = tf.tensor(xs, shape, "float32");
  const got = await ours(x, ps);
  x.dispose();
  ps.forEach((p, i) => {
    const { value, scale } = reference(xs, p);
    // The result is exact up to the float32 rounding of the interpolation (a few ulps).
    const tol = scale * 2 ** -21;
    assert(
      Math.abs(got[i] - value) <= tol || got[i] === value,
      `${what}, p=${p}: got ${got[i]}, reference ${value}`,
    );
    const twin = quantileOf(xs, p);
    assert(
      Math.abs(got[i] - twin) <= scale * 2 ** -22 || got[i] === twin,
      `${what}, p=${p}: got ${got[i]}, cpu twin ${twin}`,
    );
  });
}

Deno.test("quantile of random normals equals numpy's linear quantile (n = 1 … 36864)", async () => {
  for (const n of [1, 2, 7, 1000, 1001, 36864]) await check(normals(n, n), `normals n=${n}`);
  // |W| as in weight clipping correction, and a 4-D weight shape.
  const w = normals(9, 3 * 3 * 64 * 64);
  await check(w.map(Math.abs), "|normals| 3x3x64x64", [3, 3, 64, 64]);
});

Deno.test("quantile handles duplicates, negatives, ±0 and all-equal input", async () => {
  const r = normals(3, 5000);
  await check(r.map((v) => Math.round(v * 2) - 3), "small integers with duplicates");
  await check(r.map((v) => -Math.abs(v) - 1), "all negative");
  await check(Float32Array.from([0, -0, 0, -0, -0, 0, 0]), "±0");
  await check(Float32Array.from([-0, 1, -1, 0, -0, 2, -2, 0, -0.5]), "±0 among negatives");
  await check(new Float32Array(1000).fill(3.25), "all equal");
  await check(new Float32Array(37).fill(-7.5), "all equal, negative");
  await check(Float32Array.from([-3e38, 3e38, -1e-30, 1e-30, 5]), "extreme magnitudes");
  await check(Float32Array.from([-Infinity, 1, Infinity]), "infinities", [3], [0, 0.5, 1]);
  // A hand computation: [1, 2, 3, 4], p = 0.5 → pos 1.5 → 2.5; p = 1/3 → pos 1 → 2.
  assertEquals(await ours(tf.tensor1d([4, 1, 3, 2]), [0.5, 1 / 3]), [2.5, 2]);
});

Deno.test("the cpu twin kernel gives the same values as the running backend", async () => {
  const cpu = tf.findBackend("cpu");
  const kernel = tf.getKernel(KERNEL, "cpu");
  assert(cpu && kernel, "the cpu backend and its QatQuantile kernel are registered");
  for (const n of [7, 1000, 36864]) {
    const xs = normals(100 + n, n);
    const x = tf.tensor1d(xs);
    const got = await ours(x, PS);
    x.dispose();
    const info = { dataId: cpu.write(xs, [n], "float32"), shape: [n], dtype: "float32" as const };
    for (const [i, p] of PS.entries()) {
      const out = kernel.kernelFunc({ inputs: { x: info }, attrs: { p }, backend: cpu });
      const { dataId } = out as tf.TensorInfo;
      const twin = (cpu.readSync(dataId) as Float32Array)[0];
      cpu.disposeData(dataId);
      const tol = Math.abs(twin) * 2 ** -22;
      assert(
        Math.abs(got[i] - twin) <= tol,
        `n=${n}, p=${p}: ${backend.name} ${got[i]}, cpu ${twin}`,
      );
    }
    cpu.disposeData(info.dataId);
  }
});

Deno.test("quantile has a zero gradient inside tf.grad", async () => {
  const x = tf.tensor2d([[3, -1, 4], [1, -5, 9]]);
  const g = tf.grad((t: tf.Tensor) => quantile(t, 0.5))(x);
  assertEquals(g.shape, [2, 3]);
  assertEquals(Array.from(await g.data()), [0, 0, 0, 0, 0, 0]);
  // Treated as a constant next to other terms: d/dx [q(x) + Σ 2x] = 2.
  const h = tf.grad((t: tf.Tensor) => tf.add(quantile(t, 0.99), tf.sum(tf.mul(t, 2))))(x);
  assertEquals(Array.from(await h.data()), [2, 2, 2, 2, 2, 2]);
  tf.dispose([x, g, h]);
});

Deno.test("quantile and quantiles leak no tensors", async () => {
  const x = tf.tensor1d(normals(5, 36864));
  const y = tf.tensor1d(normals(6, 1001));
  // Warm up (compiles the pipelines, allocates the pools).
  tf.dispose(
    await Promise.all([quantile(x, 0.99), quantile(y, 0.5)].map(async (q) => {
      await q.data();
      return q;
    })),
  );
  const before = tf.memory();
  for (let i = 0; i < 3; i++) {
    const q = quantile(x, 0.99);
    const qs = quantiles([x, y, x], 0.01);
    assertEquals(qs.shape, [3]);
    const [a, b] = [await q.data(), await qs.data()];
    assertEquals(b[0], b[2]);
    assert(a[0] > 2 && a[0] < 3);
    tf.dispose([q, qs]);
  }
  const after = tf.memory();
  assertEquals(after.numTensors, before.numTensors, "tensors");
  assertEquals(after.numDataBuffers, before.numDataBuffers, "data buffers");
  tf.dispose([x, y]);
});

Deno.test("quantile rejects bad p, empty and non-float32 input", () => {
  const x = tf.tensor1d([1, 2, 3]);
  for (const p of [-0.01, 1.01, NaN]) assertThrows(() => quantile(x, p), RangeError);
  const empty = tf.tensor1d([], "float32");
  assertThrows(() => quantile(empty, 0.5), RangeError);
  const ints = tf.tensor1d([1, 2, 3], "int32");
  assertThrows(() => quantile(ints, 0.5), RangeError);
  assertThrows(() => quantiles([], 0.5), RangeError);
  tf.dispose([x, empty, ints]);
});
