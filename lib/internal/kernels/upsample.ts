/**
 * Nearest-neighbour upsampling by an integer factor `r` as one op, `QatUpsampleNearest`
 * (`[b, h, w, c] → [b, h·r, w·r, c]`, every pixel repeated in an r×r square), with its gradient
 * `QatUpsampleNearestGrad` (each input pixel gets the sum of its r×r square of `dy`).
 *
 * Why: lib/Nn.ts `upsampleNearest` (the upsampler of the esrgan-slim/medium networks of the
 * default job) was reshape → tile → reshape. tfjs-webgpu's Tile computes every output
 * element's index by divisions, and Tile's gradient is one slice and one add per repeat (32
 * dispatches at ×4): in the profile of one default-job step on lavapipe (bench/step.ts-style
 * profile of recipes/default.ts) Tile, Slice and their adds were ~10% of the step. Here the
 * forward is one gather per output `vec4` (channels a multiple of 4) or float, the gradient one
 * pass summing r² values in a fixed order (row by row) per input element; sizes are WGSL
 * constants. The forward is a copy, exact on every backend; the gradient's sum order is the
 * cpu twin's.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu } from "./gpu.ts";
import { type CpuBackend, read } from "./cpu.ts";

/** Kernel names. */
export const UPSAMPLE = "QatUpsampleNearest";
export const UPSAMPLE_GRAD = "QatUpsampleNearestGrad";

/** Attributes of both kernels. */
export interface UpsampleAttrs {
  readonly factor: number;
}

const f = Math.fround;

function dims(shape: readonly number[]): [number, number, number, number] {
  if (shape.length !== 4) throw new Error(`upsampleNearest expects a 4-D tensor, got [${shape}]`);
  return shape as [number, number, number, number];
}

/** `QatUpsampleNearest` on cpu. */
export function upsampleCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { x } = inputs as Record<string, tf.TensorInfo>;
  const r = (attrs as unknown as UpsampleAttrs).factor;
  const b = backend as unknown as CpuBackend;
  const xs = read(b, x);
  const [n, h, w, c] = dims(x.shape);
  const y = new Float32Array(n * h * r * w * r * c);
  for (let i = 0; i < n; i++) {
    for (let oy = 0; oy < h * r; oy++) {
      for (let ox = 0; ox < w * r; ox++) {
        const src = ((i * h + Math.floor(oy / r)) * w + Math.floor(ox / r)) * c;
        y.set(xs.subarray(src, src + c), ((i * h * r + oy) * w * r + ox) * c);
      }
    }
  }
  return b.makeTensorInfo([n, h * r, w * r, c], "float32", y);
}

/** `QatUpsampleNearestGrad` on cpu: `dx` of shape `[b, h, w, c]` from `dy`. */
export function upsampleGradCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { dy } = inputs as Record<string, tf.TensorInfo>;
  const r = (attrs as unknown as UpsampleAttrs).factor;
  const b = backend as unknown as CpuBackend;
  const ds = read(b, dy);
  const [n, H, W, c] = dims(dy.shape);
  const h = H / r, w = W / r;
  const dx = new Float32Array(n * h * w * c);
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let ch = 0; ch < c; ch++) {
          let s = 0;
          for (let dy2 = 0; dy2 < r; dy2++) {
            for (let dx2 = 0; dx2 < r; dx2++) {
              s = f(s + ds[((i * H + y * r + dy2) * W + x * r + dx2) * c + ch]);
            }
          }
          dx[((i * h + y) * w + x) * c + ch] = s;
        }
      }
    }
  }
  return b.makeTensorInfo([n, h, w, c], "float32", dx);
}

/** WGSL: the coordinates `(i, y, x, ch)` of input element `id` of `[n, h, w, cv]` (both kernels). */
const inputCoords = (n: number, h: number, w: number, cv: number) =>
  `  if (id >= ${n * h * w * cv}) { return; }
  let q = u32(id);
  let ch = q % ${cv}u;
  let x = (q / ${cv}u) % ${w}u;
  let row = q / ${cv * w}u;
  let y = row % ${h}u;
  let i = row / ${h}u;`;

