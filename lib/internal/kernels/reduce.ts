/**
 * `Sum` over every axis but the last (a column sum of `[rows, channels]`) on webgpu: the bias
 * gradient of every conv and of every broadcast add over NHWC activations.
 *
 * tfjs-webgpu 4.22 reduces only along the innermost axis, so it transposes `[N·H·W, C]` to
 * `[C, N·H·W]` first and then runs one reduction workgroup per channel: 64 long serial sums
 * and a full copy of the gradient. The profile of one EDSR-baseline W2A2 ODM step on lavapipe
 * (bench/step.ts --profile, before this kernel) put that Sum at 14.9% of the step and its
 * Transpose at another 4.6%. Here the rows are split into slices: invocation `(slice, c4)` sums
 * its slice of four adjacent channels (neighbouring invocations read neighbouring texels, no
 * transpose), and a second dispatch adds the slices' partial sums.
 *
 * NOTE: the summation order differs from tfjs's (partial sums of ≤ rows/slices terms, then the
 * slices), so results differ from the stock kernel by float32 rounding only; the tests compare
 * with the cpu backend.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu } from "./gpu.ts";

/** Rows and columns of a `Sum` over every axis but the last, or undefined when it is not one. */
export function columnSumShape(
  shape: readonly number[],
  axis: number | number[],
): { rows: number; cols: number } | undefined {
  const r = shape.length;
  if (r < 2) return undefined;
  const axes = (Array.isArray(axis) ? axis : [axis]).map((a) => (a < 0 ? a + r : a));
  const sorted = [...new Set(axes)].sort((a, b) => a - b);
  if (sorted.length !== r - 1 || sorted.some((a, i) => a !== i)) return undefined;
  const cols = shape[r - 1];
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  return rows > 0 && cols > 0 ? { rows, cols } : undefined;
}

function partialWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { rows: i32, cols: i32, per: i32, total: i32 };
@group(0) @binding(0) var<storage, read_write> P: array<${t}>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let c = id % u.cols;
  let s = id / u.cols;
  let r1 = min(s * u.per + u.per, u.rows);
  var acc = ${t}(0.0);
  for (var r = s * u.per; r < r1; r++) { acc += X[r * u.cols + c]; }
  P[id] = acc;
}`;
}

function finalWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { cols: i32, slices: i32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${t}>;
@group(0) @binding(1) var<storage, read> P: array<${t}>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.cols) { return; }
  var acc = ${t}(0.0);
  for (var s = 0; s < u.slices; s++) { acc += P[s * u.cols + id]; }
  Y[id] = acc;
}`;
}

/**
 * The column sums of `x` viewed as `[rows, cols]` into a new tensor of `outShape`, aiming at
 * `invocations` invocations for the partial sums (the adapter's tuning).
 */
export function columnSum(
  gpu: Gpu,
  x: tf.TensorInfo,
  d: { rows: number; cols: number },
  outShape: number[],
  invocations: number,
): tf.TensorInfo {
  const vec4 = d.cols % 4 === 0;
  const cols = vec4 ? d.cols / 4 : d.cols;
  const wanted = Math.max(1, Math.min(d.rows, Math.ceil(invocations / cols)));
  const per = Math.ceil(d.rows / wanted);
  const slices = Math.ceil(d.rows / per);
  const out = gpu.output(outShape);
  const partialPipe = gpu.pipeline(`qat-colsum-partial-${vec4}`, () => partialWgsl(vec4));
  const total = slices * cols;
  const u = gpu.uniforms([d.rows, cols, per, total]);
  if (slices === 1) {
    gpu.dispatch(partialPipe, [{ buffer: out.buffer }, { buffer: gpu.bufferOf(x) }, {
      buffer: u,
    }], total);
    return out.info;
  }
  const partial = gpu.scratch(total * (vec4 ? 16 : 4));
  gpu.dispatch(
    partialPipe,
    [{ buffer: partial }, { buffer: gpu.bufferOf(x) }, { buffer: u }],
    total,
  );
  const finalPipe = gpu.pipeline(`qat-colsum-final-${vec4}`, () => finalWgsl(vec4));
  gpu.dispatch(finalPipe, [{ buffer: out.buffer }, { buffer: partial }, {
    buffer: gpu.uniforms([cols, slices]),
  }], cols);
  gpu.release(partial);
  return out.info;
}
