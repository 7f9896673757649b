/**
 * Stock tfjs kernels vs ours, per kernel and shape, in one process: Conv2D,
 * Conv2DBackpropInput and Conv2DBackpropFilter at the EDSR-baseline body conv (8×48×48×64,
 * 3×3, 64→64) and a tiny one (4×24×24×32, 3×3, 32→32); BatchMatMul (1024³ and a
 * SwinIR-like linear layer); fakeQuant vs the composite tfjs expression (forward + gradient);
 * Transpose (a pixel shuffle and a matrix).
 * Each iteration runs a few ops back to back and waits for the GPU once (a wait costs ~11 ms
 * under Deno); every pair prints the median ms per op, GFLOP/s and the ratio.
 *
 *   deno bench -A bench/kernels.bench.ts
 */
import * as tf from "@tensorflow/tfjs";
import * as Backend from "../lib/Backend.ts";
import * as Kernels from "../lib/Kernels.ts";

const info = await Backend.initialize({ log: false });
Kernels.install(info, "ours");
console.log(`backend: ${info.name} (${info.adapter}); ours = ${Kernels.describe()}`);

const WARMUP = 1;
const N = 5;

/** Median per-op milliseconds of each bench's measured iterations, for the ratio lines. */
const results = new Map<string, number>();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function sync(t: tf.Tensor): Promise<void> {
  const one = tf.tidy(() => tf.slice(tf.reshape(t, [-1]), 0, 1));
  await one.data();
  one.dispose();
}

function report(group: string, which: string, ms: number, flops: number | undefined): void {
  results.set(`${group}/${which}`, ms);
  const rate = flops === undefined ? "" : `, ${(flops / ms / 1e6).toFixed(2)} GFLOP/s`;
  const stock = results.get(`${group}/stock`);
  const ratio = which === "ours" && stock !== undefined
    ? ` (ours ${(stock / ms).toFixed(1)}× faster than stock)`
    : "";
  console.log(`${group} ${which}: ${ms.toFixed(2)} ms/op${rate}${ratio}`);
}

interface Pair {
  readonly group: string;
  /** FLOPs of one op, when it has a meaningful count. */
  readonly flops?: number;
  /** Ops per iteration for stock and ours. */
  readonly reps: { readonly stock: number; readonly ours: number };
  /** One op; `which` selects the kernels (or, for fakeQuant, the implementation). */
  readonly op: (which: Kernels.Which) => tf.Tensor | tf.Tensor[];
}

/** Registers the stock (baseline) and ours benches of one group. */
function pair(p: Pair): void {
  for (const which of ["stock", "ours"] as const) {
    const times: number[] = [];
    Deno.bench({
      name: `${which} ${p.group}`,
      group: p.group,
      baseline: which === "stock",
      n: N,
      warmup: WARMUP,
      ignore: info.name !== "webgpu",
      fn: async () => {
        Kernels.install(info, which);
        const reps = p.reps[which];
        const t0 = performance.now();
        for (let i = 0; i < reps; i++) {
          const y = p.op(which);
          const ys = Array.isArray(y) ? y : [y];
          if (i === reps - 1) await sync(ys[ys.length - 1]);
          tf.dispose(ys);
        }
        times.push((performance.now() - t0) / reps);
        if (times.length === N + WARMUP) {
          report(p.group, which, median(times.slice(WARMUP)), p.flops);
        }
      },
    });
  }
}

// Convolutions.
const SHAPES = [
  { name: "edsr 8x48x48x64 k3", n: 8, h: 48, w: 48, c: 64, k: 3, reps: { stock: 1, ours: 8 } },
  { name: "tiny 4x24x24x32 k3", n: 4, h: 24, w: 24, c: 32, k: 3, reps: { stock: 4, ours: 16 } },
];
for (const s of SHAPES) {
  const x = tf.randomNormal([s.n, s.h, s.w, s.c]) as tf.Tensor4D;
  const w = tf.randomNormal([s.k, s.k, s.c, s.c]) as tf.Tensor4D;
  const flops = 2 * s.n * s.h * s.w * s.c * s.c * s.k * s.k;
  const shape: [number, number, number, number] = [s.n, s.h, s.w, s.c];
  pair({ group: `Conv2D ${s.name}`, flops, reps: s.reps, op: () => tf.conv2d(x, w, 1, "same") });
  pair({
    group: `Conv2DBackpropInput ${s.name}`,
    flops,
    reps: s.reps,
    op: () => tf.conv2dTranspose(x, w, shape, 1, "same"),
  });
  pair({
    group: `Conv2DBackpropFilter ${s.name}`,
    flops,
    reps: s.reps,
    op: () =>
      tf.engine().runKernel("Conv2DBackpropFilter", { x, dy: x }, {
        strides: 1,
        pad: "same",
        dataFormat: "NHWC",
        filterShape: [s.k, s.k, s.c, s.c],
      }) as tf.Tensor,
  });
}

// Matmuls.
for (
  const [name, m, k, n] of [["1024x1024x1024", 1024, 1024, 1024], [
    "linear 18432x60→180",
    18432,
    60,
    180,
  ]] as const
) {
  const a = tf.randomNormal([m, k]);
  const b = tf.randomNormal([k, n]);
  pair({
    group: `BatchMatMul ${name}`,
    flops: 2 * m * k * n,
    reps: { stock: 2, ours: 8 },
    op: () => tf.matMul(a, b),
  });
}

// fakeQuant: the fused kernels vs the composite tfjs expression with an STE round.
const steRound = tf.customGrad((t) => ({
  value: tf.round(t as tf.Tensor),
  gradFunc: (dy) => dy as tf.Tensor,
}));
function composite(x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, bits: number): tf.Tensor {
  const s = tf.div(tf.sub(hi, lo), 2 ** bits - 1);
  // clip(x, l, u) = x − relu(x − u) + relu(l − x): tfjs's maximum/minimum gradients do not
  // reduce broadcasts, and broadcastTo's gradient is one op per tile.
  const c = tf.add(tf.sub(x, tf.relu(tf.sub(x, hi))), tf.relu(tf.sub(lo, x)));
  return tf.add(tf.mul(steRound(tf.div(tf.sub(c, lo), s)) as tf.Tensor, s), lo);
}
{
  const x = tf.randomNormal([8, 48, 48, 64]);
  const dy = tf.randomNormal([8, 48, 48, 64]);
  const lo = tf.scalar(-1);
  const hi = tf.scalar(1.5);
  pair({
    group: "fakeQuant forward+gradient 8x48x48x64",
    reps: { stock: 4, ours: 4 },
    op: (which) => {
      const f = which === "ours" ? Kernels.fakeQuant : composite;
      return tf.grads((a: tf.Tensor, l: tf.Tensor, u: tf.Tensor) =>
        tf.sum(tf.mul(f(a, l, u, 2), dy))
      )([x, lo, hi]);
    },
  });
}

// Transpose: the pixel shuffle of the EDSR-baseline ×4 upsampler's second stage
// (`[8, 96, 96, 2, 2, 64]` by `[0, 1, 3, 2, 4, 5]`, lib/Nn.ts) and a 2-D matrix (scalar path).
for (
  const [name, shape, perm] of [
    ["pixel shuffle 8x96x96x256", [8, 96, 96, 2, 2, 64], [0, 1, 3, 2, 4, 5]],
    ["matrix 2048x1024", [2048, 1024], [1, 0]],
  ] as const
) {
  const x = tf.randomNormal([...shape]);
  pair({
    group: `Transpose ${name}`,
    reps: { stock: 2, ours: 8 },
    op: () => tf.transpose(x, [...perm]),
  });
}
