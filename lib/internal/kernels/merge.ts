/**
 * Eq. 6 of the ODM paper for one parameter tensor as one op, `QatCoopMerge(r, m)`:
 *
 *   `g = λ_R·r + λ_M·sim·m`,  `sim = (cos(r, m) + 1)/2`,  `cos = r·m / (√(r·r · m·m) + ε)`
 *
 * (lib/Cooperative.ts `cooperative`, per-tensor granularity). As tfjs ops that is three dot
 * products (a multiply and a sum each), the cosine's four scalar ops, two for `sim` and four
 * for the merged gradient: 16 dispatches per parameter tensor and step. The default job's
 * esrgan-slim step ran ~1800 dispatches, most of them this small (bench/step.ts --profile:
 * "gaps between dispatches" 40% of the step). On webgpu this is one pass of partial sums of the
 * three products, a one-invocation finish that computes `sim`, and one element-wise pass.
 * The cpu twin sums in float64 and stores float32; the composite stays the reference in tests.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu, partialCount } from "./gpu.ts";
import { type CpuBackend, read } from "./cpu.ts";

/** Kernel name. */
export const COOP_MERGE = "QatCoopMerge";

/** Attributes of `QatCoopMerge`. */
export interface CoopMergeAttrs {
  readonly lambdaR: number;
  readonly lambdaM: number;
  readonly eps: number;
}

const f = Math.fround;

/** `sim` from the three sums, in float32 steps as the composite computes it. */
export function similarity(ab: number, aa: number, bb: number, eps: number): number {
  const cos = f(f(ab) / f(f(Math.sqrt(f(f(aa) * f(bb)))) + f(eps)));
  return f(f(cos + 1) / 2);
}

/** `QatCoopMerge` on cpu. */
export function coopMergeCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { r, m } = inputs as Record<string, tf.TensorInfo>;
  const a = attrs as unknown as CoopMergeAttrs;
  const b = backend as unknown as CpuBackend;
  const rs = read(b, r), ms = read(b, m);
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < rs.length; i++) {
    ab += rs[i] * ms[i];
    aa += rs[i] * rs[i];
    bb += ms[i] * ms[i];
  }
  const k = f(f(a.lambdaM) * similarity(ab, aa, bb, a.eps));
  const g = new Float32Array(rs.length);
  for (let i = 0; i < rs.length; i++) g[i] = f(f(rs[i] * f(a.lambdaR)) + f(ms[i] * k));
  return b.makeTensorInfo(r.shape, "float32", g);
}

/**
 * WGSL of the sums behind Eq. 6's cosine (`r·m`, `r·r`, `m·m`) over one strided slice of `R`
 * and `M`: the merge and its logged statistics share it, so both see the same cosine.
 */
function cosineSums(t: string): { decl: string; add: string } {
  return {
    decl: [`  var ab = ${t}(0.0);`, `  var aa = ${t}(0.0);`, `  var bb = ${t}(0.0);`].join("\n"),
    add: [
      "    let r = R[i];",
      "    let m = M[i];",
      "    ab += r * m;",
      "    aa += r * r;",
      "    bb += m * m;",
    ].join("\n"),
  };
}

function partialWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  const cosine = cosineSums(t);
  const sum = (v: string) => (vec4 ? `dot(${v}, vec4<f32>(1.0))` : v);
  return `struct U { size: i32, parts: i32 };
@group(0) @binding(0) var<storage, read_write> P: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> R: array<${t}>;
@group(0) @binding(2) var<storage, read> M: array<${t}>;
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id >= u.parts) { return; }
${cosine.decl}
  for (var i = id; i < u.size; i += u.parts) {
${cosine.add}
  }
  P[id] = vec4<f32>(${sum("ab")}, ${sum("aa")}, ${sum("bb")}, 0.0);
}`;
}

/** Sums the partials; `S = (r·m, r·r, m·m, λ_M·sim)`. */
const FINISH = `struct U { parts: i32, lambdaM: f32, eps: f32 };
@group(0) @binding(0) var<storage, read_write> S: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> P: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id != 0) { return; }
  var s = vec4<f32>(0.0);
  for (var i = 0; i < u.parts; i++) { s += P[i]; }
  let cos = s.x / (sqrt(s.y * s.z) + u.eps);
  S[0] = vec4<f32>(s.x, s.y, s.z, u.lambdaM * ((cos + 1.0) / 2.0));
}`;

function applyWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { size: i32, lambdaR: f32 };
@group(0) @binding(0) var<storage, read_write> G: array<${t}>;
@group(0) @binding(1) var<storage, read> R: array<${t}>;
@group(0) @binding(2) var<storage, read> M: array<${t}>;
@group(0) @binding(3) var<storage, read> S: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> u: U;
${ENTRY}
  if (id >= u.size) { return; }
  G[id] = R[id] * u.lambdaR + M[id] * S[0].w;
}`;
}

/** `QatCoopMerge` on webgpu: partial sums, the finish, the element-wise merge. */
export function coopMergeGpu(
  gpu: Gpu,
  r: tf.TensorInfo,
  m: tf.TensorInfo,
  a: CoopMergeAttrs,
  maxParts: number,
): tf.TensorInfo {
  const size = tf.util.sizeFromShape(r.shape);
  const out = gpu.output(r.shape);
  if (size === 0) return out.info;
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const parts = partialCount(n, maxParts);
  const partial = gpu.scratch(parts * 16);
  gpu.dispatch(gpu.pipeline(`qat-coop-partial-${vec4}`, () => partialWgsl(vec4)), [
    { buffer: partial },
    { buffer: gpu.bufferOf(r) },
    { buffer: gpu.bufferOf(m) },
    { buffer: gpu.uniforms([n, parts]) },
  ], parts);
  const sums = gpu.scratch(16);
  gpu.dispatch(gpu.pipeline("qat-coop-finish", () => FINISH), [
    { buffer: sums },
    { buffer: partial },
    { buffer: gpu.uniforms([parts], [a.lambdaM, a.eps]) },
  ], 1);
  gpu.dispatch(gpu.pipeline(`qat-coop-apply-${vec4}`, () => applyWgsl(vec4)), [
    { buffer: out.buffer },
    { buffer: gpu.bufferOf(r) },
    { buffer: gpu.bufferOf(m) },
    { buffer: sums },
    { buffer: gpu.uniforms([n], [a.lambdaR]) },
  ], n);
  gpu.release(partial, sums);
  return out.info;
}

// ---------------------------------------------------------------------------------------------
// The statistics of a logged step (lib/Cooperative.ts `Stats`) for one tensor, as one op.

/** Kernel name of the per-tensor statistics. */
export const MERGE_STATS = "QatMergeStats";

/** Attributes of `QatMergeStats`. */
export interface MergeStatsAttrs {
  readonly lambdaR: number;
}

/** Entries of the `[8]` output of `QatMergeStats`. */
export const STATS = {
  /** `Σ r·m` */ ab: 0,
  /** `Σ r²` */ aa: 1,
  /** `Σ m²` */ bb: 2,
  /** entries where r and m are both non-zero with opposite signs */ conflict: 3,
  /** entries where r and m are both non-zero */ both: 4,
  /** `Σ (g − λ_R·r)²` */ extra: 5,
} as const;

/** `QatMergeStats(r, m, g)` on cpu. */
export function mergeStatsCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]) {
  const { r, m, g } = inputs as Record<string, tf.TensorInfo>;
  const lambdaR = f((attrs as unknown as MergeStatsAttrs).lambdaR);
  const b = backend as unknown as CpuBackend;
  const rs = read(b, r), ms = read(b, m), gs = read(b, g);
  const s = new Float64Array(8);
  for (let i = 0; i < rs.length; i++) {
    const x = rs[i], y = ms[i];
    s[0] += x * y;
    s[1] += x * x;
    s[2] += y * y;
    if (x !== 0 && y !== 0) {
      s[4] += 1;
      if ((x < 0) !== (y < 0)) s[3] += 1;
    }
    const e = f(gs[i] - f(x * lambdaR));
    s[5] += e * e;
  }
  return b.makeTensorInfo([8], "float32", Float32Array.from(s));
}

function statsPartialWgsl(vec4: boolean): string {
  const t = floatType(vec4);
  const cosine = cosineSums(t);
  const sum = (v: string) => (vec4 ? `dot(${v}, vec4<f32>(1.0))` : v);
  const zero = vec4 ? "vec4<f32>(0.0)" : "0.0";
  const one = vec4 ? "vec4<f32>(1.0)" : "1.0";
  return `struct U { size: i32, parts: i32, lambdaR: f32 };
@group(0) @binding(0) var<storage, read_write> P: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> R: array<${t}>;
@group(0) @binding(2) var<storage, read> M: array<${t}>;
@group(0) @binding(3) var<storage, read> G: array<${t}>;
@group(0) @binding(4) var<uniform> u: U;
${ENTRY}
  if (id >= u.parts) { return; }
${cosine.decl}
  var conflict = ${t}(0.0);
  var both = ${t}(0.0);
  var extra = ${t}(0.0);
  for (var i = id; i < u.size; i += u.parts) {
${cosine.add}
    let nz = r != ${zero} & m != ${zero};
    both += select(${zero}, ${one}, nz);
    conflict += select(${zero}, ${one}, nz & ((r < ${zero}) != (m < ${zero})));
    let e = G[i] - r * u.lambdaR;
    extra += e * e;
  }
  P[2 * id] = vec4<f32>(${sum("ab")}, ${sum("aa")}, ${sum("bb")}, ${sum("conflict")});
  P[2 * id + 1] = vec4<f32>(${sum("both")}, ${sum("extra")}, 0.0, 0.0);
}`;
}

const STATS_FINISH = `struct U { parts: i32 };
@group(0) @binding(0) var<storage, read_write> S: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> P: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id != 0) { return; }
  var a = vec4<f32>(0.0);
  var b = vec4<f32>(0.0);
  for (var i = 0; i < u.parts; i++) {
    a += P[2 * i];
    b += P[2 * i + 1];
  }
  S[0] = a;
  S[1] = b;
}`;

/** `QatMergeStats` on webgpu: partial sums, then their sum into the `[8]` output. */
export function mergeStatsGpu(
  gpu: Gpu,
  r: tf.TensorInfo,
  m: tf.TensorInfo,
  g: tf.TensorInfo,
  a: MergeStatsAttrs,
  maxParts: number,
): tf.TensorInfo {
  const size = tf.util.sizeFromShape(r.shape);
  if (size === 0) return gpu.constant([8], new Float32Array(8));
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const parts = partialCount(n, maxParts);
  const partial = gpu.scratch(parts * 32);
  gpu.dispatch(gpu.pipeline(`qat-merge-stats-${vec4}`, () => statsPartialWgsl(vec4)), [
    { buffer: partial },
    { buffer: gpu.bufferOf(r) },
    { buffer: gpu.bufferOf(m) },
    { buffer: gpu.bufferOf(g) },
    { buffer: gpu.uniforms([n, parts], [a.lambdaR]) },
  ], parts);
  const out = gpu.output([8]);
  gpu.dispatch(gpu.pipeline("qat-merge-stats-finish", () => STATS_FINISH), [
    { buffer: out.buffer },
    { buffer: partial },
    { buffer: gpu.uniforms([parts]) },
  ], 1);
  gpu.release(partial);
  return out.info;
}
