/**
 * The backend self-test: a few small computations that every training step relies on, run on
 * the active backend and on tfjs `cpu`, compared to float32 rounding. `Backend.initialize` runs
 * it once per process before an adapter is used, so an adapter that computes wrong numbers is
 * refused instead of training silently wrong (issue 11: GL llvmpipe summed 16 tensors to 120).
 *
 * The checks: a sum of more tensors than the adapter can bind (tfjs's AddN), a long reduction,
 * casts of integers to float32 fed to a transpose and a reduction (tfjs's Cast),
 * a 3×3 conv with both its gradients (our Conv2D / Conv2DBackpropInput / Conv2DBackpropFilter),
 * a matmul with a transpose, the fused fake-quant of Eq. 1 with its three gradients, and two
 * gradients from one recorded forward pass (lib/internal/tape.ts, as the ODM step uses it).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Kernels from "./Kernels.ts";
import * as Tape from "./internal/tape.ts";

/** One check: computes some arrays on whichever backend is active. */
export interface Check {
  readonly name: string;
  readonly run: () => tf.Tensor[];
}

/** The outcome of one check on one backend. */
export interface Failure {
  readonly check: string;
  /** What differed, e.g. `output 0: max relative difference 0.12 (at 3: 120 vs 136)`. */
  readonly detail: string;
}

/** Deterministic values in [-1, 1) (a linear congruential stream). */
function values(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const t4 = (shape: [number, number, number, number], seed: number) =>
  tf.tensor4d(values(shape.reduce((a, b) => a * b), seed), shape);

/** Inputs past every adapter's storage-buffer limit seen so far (16 GL, 32 lavapipe). */
const MANY = 70;

/** The checks, smallest shapes that exercise each path. */
export const checks: ReadonlyArray<Check> = [
  {
    name: "sum of many tensors (AddN)",
    run: () => {
      const xs = Array.from({ length: MANY }, (_, i) => tf.fill([3], i + 1));
      return [tf.addN(xs)];
    },
  },
  {
    name: "reduction (sum of 100000 values)",
    run: () => [tf.sum(tf.tensor1d(values(100_000, 7)))],
  },
  {
    // tfjs-webgpu relabels integer buffers as float32 in Cast (lib/internal/kernels/cast.ts).
    name: "cast to float32, then transpose and reduce over leading axes",
    run: () => {
      const x = tf.add(t4([2, 4, 5, 3], 11), 0); // computed on the device, not uploaded
      const c = tf.cast(tf.greater(x, 0), "float32");
      const i = tf.cast(tf.cast(tf.mul(x, 10), "int32"), "float32");
      return [tf.sum(c, [1, 2]), tf.transpose(c, [0, 3, 1, 2]), tf.mean(i, [1, 2])];
    },
  },
  {
    name: "conv2d 3×3 and both gradients",
    run: () => {
      const x = t4([2, 5, 6, 3], 1);
      const f = t4([3, 3, 3, 5], 2);
      const r = t4([2, 5, 6, 5], 3);
      const y = tf.conv2d(x, f, 1, "same");
      const [dx, df] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
        tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, "same"), r))
      )([x, f]);
      return [y, dx, df];
    },
  },
  {
    name: "matmul",
    run: () => {
      const a = tf.tensor3d(values(2 * 7 * 5, 4), [2, 7, 5]);
      const b = tf.tensor3d(values(2 * 6 * 5, 5), [2, 6, 5]);
      return [tf.matMul(a, b, false, true)];
    },
  },
  {
    name: "fake-quant (Eq. 1) and its gradients",
    run: () => {
      const x = tf.mul(tf.tensor1d(values(257, 6)), 2);
      const l = tf.scalar(-0.7);
      const u = tf.scalar(1.1);
      const r = tf.tensor1d(values(257, 8));
      const q = Kernels.fakeQuant(x, l, u, 2);
      const [dx, dl, du] = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(tf.mul(Kernels.fakeQuant(a, b, c, 2), r))
      )([x, l, u]);
      return [q, dx, dl, du];
    },
  },
  {
    name: "two gradients from one recorded forward pass (tape)",
    run: () => {
      const x = t4([1, 4, 4, 2], 9);
      const f = t4([3, 3, 2, 4], 10);
      const { values: v, grads } = Tape.valuesAndGrads(
        (a, b) => {
          const y = tf.relu(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, "same"));
          return [tf.mean(tf.abs(y)) as tf.Scalar, tf.norm(tf.sub(y, tf.round(y))) as tf.Scalar];
        },
        [x, f],
      );
      return [...v, ...grads.flatMap((g) => g ?? [])];
    },
  },
];

