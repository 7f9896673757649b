/**
 * Our kernels against oracles: the stock tfjs webgpu kernels and the tfjs cpu backend for the
 * convolutions (forward and both gradients, every kernel size, odd shapes, both operand
 * storages), a scalar float32 reference of Eq. 1 for fakeQuant (every bit width, exact level
 * ties, values outside the range), finite differences and the autodiff of the composite
 * expression for its gradients, and tensor-leak checks.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess } from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Register from "../lib/internal/kernels/register.ts";
import * as Tuning from "../lib/internal/kernels/tuning.ts";
import { quantizeScalar } from "../lib/internal/kernels/fake_quant.ts";
import * as Transpose from "../lib/internal/kernels/transpose.ts";

const info = await Backend.initialize({ log: false });
Kernels.install(info);
const gpu = info.name === "webgpu";

/** Deterministic uniform values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assertEquals(actual.length, expected.length, what);
  let diff = 0;
  let scale = 1e-6;
  for (let i = 0; i < actual.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  assertLess(diff / scale, 1e-4, `${what}: max relative difference ${diff / scale}`);
}

type Pad = "same" | [[number, number], [number, number], [number, number], [number, number]];
interface Case {
  readonly x: [number, number, number, number];
  readonly k: number;
  readonly o: number;
  readonly pad?: Pad;
}

// Odd sizes, every kernel size, a kernel larger than the image, an explicit symmetric pad; the
// last case also takes the copy paths (rows of 256-byte multiples). The `full` case is also
// checked against stock webgpu and on the buffer operand path (shader JIT time bounds the
// suite: the other cases compare with the cpu backend only).
const CASES: (Case & { full?: boolean })[] = [
  { x: [1, 7, 5, 3], k: 3, o: 5, full: true },
  { x: [2, 6, 9, 4], k: 1, o: 8 },
  { x: [1, 5, 7, 6], k: 5, o: 3 },
  { x: [1, 4, 6, 5], k: 9, o: 7 },
  { x: [2, 8, 8, 16], k: 3, o: 64, pad: [[0, 0], [1, 1], [1, 1], [0, 0]] },
];

/** Forward output and the gradients of `Σ r·conv(x, w)` w.r.t. x and w, on the current backend. */
async function convAndGrads(c: Case, seed: number): Promise<Float32Array[]> {
  const [n, h, w, i] = c.x;
  seed *= 10;
  const x = tf.tensor4d(values(n * h * w * i, seed), c.x);
  const f = tf.tensor4d(values(c.k * c.k * i * c.o, seed + 1), [c.k, c.k, i, c.o]);
  const r = tf.tensor4d(values(n * h * w * c.o, seed + 2), [n, h, w, c.o]);
  const pad = c.pad ?? "same";
  const y = tf.conv2d(x, f, 1, pad);
  const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
    tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, pad), r))
  )([x, f]);
  const out = await Promise.all([y, dx, dw].map((t) => t.data() as Promise<Float32Array>));
  tf.dispose([x, f, r, y, dx, dw]);
  return out;
}

async function onCpu<T>(f: () => Promise<T>): Promise<T> {
  const before = tf.getBackend();
  await tf.setBackend("cpu");
  try {
    return await f();
  } finally {
    await tf.setBackend(before);
  }
}

/** `run` on the cpu backend (the oracle), then here, where it must leave no tensor behind. */
async function againstCpu<T>(run: () => Promise<T>): Promise<{ ours: T; ref: T }> {
  const ref = await onCpu(run);
  const before = tf.memory().numTensors;
  const ours = await run();
  assertEquals(tf.memory().numTensors, before);
  return { ours, ref };
}

function withStorage(storage: Tuning.Tuning["storage"]): void {
  Register.state.tuning = { ...Tuning.choose(info), storage };
}

Deno.test({
  name: "conv kernels equal the cpu backend and stock webgpu (forward, input and weight gradient)",
  ignore: !gpu,
  fn: async () => {
    const storages: Tuning.Tuning["storage"][] = Tuning.readonlyTextures()
      ? ["texture", "buffer"]
      : ["buffer"];
    const saved = Kernels.current();
    try {
      for (const [ci, c] of CASES.entries()) {
        const what = `x ${c.x} k ${c.k} o ${c.o}`;
        const refs: [string, Float32Array[]][] = [["cpu", await onCpu(() => convAndGrads(c, ci))]];
        if (c.full) {
          Kernels.install(info, "stock");
          refs.push(["stock", await convAndGrads(c, ci)]);
        }
        for (const storage of c.full ? storages : storages.slice(0, 1)) {
          Kernels.install(info, "ours");
          withStorage(storage);
          const ours = await convAndGrads(c, ci);
          for (const [ref, want] of refs) {
            for (const [j, name] of ["forward", "dx", "dw"].entries()) {
              assertClose(ours[j], want[j], `${name} ${what} ${storage} vs ${ref}`);
            }
          }
        }
      }
    } finally {
      Kernels.install(info, saved);
    }
  },
});

