/**
 * The fused fake-quant kernel `QatFakeQuant` (Eq. 1 of the ODM paper) and its gradient kernel
 * `QatFakeQuantGrad`, on `webgpu` (WGSL) and `cpu` (plain JS over typed arrays, float32 at every
 * step).
 *
 * Forward: `q = round_half_even((clip(x, l, u) − l) / s) · s + l`, `s = (u − l) / (2^bits − 1)`.
 * Backward (autodiff of that expression with a straight-through round):
 * `dx = dy` where `l ≤ x ≤ u`, else 0;
 * `dl = Σ_inside dy·(x − q)/(u − l) + Σ_{x<l} dy`; `du = Σ_inside dy·(q − x)/(u − l) + Σ_{x>u} dy`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, partialCount } from "./gpu.ts";
import type { Gpu } from "./gpu.ts";
import { type CpuBackend, read } from "./cpu.ts";

/** Kernel names. */
export const FAKE_QUANT = "QatFakeQuant";
export const FAKE_QUANT_GRAD = "QatFakeQuantGrad";

/** Attributes of both kernels. */
export interface FakeQuantAttrs {
  readonly bits: number;
}

/** The number of steps between the lowest and highest level, `2^bits − 1`. */
export const levelsOf = (bits: number): number => 2 ** bits - 1;

const f = Math.fround;

/** Round half to even (as WGSL `round` and `tf.round`). */
export function roundHalfEven(t: number): number {
  const fl = Math.floor(t);
  const d = t - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/** Eq. 1 for one value, in float32 arithmetic step by step. */
export function quantizeScalar(x: number, l: number, u: number, bits: number): number {
  const s = f(f(u - l) / levelsOf(bits));
  const c = Math.min(Math.max(f(x), f(l)), f(u));
  return f(f(roundHalfEven(f(f(c - l) / s)) * s) + l);
}

// ---------------------------------------------------------------------------------------------
// cpu

/** `QatFakeQuant` on cpu. */
export function fakeQuantCpu(
  { inputs, attrs, backend }: Parameters<tf.KernelFunc>[0],
): tf.TensorInfo {
  const { x, lower, upper } = inputs as Record<string, tf.TensorInfo>;
  const bits = (attrs as unknown as FakeQuantAttrs).bits;
  const b = backend as unknown as CpuBackend;
  const xs = read(b, x);
  const l = read(b, lower)[0];
  const u = read(b, upper)[0];
  const out = new Float32Array(xs.length);
  for (let i = 0; i < xs.length; i++) out[i] = quantizeScalar(xs[i], l, u, bits);
  return b.makeTensorInfo(x.shape, "float32", out);
}

/** `QatFakeQuantGrad` on cpu: `[dx, dl, du]`. */
export function fakeQuantGradCpu(
  { inputs, attrs, backend }: Parameters<tf.KernelFunc>[0],
): tf.TensorInfo[] {
  const { dy, x, lower, upper } = inputs as Record<string, tf.TensorInfo>;
  const bits = (attrs as unknown as FakeQuantAttrs).bits;
  const b = backend as unknown as CpuBackend;
  const xs = read(b, x);
  const dys = read(b, dy);
  const l = read(b, lower)[0];
  const u = read(b, upper)[0];
  const range = f(u - l);
  const dx = new Float32Array(xs.length);
  let gl = 0;
  let gu = 0;
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i];
    if (v < l) gl += dys[i];
    else if (v > u) gu += dys[i];
    else {
      dx[i] = dys[i];
      const e = f(f(v - quantizeScalar(v, l, u, bits)) / range);
      gl += dys[i] * e;
      gu -= dys[i] * e;
    }
  }
  return [
    b.makeTensorInfo(x.shape, "float32", dx),
    b.makeTensorInfo(lower.shape, "float32", new Float32Array([gl])),
    b.makeTensorInfo(upper.shape, "float32", new Float32Array([gu])),
  ];
}

// ---------------------------------------------------------------------------------------------
// webgpu

/** WGSL of Eq. 1 for `T` = `f32` or `vec4<f32>` (`round` is half-to-even in WGSL). */
const quant = (t: string) => `
fn quant(x: ${t}, l: f32, hi: f32, levels: f32) -> ${t} {
  let s = (hi - l) / levels;
  return round((clamp(x, ${t}(l), ${t}(hi)) - ${t}(l)) / ${t}(s)) * ${t}(s) + ${t}(l);
}`;

