/**
 * `Concat` and `SplitV` of float32 tensors on webgpu as copies of column blocks.
 *
 * Viewed around the axis `a`, a tensor is a matrix `[outer = Π shape[:a], inner = Π shape[a:]]`:
 * a concat along `a` lays the inputs' rows side by side (input `k` at column offset `off_k`),
 * a split cuts the columns into blocks. Both are then one copy kernel, dispatched once per input
 * (concat) or per output (split), in which each invocation moves a run of up to {@link RUN}
 * consecutive elements (`vec4`s where widths and offsets allow).
 *
 * Why: the dense blocks of the RDN family (the default job's esrgan-slim) concatenate feature
 * maps along the channel axis, and the gradient of every concat is a SplitV. tfjs-webgpu 4.22
 * runs one invocation per output element, with coordinates computed by divisions; llvmpipe pays
 * per invocation: in the profile of one default-job step on lavapipe the SplitVs and Concats of
 * `[4, 32, 32, 64–128]` maps took 75 ms (bench/step.ts-style profile of recipes/default.ts).
 * Copies are exact: results equal the stock kernels bit for bit (tests compare with cpu).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu } from "./gpu.ts";

/** Elements (of the kernel's type) one invocation copies. */
export const RUN = 32;

const SOURCE = (vec4: boolean) => {
  const t = floatType(vec4);
  return `struct U { rows: i32, chunks: i32, count: i32, srcW: i32, srcOff: i32, dstW: i32, dstOff: i32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${t}>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  let row = id / u.chunks;
  if (row >= u.rows) { return; }
  let c0 = (id % u.chunks) * ${RUN};
  let c1 = min(c0 + ${RUN}, u.count);
  let src = row * u.srcW + u.srcOff;
  let dst = row * u.dstW + u.dstOff;
  for (var c = c0; c < c1; c++) { Y[dst + c] = X[src + c]; }
}`;
};

/** Copies columns `[srcOff, srcOff + count)` of every row of `src` into `dst` at `dstOff`. */
function copyColumns(
  gpu: Gpu,
  dst: GPUBuffer,
  src: GPUBuffer,
  rows: number,
  c: { count: number; srcW: number; srcOff: number; dstW: number; dstOff: number },
): void {
  if (rows === 0 || c.count === 0) return;
  const vec4 = [c.count, c.srcW, c.srcOff, c.dstW, c.dstOff].every((v) => v % 4 === 0);
  const k = vec4 ? 4 : 1;
  const count = c.count / k;
  const chunks = Math.ceil(count / RUN);
  const u = gpu.uniforms([rows, chunks, count, c.srcW / k, c.srcOff / k, c.dstW / k, c.dstOff / k]);
  const pipe = gpu.pipeline(`qat-copy-columns-${vec4}`, () => SOURCE(vec4));
  gpu.dispatch(pipe, [{ buffer: dst }, { buffer: src }, { buffer: u }], rows * chunks);
}

const outerOf = (shape: readonly number[], axis: number) =>
  shape.slice(0, axis).reduce((a, b) => a * b, 1);
const innerOf = (shape: readonly number[], axis: number) =>
  shape.slice(axis).reduce((a, b) => a * b, 1);

/** `concat(xs, axis)` (axis normalized, shapes already checked by tfjs). */
export function concat(gpu: Gpu, xs: readonly tf.TensorInfo[], axis: number): tf.TensorInfo {
  const shape = [...xs[0].shape];
  shape[axis] = xs.reduce((n, x) => n + x.shape[axis], 0);
  const out = gpu.output(shape);
  const rows = outerOf(shape, axis);
  const dstW = innerOf(shape, axis);
  let dstOff = 0;
  for (const x of xs) {
    const count = innerOf(x.shape, axis);
    if (count > 0) {
      copyColumns(gpu, out.buffer, gpu.bufferOf(x), rows, {
        count,
        srcW: count,
        srcOff: 0,
        dstW,
        dstOff,
      });
    }
    dstOff += count;
  }
  return out.info;
}

/** `splitV(x, sizes, axis)` (axis normalized, sizes summing to `x.shape[axis]`). */
export function split(
  gpu: Gpu,
  x: tf.TensorInfo,
  sizes: readonly number[],
  axis: number,
): tf.TensorInfo[] {
  const rows = outerOf(x.shape, axis);
  const srcW = innerOf(x.shape, axis);
  const per = innerOf(x.shape, axis + 1);
  let srcOff = 0;
  return sizes.map((size) => {
    const shape = [...x.shape];
    shape[axis] = size;
    const out = gpu.output(shape);
    const count = size * per;
    copyColumns(gpu, out.buffer, gpu.bufferOf(x), rows, {
      count,
      srcW,
      srcOff,
      dstW: count,
      dstOff: 0,
    });
    srcOff += count;
    return out.info;
  });
}