Deno.test({
  name: "unsupported convs (stride 2, valid padding, dilation) fall back to the stock kernels",
  ignore: !gpu,
  fn: async () => {
    const x = tf.tensor4d(values(1 * 7 * 6 * 3, 5), [1, 7, 6, 3]);
    const f = tf.tensor4d(values(3 * 3 * 3 * 4, 6), [3, 3, 3, 4]);
    const run = () =>
      Promise.all([
        tf.conv2d(x, f, 2, "same"),
        tf.conv2d(x, f, 1, "valid"),
        tf.conv2d(x, f, 1, "same", "NHWC", 2),
      ].map(async (t) => {
        const d = await t.data();
        t.dispose();
        return d;
      }));
    const saved = Kernels.current();
    Kernels.install(info, "stock");
    const stock = await run();
    Kernels.install(info, "ours");
    const ours = await run();
    Kernels.install(info, saved);
    for (let i = 0; i < stock.length; i++) assertEquals(ours[i], stock[i]);
    tf.dispose([x, f]);
  },
});

/** `a·b` and the gradients of `Σ r·(a·b)` w.r.t. a and b (transposed matmuls) on the backend. */
async function matMulAndGrads(
  as: number[],
  bs: number[],
  ta: boolean,
  tb: boolean,
  seed: number,
): Promise<Float32Array[]> {
  const a = tf.tensor(values(tf.util.sizeFromShape(as), seed), as);
  const b = tf.tensor(values(tf.util.sizeFromShape(bs), seed + 1), bs);
  const y = tf.matMul(a, b, ta, tb);
  const r = tf.tensor(values(y.size, seed + 2), y.shape);
  const [da, db] = tf.grads((p: tf.Tensor, q: tf.Tensor) =>
    tf.sum(tf.mul(tf.matMul(p, q, ta, tb), r))
  )(
    [a, b],
  );
  const out = await Promise.all([y, da, db].map((t) => t.data() as Promise<Float32Array>));
  tf.dispose([a, b, y, r, da, db]);
  return out;
}

Deno.test({
  name: "matmul kernel equals the cpu backend and stock webgpu (transposes, batches, gradients)",
  ignore: !gpu,
  fn: async () => {
    const saved = Kernels.current();
    try {
      // Gradients take both operands transposed; the last case takes the copy paths. Only the
      // first is also compared with stock webgpu (shader JIT time bounds the suite).
      const cases: [number[], number[], boolean, boolean][] = [
        [[7, 5], [3, 7], true, true],
        [[2, 9, 13], [2, 10, 13], false, true],
        [[2, 8, 64], [2, 64, 64], false, false],
      ];
      for (const [i, [as, bs, ta, tb]] of cases.entries()) {
        const what = `${as}${ta ? "ᵀ" : ""} · ${bs}${tb ? "ᵀ" : ""}`;
        const refs: [string, Float32Array[]][] = [
          ["cpu", await onCpu(() => matMulAndGrads(as, bs, ta, tb, 100 + i))],
        ];
        if (i === 0) {
          Kernels.install(info, "stock");
          refs.push(["stock", await matMulAndGrads(as, bs, ta, tb, 100 + i)]);
        }
        Kernels.install(info, "ours");
        const ours = await matMulAndGrads(as, bs, ta, tb, 100 + i);
        for (const [ref, want] of refs) {
          for (const [j, name] of ["a·b", "da", "db"].entries()) {
            assertClose(ours[j], want[j], `${name} ${what} vs ${ref}`);
          }
        }
      }
      // A broadcast batch (forward only: tfjs's BatchMatMul gradient does not reduce it).
      const run = async () => {
        const y = tf.matMul(
          tf.tensor3d(values(27, 1), [3, 3, 3]),
          tf.tensor2d(values(6, 2), [3, 2]),
        );
        const d = await y.data();
        y.dispose();
        return d;
      };
      assertClose(await run(), await onCpu(run), "broadcast batch vs cpu");
    } finally {
      Kernels.install(info, saved);
    }
  },
});

// ---------------------------------------------------------------------------------------------
// fakeQuant

const backends = gpu ? ["webgpu", "cpu"] : ["cpu"];

async function onBackend<T>(name: string, f: () => Promise<T>): Promise<T> {
  return name === tf.getBackend() ? await f() : await onCpu(f);
}