/** Largest difference relative to the reference's largest magnitude (float32 rounding ~1e-6). */
const TOLERANCE = 1e-4;

function compare(got: Float32Array[], want: Float32Array[]): string | undefined {
  if (got.length !== want.length) return `${got.length} outputs instead of ${want.length}`;
  for (let k = 0; k < want.length; k++) {
    const [g, w] = [got[k], want[k]];
    if (g.length !== w.length) return `output ${k}: ${g.length} values instead of ${w.length}`;
    let scale = 1e-6;
    for (const v of w) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < w.length; i++) {
      const d = Math.abs(g[i] - w[i]) / scale;
      if (!(d <= TOLERANCE)) {
        return `output ${k}[${i}] is ${g[i]} where the cpu backend gives ${w[i]}`;
      }
    }
  }
  return undefined;
}

/**
 * Every check's outputs on the active backend, read back together (each wait for the GPU costs
 * ~11 ms under Deno); a check that throws is reported as its error message.
 */
async function evaluateAll(): Promise<Array<Float32Array[] | string>> {
  const outs = checks.map((c) => {
    try {
      return tf.tidy(c.run);
    } catch (e) {
      return (e as Error).message;
    }
  });
  try {
    return await Promise.all(
      outs.map((o) =>
        typeof o === "string" ? o : Promise.all(o.map((t) => t.data() as Promise<Float32Array>))
      ),
    );
  } finally {
    for (const o of outs) if (typeof o !== "string") tf.dispose(o);
  }
}

/** Options of {@link run}. */
export interface Options {
  /**
   * Checks whose active-backend result is perturbed, to test the fallback without a broken
   * adapter (the environment variable `QAT_SELFTEST_BREAK` sets it for a process).
   */
  readonly breakChecks?: ReadonlyArray<string>;
}

/** Names in `QAT_SELFTEST_BREAK` (comma-separated check names or `all`; testing only). */
export function brokenFromEnv(): string[] {
  const v = Deno.env.get("QAT_SELFTEST_BREAK") ?? "";
  return v.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

const matches = (names: ReadonlyArray<string>, check: string) =>
  names.some((n) => n === "all" || check.includes(n));

/**
 * Runs every check on the active backend and on `cpu` and returns the first failure, if any.
 * The active backend stays active. On `cpu` itself it returns undefined at once.
 */
export async function run(opts: Options = {}): Promise<Failure | undefined> {
  const active = tf.getBackend();
  if (active === "cpu") return undefined;
  const broken = opts.breakChecks ?? [];
  let got: Array<Float32Array[] | string>;
  try {
    got = await evaluateAll();
  } catch (e) {
    return { check: "reading results back", detail: `threw ${(e as Error).message}` };
  }
  await tf.setBackend("cpu");
  let want: Array<Float32Array[] | string>;
  try {
    want = await evaluateAll();
  } finally {
    await tf.setBackend(active);
  }
  for (const [i, c] of checks.entries()) {
    const [g, w] = [got[i], want[i]];
    if (typeof w === "string") throw new Error(`self-test "${c.name}" fails on cpu: ${w}`);
    if (typeof g === "string") return { check: c.name, detail: `threw ${g}` };
    if (matches(broken, c.name)) g[0][0] += 1;
    const detail = compare(g, w);
    if (detail) return { check: c.name, detail };
  }
  return undefined;
}