/** Element type of the elementwise kernels: vec4 when the size is a multiple of 4. */
function forwardWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { size: i32, levels: f32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${t}>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
@group(0) @binding(2) var<storage, read> L: array<f32>;
@group(0) @binding(3) var<storage, read> H: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${quant(t)}
${ENTRY}
  if (id >= u.size) { return; }
  Y[id] = quant(X[id], L[0], H[0], u.levels);
}`;
}

/**
 * The elementwise gradient pass with partial sums of dl and du: invocation `id` handles elements
 * `id, id + parts, id + 2·parts, …` (`size` counts elements of type `T`).
 */
function backwardWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  const sum = vec4 ? (v: string) => `dot(${v}, vec4<f32>(1.0))` : (v: string) => v;
  return `struct U { size: i32, parts: i32, levels: f32 };
@group(0) @binding(0) var<storage, read_write> DX: array<${t}>;
@group(0) @binding(1) var<storage, read_write> P: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> DY: array<${t}>;
@group(0) @binding(3) var<storage, read> X: array<${t}>;
@group(0) @binding(4) var<storage, read> L: array<f32>;
@group(0) @binding(5) var<storage, read> H: array<f32>;
@group(0) @binding(6) var<uniform> u: U;
${quant(t)}
${ENTRY}
  if (id >= u.parts) { return; }
  let l = L[0];
  let hi = H[0];
  let range = hi - l;
  let zero = ${t}(0.0);
  var g = vec2<f32>(0.0);
  for (var i = id; i < u.size; i += u.parts) {
    let x = X[i];
    let dy = DY[i];
    let below = x < ${t}(l);
    let above = x > ${t}(hi);
    let inside = !(below | above);
    let e = select(zero, dy * (x - quant(x, l, hi, u.levels)) / range, inside);
    DX[i] = select(zero, dy, inside);
    g += vec2<f32>(${sum("select(zero, dy, below) + e")}, ${sum("select(zero, dy, above) - e")});
  }
  P[id] = g;
}`;
}

const REDUCE = `struct U { parts: i32 };
@group(0) @binding(0) var<storage, read_write> DL: array<f32>;
@group(0) @binding(1) var<storage, read_write> DU: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id != 0) { return; }
  var g = vec2<f32>(0.0);
  for (var i = 0; i < u.parts; i++) { g += P[i]; }
  DL[0] = g.x;
  DU[0] = g.y;
}`;

/** `QatFakeQuant` on webgpu: one elementwise dispatch. */
export function fakeQuantGpu(
  gpu: Gpu,
  x: tf.TensorInfo,
  l: tf.TensorInfo,
  u: tf.TensorInfo,
  bits: number,
) {
  const size = tf.util.sizeFromShape(x.shape);
  if (size === 0) return gpu.constant(x.shape, new Float32Array(0));
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const out = gpu.output(x.shape);
  const uni = gpu.uniforms([n], [levelsOf(bits)]);
  gpu.dispatch(
    gpu.pipeline(`qat-fq-${vec4}`, () => forwardWgsl(vec4)),
    [
      { buffer: out.buffer },
      { buffer: gpu.bufferOf(x) },
      { buffer: gpu.bufferOf(l) },
      { buffer: gpu.bufferOf(u) },
      { buffer: uni },
    ],
    n,
  );
  return out.info;
}

/** `QatFakeQuantGrad` on webgpu: an elementwise pass with partial sums, then a tiny reduce. */
export function fakeQuantGradGpu(
  gpu: Gpu,
  dy: tf.TensorInfo,
  x: tf.TensorInfo,
  l: tf.TensorInfo,
  u: tf.TensorInfo,
  bits: number,
  maxParts: number,
): tf.TensorInfo[] {
  const size = tf.util.sizeFromShape(x.shape);
  if (size === 0) {
    const zero = (t: tf.TensorInfo) => gpu.constant(t.shape, new Float32Array(1));
    return [gpu.constant(x.shape, new Float32Array(0)), zero(l), zero(u)];
  }
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const parts = partialCount(n, maxParts);
  const dx = gpu.output(x.shape);
  const dl = gpu.output(l.shape);
  const du = gpu.output(u.shape);
  const partial = gpu.scratch(parts * 8);
  gpu.dispatch(
    gpu.pipeline(`qat-fq-grad-${vec4}`, () => backwardWgsl(vec4)),
    [
      { buffer: dx.buffer },
      { buffer: partial },
      { buffer: gpu.bufferOf(dy) },
      { buffer: gpu.bufferOf(x) },
      { buffer: gpu.bufferOf(l) },
      { buffer: gpu.bufferOf(u) },
      { buffer: gpu.uniforms([n, parts], [levelsOf(bits)]) },
    ],
    parts,
  );
  gpu.dispatch(
    gpu.pipeline("qat-fq-reduce", () => REDUCE),
    [{ buffer: dl.buffer }, { buffer: du.buffer }, { buffer: partial }, {
      buffer: gpu.uniforms([parts]),
    }],
    1,
  );
  gpu.release(partial);
  return [dx.info, dl.info, du.info];
}