Deno.test("fakeQuant equals the scalar Eq. 1 reference at every bit width", async () => {
  for (const backend of backends) {
    await onBackend(backend, async () => {
      // 256 and 257 elements: the vec4 and the scalar kernels.
      for (let bits = 1; bits <= 8; bits++) {
        const l = -0.75;
        const u = 1.25;
        const xs = values(256 + (bits % 2), bits).map((v) => v * 1.6 + 0.25); // some outside
        const q = Kernels.fakeQuant(tf.tensor1d(xs), tf.scalar(l), tf.scalar(u), bits);
        const got = await q.data();
        q.dispose();
        const s = Math.fround(Math.fround(u - l) / (2 ** bits - 1));
        for (let i = 0; i < xs.length; i++) {
          const want = quantizeScalar(xs[i], l, u, bits);
          const t = (Math.min(Math.max(xs[i], l), u) - l) / s;
          // A division may differ by an ulp on GPUs: skip values within 1e-4 of a tie.
          if (Math.abs(t - Math.floor(t) - 0.5) < 1e-4) continue;
          assertLess(Math.abs(got[i] - want), 1e-6, `${backend} bits ${bits} x ${xs[i]}`);
        }
      }
    });
  }
});

Deno.test("fakeQuant rounds exact ties half to even and clips outside the range", async () => {
  for (const backend of backends) {
    await onBackend(backend, async () => {
      for (let bits = 1; bits <= 8; bits++) {
        // s = 0.25 exactly, so every tie (level + s/2) is exact in float32.
        const levels = 2 ** bits - 1;
        const l = -2;
        const u = l + levels * 0.25;
        const xs: number[] = [l - 1, u + 3, l, u];
        const want: number[] = [l, u, l, u];
        for (let j = 0; j < levels; j++) {
          xs.push(l + (j + 0.5) * 0.25);
          want.push(l + (j % 2 === 0 ? j : j + 1) * 0.25);
        }
        // Odd bit widths give a multiple of 4 elements (vec4 kernel), even ones do not.
        if (bits % 2 === 1) {
          while (xs.length % 4 !== 0) {
            xs.push(u);
            want.push(u);
          }
        }
        const q = Kernels.fakeQuant(tf.tensor1d(xs), tf.scalar(l), tf.scalar(u), bits);
        assertEquals(Array.from(await q.data()), want, `${backend} bits ${bits}`);
        q.dispose();
      }
    });
  }
});

/** Kernel gradients of `Σ dy·fakeQuant(x, l, u)`. */
async function fqGrads(xs: Float32Array, dys: Float32Array, l: number, u: number, bits: number) {
  const dy = tf.tensor1d(dys);
  const g = tf.grads((x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) =>
    tf.sum(tf.mul(Kernels.fakeQuant(x, lo, hi, bits), dy))
  );
  const ts = g([tf.tensor1d(xs), tf.scalar(l), tf.scalar(u)]);
  const [dx, dl, du] = await Promise.all(ts.map((t) => t.data()));
  tf.dispose([...ts, dy]);
  return { dx, dl: dl[0], du: du[0] };
}

Deno.test("fakeQuant gradients equal finite differences of the straight-through surrogate", async () => {
  // With a straight-through round, q̃ = clip(x, l, u) + (r − t)·s(l, u) with r − t frozen at the
  // evaluation point: its finite differences are the gradients the kernel must produce.
  const bits = 3;
  const l = -0.6;
  const u = 0.9;
  const levels = 2 ** bits - 1;
  const n = 64;
  const xs = values(n, 7).map((v) => v * 1.3);
  const dys = values(n, 8);
  const s0 = (u - l) / levels;
  const frozen = Array.from(xs, (x) => {
    const t = (Math.min(Math.max(x, l), u) - l) / s0;
    return Math.round(t) - t;
  });
  const loss = (x: ArrayLike<number>, lo: number, hi: number) => {
    let sum = 0;
    for (let i = 0; i < n; i++) {
      sum += dys[i] * (Math.min(Math.max(x[i], lo), hi) + frozen[i] * (hi - lo) / levels);
    }
    return sum;
  };
  const eps = 1e-4;
  const fdL = (loss(xs, l + eps, u) - loss(xs, l - eps, u)) / (2 * eps);
  const fdU = (loss(xs, l, u + eps) - loss(xs, l, u - eps)) / (2 * eps);
  for (const backend of backends) {
    await onBackend(backend, async () => {
      const g = await fqGrads(xs, dys, l, u, bits);
      assertLess(Math.abs(g.dl - fdL), 1e-3 * (1 + Math.abs(fdL)), `${backend} dl`);
      assertLess(Math.abs(g.du - fdU), 1e-3 * (1 + Math.abs(fdU)), `${backend} du`);
      for (let i = 0; i < n; i++) {
        if (Math.abs(xs[i] - l) < 2 * eps || Math.abs(xs[i] - u) < 2 * eps) continue;
        const xp = Float64Array.from(xs);
        xp[i] += eps;
        const xm = Float64Array.from(xs);
        xm[i] -= eps;
        const fd = (loss(xp, l, u) - loss(xm, l, u)) / (2 * eps);
        assertLess(Math.abs(g.dx[i] - fd), 1e-3, `${backend} dx[${i}]`);
      }
    });
  }
});