/**
 * Forward: input element (or vec4) `id` of `[n, h, w, c4]` is written to its r×r square. One
 * invocation per input element, not per output: llvmpipe pays per invocation and workgroup,
 * and per output this pass took 35 ms at the default job's `[4, 32, 32, 48]` ×4 against 7.5 ms
 * for the gradient's per-input pass (lavapipe, bench/step.ts-style profile).
 */
function forwardWgsl(shape: readonly number[], r: number, vec4: boolean): string {
  const [n, h, w, c] = shape;
  const cv = vec4 ? c / 4 : c;
  const t = floatType(vec4);
  const W = w * r;
  return `@group(0) @binding(0) var<storage, read_write> Y: array<${t}>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
${ENTRY}
${inputCoords(n, h, w, cv)}
  let v = X[id];
  for (var a = 0u; a < ${r}u; a++) {
    let base = ((i * ${h * r}u + y * ${r}u + a) * ${W}u + x * ${r}u) * ${cv}u + ch;
    for (var b = 0u; b < ${r}u; b++) { Y[base + b * ${cv}u] = v; }
  }
}`;
}

/** Gradient: input element (or vec4) `id` of `[n, h, w, c4]` sums its r×r square of `dy`. */
function gradWgsl(shape: readonly number[], r: number, vec4: boolean): string {
  const [n, h, w, c] = shape;
  const cv = vec4 ? c / 4 : c;
  const t = floatType(vec4);
  const W = w * r;
  return `@group(0) @binding(0) var<storage, read_write> DX: array<${t}>;
@group(0) @binding(1) var<storage, read> DY: array<${t}>;
${ENTRY}
${inputCoords(n, h, w, cv)}
  var s = ${t}(0.0);
  for (var a = 0u; a < ${r}u; a++) {
    let base = ((i * ${h * r}u + y * ${r}u + a) * ${W}u + x * ${r}u) * ${cv}u + ch;
    for (var b = 0u; b < ${r}u; b++) { s += DY[base + b * ${cv}u]; }
  }
  DX[id] = s;
}`;
}

/** `QatUpsampleNearest` on webgpu. */
export function upsampleGpu(gpu: Gpu, x: tf.TensorInfo, r: number): tf.TensorInfo {
  const [n, h, w, c] = dims(x.shape);
  const out = gpu.output([n, h * r, w * r, c]);
  const size = n * h * r * w * r * c;
  if (size === 0) return out.info;
  const vec4 = c % 4 === 0;
  const key = `qat-upsample-in-${x.shape.join("x")}-r${r}-${vec4}`;
  const pipe = gpu.pipeline(key, () => forwardWgsl(x.shape, r, vec4));
  const inputs = size / (r * r);
  gpu.dispatch(
    pipe,
    [{ buffer: out.buffer }, { buffer: gpu.bufferOf(x) }],
    vec4 ? inputs / 4 : inputs,
  );
  return out.info;
}

/** `QatUpsampleNearestGrad` on webgpu. */
export function upsampleGradGpu(gpu: Gpu, dy: tf.TensorInfo, r: number): tf.TensorInfo {
  const [n, H, W, c] = dims(dy.shape);
  const shape = [n, H / r, W / r, c];
  const out = gpu.output(shape);
  const size = tf.util.sizeFromShape(shape);
  if (size === 0) return out.info;
  const vec4 = c % 4 === 0;
  const key = `qat-upsample-grad-${shape.join("x")}-r${r}-${vec4}`;
  const pipe = gpu.pipeline(key, () => gradWgsl(shape, r, vec4));
  gpu.dispatch(
    pipe,
    [{ buffer: out.buffer }, { buffer: gpu.bufferOf(dy) }],
    vec4 ? size / 4 : size,
  );
  return out.info;
}
