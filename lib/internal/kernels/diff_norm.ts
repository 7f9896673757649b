/**
 * The mismatch term's norm as one op: `QatDiffNorm(x, q) = √(Σ (x − q)² + ε)` (one tap of
 * Eq. 2–3 of the ODM paper, lib/Loss.ts), with its gradient kernel `QatDiffNormGrad`:
 * `dx = dy·(x − q)/n`, `dq = −dx`.
 *
 * As tfjs ops this was sub, square, sum, add and sqrt forward and about as many element-wise
 * passes over the activation backward, per quantized layer and step. On webgpu the forward is
 * one pass of partial sums and a one-invocation finish (square root included); the backward is
 * one element-wise pass writing both gradients. The cpu twins use float64 for the sum (the
 * tests compare the two within float32 tolerance) and float32 for everything stored.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu, partialCount } from "./gpu.ts";
import { type CpuBackend, read } from "./cpu.ts";

/** Kernel names. */
export const DIFF_NORM = "QatDiffNorm";
export const DIFF_NORM_GRAD = "QatDiffNormGrad";

/** Attributes of `QatDiffNorm`. */
export interface DiffNormAttrs {
  readonly eps: number;
}

const f = Math.fround;

/** `QatDiffNorm` on cpu. */
export function diffNormCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { x, q } = inputs as Record<string, tf.TensorInfo>;
  const b = backend as unknown as CpuBackend;
  const xs = read(b, x), qs = read(b, q);
  let s = 0;
  for (let i = 0; i < xs.length; i++) {
    const e = f(xs[i] - qs[i]);
    s += f(e * e);
  }
  const n = f(Math.sqrt(f(f(s) + f((attrs as unknown as DiffNormAttrs).eps))));
  return b.makeTensorInfo([], "float32", new Float32Array([n]));
}

/** `QatDiffNormGrad` on cpu: `[dx, dq]`. */
export function diffNormGradCpu({ inputs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { dy, x, q, n } = inputs as Record<string, tf.TensorInfo>;
  const b = backend as unknown as CpuBackend;
  const xs = read(b, x), qs = read(b, q);
  const k = f(read(b, dy)[0] / read(b, n)[0]);
  const dx = new Float32Array(xs.length), dq = new Float32Array(xs.length);
  for (let i = 0; i < xs.length; i++) {
    dx[i] = f(f(xs[i] - qs[i]) * k);
    dq[i] = -dx[i];
  }
  return [b.makeTensorInfo(x.shape, "float32", dx), b.makeTensorInfo(q.shape, "float32", dq)];
}

function partialWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { size: i32, parts: i32 };
@group(0) @binding(0) var<storage, read_write> P: array<f32>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
@group(0) @binding(2) var<storage, read> Q: array<${t}>;
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id >= u.parts) { return; }
  var acc = ${t}(0.0);
  for (var i = id; i < u.size; i += u.parts) {
    let e = X[i] - Q[i];
    acc += e * e;
  }
  P[id] = ${vec4 ? "dot(acc, vec4<f32>(1.0))" : "acc"};
}`;
}

const FINISH = `struct U { parts: i32, eps: f32 };
@group(0) @binding(0) var<storage, read_write> N: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id != 0) { return; }
  var s = 0.0;
  for (var i = 0; i < u.parts; i++) { s += P[i]; }
  N[0] = sqrt(s + u.eps);
}`;

function gradWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { size: i32 };
@group(0) @binding(0) var<storage, read_write> DX: array<${t}>;
@group(0) @binding(1) var<storage, read_write> DQ: array<${t}>;
@group(0) @binding(2) var<storage, read> X: array<${t}>;
@group(0) @binding(3) var<storage, read> Q: array<${t}>;
@group(0) @binding(4) var<storage, read> DY: array<f32>;
@group(0) @binding(5) var<storage, read> N: array<f32>;
@group(0) @binding(6) var<uniform> u: U;
${ENTRY}
  if (id >= u.size) { return; }
  let d = (X[id] - Q[id]) * (DY[0] / N[0]);
  DX[id] = d;
  DQ[id] = -d;
}`;
}

/** `QatDiffNorm` on webgpu: partial sums of squares, then the sum and square root. */
export function diffNormGpu(
  gpu: Gpu,
  x: tf.TensorInfo,
  q: tf.TensorInfo,
  eps: number,
  maxParts: number,
): tf.TensorInfo {
  const size = tf.util.sizeFromShape(x.shape);
  if (size === 0) return gpu.constant([], new Float32Array([Math.sqrt(eps)]));
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const parts = partialCount(n, maxParts);
  const partial = gpu.scratch(parts * 4);
  gpu.dispatch(gpu.pipeline(`qat-diffnorm-${vec4}`, () => partialWgsl(vec4)), [
    { buffer: partial },
    { buffer: gpu.bufferOf(x) },
    { buffer: gpu.bufferOf(q) },
    { buffer: gpu.uniforms([n, parts]) },
  ], parts);
  const out = gpu.output([]);
  gpu.dispatch(gpu.pipeline("qat-diffnorm-finish", () => FINISH), [
    { buffer: out.buffer },
    { buffer: partial },
    { buffer: gpu.uniforms([parts], [eps]) },
  ], 1);
  gpu.release(partial);
  return out.info;
}

/** `QatDiffNormGrad` on webgpu: one element-wise pass writing `dx` and `dq`. */
export function diffNormGradGpu(
  gpu: Gpu,
  dy: tf.TensorInfo,
  x: tf.TensorInfo,
  q: tf.TensorInfo,
  norm: tf.TensorInfo,
): tf.TensorInfo[] {
  const size = tf.util.sizeFromShape(x.shape);
  if (size === 0) return [x, q].map((t) => gpu.constant(t.shape, new Float32Array(0)));
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const dx = gpu.output(x.shape), dq = gpu.output(q.shape);
  gpu.dispatch(gpu.pipeline(`qat-diffnorm-grad-${vec4}`, () => gradWgsl(vec4)), [
    { buffer: dx.buffer },
    { buffer: dq.buffer },
    { buffer: gpu.bufferOf(x) },
    { buffer: gpu.bufferOf(q) },
    { buffer: gpu.bufferOf(dy) },
    { buffer: gpu.bufferOf(norm) },
    { buffer: gpu.uniforms([n]) },
  ], n);
  return [dx.info, dq.info];
}