Deno.test("fakeQuant gradients equal autodiff of the composite expression with an STE round", async () => {
  const steRound = tf.customGrad((t) => ({
    value: tf.round(t as tf.Tensor),
    gradFunc: (dy) => dy as tf.Tensor,
  }));
  const composite = (x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, bits: number) => {
    const s = tf.div(tf.sub(hi, lo), 2 ** bits - 1);
    // NOTE: clip(x, l, u) = x − relu(x − u) + relu(l − x): tfjs's maximum/minimum gradients do
    // not reduce broadcasts, and broadcastTo's gradient is one op per tile.
    const c = tf.add(tf.sub(x, tf.relu(tf.sub(x, hi))), tf.relu(tf.sub(lo, x)));
    return tf.add(tf.mul(steRound(tf.div(tf.sub(c, lo), s)) as tf.Tensor, s), lo);
  };
  for (const backend of backends) {
    await onBackend(backend, async () => {
      for (const bits of [1, 2, 4, 8]) {
        const n = 97;
        // Includes values exactly on l and u (inside, inclusive) and outside on both sides.
        const xs = values(n, 20 + bits).map((v) => v * 1.5);
        xs[0] = -0.5;
        xs[1] = 1;
        const dys = values(n, 30 + bits);
        const ours = await fqGrads(xs, dys, -0.5, 1, bits);
        const dy = tf.tensor1d(dys);
        const ts = tf.grads((x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) =>
          tf.sum(tf.mul(composite(x, lo, hi, bits), dy))
        )([tf.tensor1d(xs), tf.scalar(-0.5), tf.scalar(1)]);
        const [dx, dl, du] = await Promise.all(ts.map((t) => t.data()));
        tf.dispose([...ts, dy]);
        assertClose(ours.dx, dx, `${backend} bits ${bits} dx`);
        assertLess(Math.abs(ours.dl - dl[0]), 1e-4 * (1 + Math.abs(dl[0])), `${backend} dl`);
        assertLess(Math.abs(ours.du - du[0]), 1e-4 * (1 + Math.abs(du[0])), `${backend} du`);
      }
    });
  }
});

Deno.test("fakeQuant validates its arguments", () => {
  const x = tf.tensor1d([0.5]);
  const l = tf.scalar(0);
  const u = tf.scalar(1);
  for (const bits of [0, 9, 2.5]) {
    let threw = false;
    try {
      Kernels.fakeQuant(x, l, u, bits);
    } catch {
      threw = true;
    }
    assert(threw, `bits ${bits}`);
  }
  tf.dispose([x, l, u]);
});

