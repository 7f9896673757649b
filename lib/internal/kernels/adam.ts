/**
 * The fused Adam kernel `QatAdam`: one dispatch per parameter tensor for what `Optim.adam`
 * wrote as eleven element-wise ops (each its own dispatch on webgpu),
 *
 *   m' = m·β1 + g·(1 − β1),   v' = v·β2 + g²·(1 − β2),   Δ = m' / (√(v'·c) + ε) · (−a),
 *
 * with `a = lr/(1 − β1^t)` and `c = 1/(1 − β2^t)` computed on the host (Kingma & Ba, Alg. 1, in
 * PyTorch's arrangement; lib/Optim.ts). Outputs `[Δ, m', v']`. The cpu twin rounds to float32
 * after every operation, in the composite's order, so on cpu it is bit-equal to the ops it
 * replaces; on webgpu the same order is kept (a compiler may still contract a multiply-add,
 * ≤ 1 ulp). The profile of bench/step.ts put the per-parameter op chains of the optimizer at a
 * visible share of a step on lavapipe, where every dispatch costs ~25 µs (PLATFORM.md).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu } from "./gpu.ts";
import { type CpuBackend, read } from "./cpu.ts";

/** Kernel name. */
export const ADAM = "QatAdam";

/** Attributes: the step's scalars, as float32 constants of the composite. */
export interface AdamAttrs {
  readonly b1: number;
  readonly b2: number;
  readonly eps: number;
  /** `lr / (1 − β1^t)`. */
  readonly a: number;
  /** `1 / (1 − β2^t)`. */
  readonly c: number;
}

const f = Math.fround;

/** `QatAdam` on cpu: float32 rounding after each op, in the composite's order. */
export function adamCpu({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const { g, m, v } = inputs as Record<string, tf.TensorInfo>;
  const o = attrs as unknown as AdamAttrs;
  const b = backend as unknown as CpuBackend;
  const gs = read(b, g);
  const ms = read(b, m);
  const vs = read(b, v);
  const b1 = f(o.b1), nb1 = f(1 - o.b1), b2 = f(o.b2), nb2 = f(1 - o.b2);
  const eps = f(o.eps), c = f(o.c), na = f(-o.a);
  const du = new Float32Array(gs.length);
  const dm = new Float32Array(gs.length);
  const dv = new Float32Array(gs.length);
  for (let i = 0; i < gs.length; i++) {
    const mi = f(f(ms[i] * b1) + f(gs[i] * nb1));
    const vi = f(f(vs[i] * b2) + f(f(gs[i] * gs[i]) * nb2));
    du[i] = f(f(mi / f(f(Math.sqrt(f(vi * c))) + eps)) * na);
    dm[i] = mi;
    dv[i] = vi;
  }
  return [
    b.makeTensorInfo(g.shape, "float32", du),
    b.makeTensorInfo(g.shape, "float32", dm),
    b.makeTensorInfo(g.shape, "float32", dv),
  ];
}

function wgsl(vec4: boolean): string {
  const t = floatType(vec4);
  return `struct U { size: i32, b1: f32, nb1: f32, b2: f32, nb2: f32, eps: f32, c: f32, na: f32 };
@group(0) @binding(0) var<storage, read_write> DU: array<${t}>;
@group(0) @binding(1) var<storage, read_write> M1: array<${t}>;
@group(0) @binding(2) var<storage, read_write> V1: array<${t}>;
@group(0) @binding(3) var<storage, read> G: array<${t}>;
@group(0) @binding(4) var<storage, read> M0: array<${t}>;
@group(0) @binding(5) var<storage, read> V0: array<${t}>;
@group(0) @binding(6) var<uniform> u: U;
${ENTRY}
  if (id >= u.size) { return; }
  let g = G[id];
  let m = M0[id] * u.b1 + g * u.nb1;
  let v = V0[id] * u.b2 + (g * g) * u.nb2;
  DU[id] = (m / (sqrt(v * u.c) + ${t}(u.eps))) * u.na;
  M1[id] = m;
  V1[id] = v;
}`;
}

/** `QatAdam` on webgpu: one element-wise dispatch writing the update and both moments. */
export function adamGpu(
  gpu: Gpu,
  g: tf.TensorInfo,
  m: tf.TensorInfo,
  v: tf.TensorInfo,
  o: AdamAttrs,
) {
  const size = tf.util.sizeFromShape(g.shape);
  if (size === 0) {
    return [0, 1, 2].map(() => gpu.constant(g.shape, new Float32Array(0)));
  }
  const vec4 = size % 4 === 0;
  const n = vec4 ? size / 4 : size;
  const outs = [gpu.output(g.shape), gpu.output(g.shape), gpu.output(g.shape)];
  const uni = gpu.uniforms([n], [o.b1, 1 - o.b1, o.b2, 1 - o.b2, o.eps, o.c, -o.a]);
  gpu.dispatch(
    gpu.pipeline(`qat-adam-${vec4}`, () => wgsl(vec4)),
    [
      ...outs.map((x) => ({ buffer: x.buffer })),
      { buffer: gpu.bufferOf(g) },
      { buffer: gpu.bufferOf(m) },
      { buffer: gpu.bufferOf(v) },
      { buffer: uni },
    ],
    n,
  );
  return outs.map((x) => x.info);
}