Deno.test("kernels leak no tensors", async () => {
  const before = tf.memory().numTensors;
  for (const backend of backends) {
    await onBackend(backend, async () => {
      const x = tf.tensor4d(values(2 * 5 * 6 * 4, 3), [2, 5, 6, 4]);
      const f = tf.tensor4d(values(3 * 3 * 4 * 4, 4), [3, 3, 4, 4]);
      const l = tf.scalar(-0.5);
      const u = tf.scalar(0.5);
      for (let step = 0; step < 2; step++) {
        const grads = tf.tidy(() =>
          tf.grads((a: tf.Tensor, b: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) =>
            tf.sum(
              tf.conv2d(
                Kernels.fakeQuant(a, lo, hi, 2) as tf.Tensor4D,
                b as tf.Tensor4D,
                1,
                "same",
              ),
            )
          )([x, f, l, u])
        );
        await Promise.all(grads.map((g) => g.data()));
        tf.dispose(grads);
      }
      tf.dispose([x, f, l, u]);
    });
  }
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("Cast of bool and int32 to float32, then transposed and reduced over leading axes, equals cpu", async () => {
  // tfjs-webgpu's own Cast relabelled the integer buffer as float32: Transpose (and so every
  // reduction over leading axes) read the integers' bits as floats, and gave 0.
  const run = async () => {
    const x = tf.add(tf.tensor4d(values(2 * 4 * 5 * 3, 21), [2, 4, 5, 3]), 0);
    const c = tf.cast(tf.greater(x, 0), "float32");
    const i = tf.cast(tf.cast(tf.mul(x, 10), "int32"), "float32");
    const outs = [tf.sum(c, [1, 2]), tf.transpose(c, [0, 3, 1, 2]), tf.mean(i, [1, 2]), c, i];
    const got = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
    tf.dispose([x, ...outs]);
    return got;
  };
  const ours = await run();
  const ref = await onCpu(run);
  ours.forEach((o, k) => assertClose(o, ref[k], `output ${k}`));
});

Deno.test("fused Adam equals the composite Adam ops, bit for bit on cpu and to 1e-4 (relative) on webgpu", async () => {
  // The composite is what lib/Optim.ts ran before the fusion (kept in Kernels.adamUpdate as the
  // fallback): Δ = m'/(√(v'·c) + ε)·(−a), m' = m·β1 + g·(1−β1), v' = v·β2 + g²·(1−β2).
  const o = { b1: 0.9, b2: 0.999, eps: 1e-8, a: 1e-3 / (1 - 0.9 ** 3), c: 1 / (1 - 0.999 ** 3) };
  const composite = (g: tf.Tensor, m: tf.Tensor, v: tf.Tensor) => {
    const m1 = tf.add(tf.mul(m, o.b1), tf.mul(g, 1 - o.b1));
    const v1 = tf.add(tf.mul(v, o.b2), tf.mul(tf.square(g), 1 - o.b2));
    return [tf.mul(tf.div(m1, tf.add(tf.sqrt(tf.mul(v1, o.c)), o.eps)), -o.a), m1, v1];
  };
  // Sizes with and without the vec4 path; v ≥ 0 as Adam's second moment is.
  for (const n of [37, 4 * 9 * 16]) {
    const run = async (fused: boolean) => {
      const g = tf.tensor1d(values(n, 31));
      const m = tf.tidy(() => tf.mul(tf.tensor1d(values(n, 32)), 0.1));
      const v = tf.tidy(() => tf.mul(tf.abs(tf.tensor1d(values(n, 33))), 0.01));
      const outs = fused ? Kernels.adamUpdate(g, m, v, o) : composite(g, m, v);
      const got = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
      tf.dispose([g, m, v, ...outs]);
      return got;
    };
    const cpuComposite = await onCpu(() => run(false));
    const cpuFused = await onCpu(() => run(true));
    cpuFused.forEach((x, k) =>
      assertEquals([...x], [...cpuComposite[k]], `cpu output ${k} n ${n}`)
    );
    const ours = await run(true);
    ours.forEach((x, k) => assertClose(x, cpuComposite[k], `output ${k} n ${n}`));
    const before = tf.memory().numTensors;
    await run(true);
    assertEquals(tf.memory().numTensors, before);
  }
});

Deno.test({
  name: "Sum over every axis but the last (bias gradients) equals the cpu backend",
  ignore: !gpu,
  fn: async () => {
    // The EDSR-baseline bias-gradient shape, odd channel counts (the scalar path), keepDims,
    // negative and unordered axes, one row; and sums that are not column sums (stock kernel).
    const cases: [number[], number | number[], boolean][] = [
      [[8, 48, 48, 64], [0, 1, 2], false],
      [[2, 5, 7, 3], [2, 0, 1], true],
      [[3, 11, 6], [-3, -2], false],
      [[1, 1, 1, 12], [0, 1, 2], false],
      [[40, 5], 0, true],
      [[4, 6, 8], [1, 2], false],
      [[4, 6, 8], [0], false],
    ];
    for (const [k, [shape, axis, keep]] of cases.entries()) {
      const run = async () => {
        const n = shape.reduce((a, b) => a * b, 1);
        const x = tf.tensor(values(n, 40 + k), shape);
        const y = tf.sum(x, axis, keep);
        const got = { shape: y.shape, data: await y.data() as Float32Array };
        tf.dispose([x, y]);
        return got;
      };
      const { ours, ref } = await againstCpu(run);
      assertEquals(ours.shape, ref.shape, `shape of case ${k}`);
      assertClose(ours.data, ref.data, `sum [${shape}] over ${axis} keepDims ${keep}`);
    }
  },
});

Deno.test({
  name:
    "conv with the bias and ReLU epilogue (tf.fused.conv2d) equals the cpu backend, gradients too",
  ignore: !gpu,
  fn: async () => {
    // The vec4 and scalar output paths, the copy path (64 channels), a 1×1 kernel.
    const cases: Case[] = [
      { x: [2, 6, 5, 3], k: 3, o: 5 },
      { x: [1, 4, 4, 16], k: 3, o: 64 },
      { x: [2, 3, 5, 4], k: 1, o: 8 },
    ];
    for (const [ci, c] of cases.entries()) {
      const run = async () => {
        const [n, h, w, i] = c.x;
        const x = tf.tensor4d(values(n * h * w * i, 50 + ci), c.x);
        const f = tf.tensor4d(values(c.k * c.k * i * c.o, 60 + ci), [c.k, c.k, i, c.o]);
        const b = tf.tensor1d(values(c.o, 70 + ci));
        const r = tf.tensor4d(values(n * h * w * c.o, 80 + ci), [n, h, w, c.o]);
        const conv = (a: tf.Tensor, k: tf.Tensor, bias: tf.Tensor, activation: "linear" | "relu") =>
          tf.fused.conv2d({
            x: a as tf.Tensor4D,
            filter: k as tf.Tensor4D,
            strides: 1,
            pad: "same",
            bias,
            activation,
          });
        const relu = conv(x, f, b, "relu");
        const linear = conv(x, f, b, "linear");
        // Under a gradient tfjs fuses only the linear activation (its shouldFuse).
        const grads = tf.grads((a: tf.Tensor, k: tf.Tensor, bias: tf.Tensor) =>
          tf.sum(tf.mul(conv(a, k, bias, "linear"), r))
        )([x, f, b]);
        const outs = [relu, linear, ...grads];
        const got = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
        tf.dispose([x, f, b, r, ...outs]);
        return got;
      };
      const { ours, ref } = await againstCpu(run);
      for (const [j, name] of ["relu", "linear", "dx", "dw", "db"].entries()) {
        assertClose(ours[j], ref[j], `${name} x ${c.x} k ${c.k} o ${c.o}`);
      }
    }
  },
});

Deno.test("diffNorm (the mismatch term's norm) equals the composite on cpu and webgpu, gradients and finite differences", async () => {
  const eps = 1e-12;
  const composite = (x: tf.Tensor, q: tf.Tensor) =>
    tf.sqrt(tf.add(tf.sum(tf.square(tf.sub(x, q))), eps)) as tf.Scalar;
  for (const shape of [[2, 5, 7, 3], [8, 12, 12, 64]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const run = async (fused: boolean) => {
      const x = tf.tensor(values(n, 90), shape);
      const q = tf.tensor(values(n, 91), shape);
      const f = fused ? (a: tf.Tensor, b: tf.Tensor) => Kernels.diffNorm(a, b, eps) : composite;
      const y = f(x, q);
      const [dx, dq] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.mul(f(a, b), 3))([x, q]);
      const got = await Promise.all([y, dx, dq].map((t) => t.data() as Promise<Float32Array>));
      tf.dispose([x, q, y, dx, dq]);
      return got;
    };
    const ref = await onCpu(() => run(false));
    const before = tf.memory().numTensors;
    for (
      const [where, got] of [["cpu", await onCpu(() => run(true))], [
        "current",
        await run(true),
      ]] as const
    ) {
      ["norm", "dx", "dq"].forEach((name, j) =>
        assertClose(got[j], ref[j], `${name} [${shape}] ${where}`)
      );
    }
    assertEquals(tf.memory().numTensors, before);
  }
  // Finite differences of the fused op itself (float64 sums of the cpu twin keep them clean).
  await onCpu(async () => {
    const x0 = values(6, 92), q = tf.tensor1d(values(6, 93));
    const at = async (xs: Float32Array) => {
      const x = tf.tensor1d(xs);
      const y = Kernels.diffNorm(x, q, eps);
      const v = (await y.data())[0];
      tf.dispose([x, y]);
      return v;
    };
    const x = tf.tensor1d(x0);
    const g = tf.grad((a: tf.Tensor) => Kernels.diffNorm(a, q, eps))(x);
    const gv = await g.data();
    for (let i = 0; i < 6; i++) {
      const h = 1e-2;
      const up = Float32Array.from(x0), down = Float32Array.from(x0);
      up[i] += h;
      down[i] -= h;
      const fd = ((await at(up)) - (await at(down))) / (2 * h);
      assertLess(Math.abs(fd - gv[i]), 2e-3, `d/dx${i}: fd ${fd}, grad ${gv[i]}`);
    }
    tf.dispose([x, q, g]);
  });
});

Deno.test("Transpose plans merge adjacent axes and drop size-1 axes (hand-worked cases)", () => {
  // The pixel shuffle of lib/Nn.ts: [b, h, w, r, r, c] with perm [0, 1, 3, 2, 4, 5].
  assertEquals(Transpose.simplify([8, 48, 48, 2, 2, 64], [0, 1, 3, 2, 4, 5]), {
    shape: [384, 48, 2, 128],
    perm: [0, 2, 1, 3],
  });
  assertEquals(Transpose.simplify([3, 4, 5], [0, 1, 2]), { shape: [60], perm: [0] });
  assertEquals(Transpose.simplify([3, 1, 5], [2, 1, 0]), { shape: [3, 5], perm: [1, 0] });
  assertEquals(Transpose.simplify([1, 1], [1, 0]), { shape: [1], perm: [0] });
  assertEquals(Transpose.simplify([2, 3, 4, 5], [2, 3, 0, 1]), { shape: [6, 20], perm: [1, 0] });
});

Deno.test({
  name: "Transpose equals the cpu backend bit for bit (pixel shuffle, vec4 and scalar paths)",
  ignore: !gpu,
  fn: async () => {
    // The pixel shuffle and its inverse, SwinIR's window partition and attention heads, a
    // moving innermost axis (scalar path), size-1 axes, odd sizes, the identity, a 2-D matrix.
    const cases: [number[], number[]][] = [
      [[2, 5, 7, 2, 2, 8], [0, 1, 3, 2, 4, 5]],
      [[1, 3, 5, 2, 2, 64], [0, 1, 3, 2, 4, 5]],
      [[1, 4, 3, 3, 3, 5], [0, 1, 3, 2, 4, 5]],
      [[2, 3, 4, 3, 4, 12], [0, 1, 3, 2, 4, 5]],
      [[6, 7, 3, 2, 8], [2, 0, 3, 1, 4]],
      [[5, 7, 9], [2, 0, 1]],
      [[3, 1, 5, 4], [3, 1, 0, 2]],
      [[4, 6, 8], [0, 1, 2]],
      [[33, 17], [1, 0]],
    ];
    for (const [k, [shape, perm]] of cases.entries()) {
      const run = async () => {
        const n = shape.reduce((a, b) => a * b, 1);
        const x = tf.tensor(values(n, 70 + k), shape);
        const y = tf.transpose(x, perm);
        const got = { shape: y.shape, data: await y.data() as Float32Array };
        tf.dispose([x, y]);
        return got;
      };
      const { ours, ref } = await againstCpu(run);
      assertEquals(ours.shape, ref.shape, `shape of case ${k}`);
      assertEquals(ours.data, ref.data, `transpose [${shape}] by [${perm}]`);
    }
  },
});

Deno.test("coopMerge (Eq. 6 for one tensor) equals a float64 oracle and the composite, on cpu and webgpu", async () => {
  const o = { lambdaR: 1, lambdaM: 0.7, eps: 1e-20 };
  // Eq. 6 in float64: g = λ_R r + λ_M (cos + 1)/2 m.
  const oracle = (r: Float32Array, m: Float32Array) => {
    let ab = 0, aa = 0, bb = 0;
    for (let i = 0; i < r.length; i++) {
      ab += r[i] * m[i];
      aa += r[i] * r[i];
      bb += m[i] * m[i];
    }
    const sim = (ab / (Math.sqrt(aa * bb) + o.eps) + 1) / 2;
    return r.map((x, i) => o.lambdaR * x + o.lambdaM * sim * m[i]);
  };
  // Odd sizes (scalar path), a conv weight (vec4 path, many partial sums), a zero g_M, m = −r.
  const cases: [number[], (r: Float32Array) => Float32Array][] = [
    [[7], (r) => values(r.length, 101)],
    [[3, 3, 64, 64], (r) => values(r.length, 102)],
    [[5, 4], (r) => new Float32Array(r.length)],
    [[64], (r) => r.map((x) => -x)],
  ];
  for (const [k, [shape, mOf]] of cases.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    const rv = values(n, 100 + k), mv = mOf(rv);
    const run = async (fused: boolean) => {
      const r = tf.tensor(rv, shape), m = tf.tensor(mv, shape);
      const g = fused ? Kernels.coopMerge(r, m, o) : tf.tidy(() => {
        const dot = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(a, b));
        const cos = tf.div(dot(r, m), tf.add(tf.sqrt(tf.mul(dot(r, r), dot(m, m))), o.eps));
        return tf.add(
          tf.mul(r, o.lambdaR),
          tf.mul(m, tf.mul(tf.div(tf.add(cos, 1), 2), o.lambdaM)),
        );
      });
      const got = await g.data() as Float32Array;
      tf.dispose([r, m, g]);
      return got;
    };
    const expected = oracle(rv, mv);
    const before = tf.memory().numTensors;
    for (
      const [where, got] of [
        ["cpu", await onCpu(() => run(true))],
        ["current backend", await run(true)],
        ["composite (cpu)", await onCpu(() => run(false))],
      ] as const
    ) {
      assertClose(got, expected, `coopMerge [${shape}] case ${k} on ${where}`);
    }
    assertEquals(tf.memory().numTensors, before);
  }
});

Deno.test("upsampleNearest equals the tile composite bit for bit, its gradient too, on cpu and webgpu", async () => {
  // The composite the op replaced (lib/Nn.ts before): reshape → tile → reshape, whose gradient
  // sums each r×r square in the same order as the kernels.
  const composite = (x: tf.Tensor4D, r: number) => {
    const [b, h, w, c] = x.shape;
    return x.reshape([b * h, 1, w, c]).tile([1, r, 1, r]).reshape([b, h * r, w * r, c]);
  };
  // vec4 channels at ×2 and ×4 (the esrgan upsamplers), odd channels (scalar path), ×3.
  const cases: [[number, number, number, number], number][] = [
    [[2, 5, 3, 8], 2],
    [[1, 3, 4, 12], 4],
    [[2, 4, 3, 3], 3],
  ];
  for (const [k, [shape, r]] of cases.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    const run = async (fused: boolean) => {
      const x = tf.tensor4d(values(n, 120 + k), shape);
      const f = (a: tf.Tensor) =>
        fused ? Kernels.upsampleNearest(a as tf.Tensor4D, r) : composite(a as tf.Tensor4D, r);
      const y = f(x);
      const up = tf.tensor(values(y.size, 130 + k), y.shape);
      const dx = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(f(a), up)))(x);
      const got = {
        shape: y.shape,
        y: await y.data() as Float32Array,
        dx: await dx.data() as Float32Array,
      };
      tf.dispose([x, y, up, dx]);
      return got;
    };
    const ref = await onCpu(() => run(false));
    const before = tf.memory().numTensors;
    for (
      const [where, got] of [["cpu", await onCpu(() => run(true))], [
        "current backend",
        await run(true),
      ]] as const
    ) {
      assertEquals(got.shape, ref.shape, `shape, case ${k} on ${where}`);
      assertEquals(got.y, ref.y, `upsample [${shape}] ×${r} on ${where}`);
      assertEquals(got.dx, ref.dx, `gradient [${shape}] ×${r} on ${where}`);
    }
    assertEquals(tf.memory().numTensors, before);
  }
});

Deno.test({
  name: "Concat and SplitV equal the cpu backend bit for bit (channels, leading axes, odd widths)",
  ignore: !gpu,
  fn: async () => {
    // The RDN dense block's channel concat (vec4 path, runs longer than one chunk), odd channel
    // counts (scalar path), a leading axis, three inputs, a 1-D concat; splits of the same.
    const cases: [number[][], number][] = [
      [[[2, 5, 3, 64], [2, 5, 3, 4]], 3],
      [[[2, 5, 3, 3], [2, 5, 3, 5], [2, 5, 3, 1]], -1],
      [[[2, 3, 4], [5, 3, 4]], 0],
      [[[1, 6, 7, 8], [1, 6, 7, 200]], 3],
      [[[7], [9]], 0],
    ];
    for (const [k, [shapes, axis]] of cases.entries()) {
      const run = async () => {
        const xs = shapes.map((s, j) =>
          tf.tensor(values(s.reduce((a, b) => a * b, 1), 140 + 10 * k + j), s)
        );
        const y = tf.concat(xs, axis);
        const sizes = shapes.map((s) => s.at(axis)!);
        const parts = tf.split(y, sizes, axis);
        const got = {
          shape: y.shape,
          y: await y.data() as Float32Array,
          parts: await Promise.all(parts.map((p) => p.data() as Promise<Float32Array>)),
          inputs: await Promise.all(xs.map((x) => x.data() as Promise<Float32Array>)),
        };
        tf.dispose([...xs, y, ...parts]);
        return got;
      };
      const { ours, ref } = await againstCpu(run);
      assertEquals(ours.shape, ref.shape, `shape of case ${k}`);
      assertEquals(ours.y, ref.y, `concat of case ${k}`);
      ours.parts.forEach((p, j) => assertEquals(p, ours.inputs[j], `split ${j} of case ${k}`));
    }
  },
});

Deno.test("readSoon returns a tensor's values as of the call, though the tensor is freed and more work follows", async () => {
  const n = 1000;
  const x = tf.tensor1d(values(n, 11));
  const y = tf.mul(x, 3);
  const expected = Array.from(await y.data());
  const soon = Kernels.readSoon(y);
  y.dispose();
  // Work recorded after the call, likely on y's recycled buffer.
  const later: tf.Tensor[] = [];
  for (let i = 0; i < 20; i++) later.push(tf.add(x, i));
  const got = await soon;
  assertEquals(Array.from(got), expected);
  const check = tf.add(x, 19);
  assertEquals(Array.from(await later[19].data()), Array.from(await check.data()));
  check.dispose();
  tf.dispose([x, ...later]);
});
