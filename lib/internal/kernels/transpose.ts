/**
 * `Transpose` of float32 tensors on webgpu: one gather per output element (or per `vec4` when
 * the innermost axis stays innermost), with the shape compiled into the shader.
 *
 * Why: the pixel shuffle of every upsampler (lib/Nn.ts `pixelShuffle`, reshape → transpose →
 * reshape, also its gradient) and SwinIR's window partition are transposes of large maps. The
 * stock tfjs-webgpu 4.22 kernel computes each output element's coordinates with divisions by
 * uniforms, element by element: in the profile of one EDSR-baseline FP32 step on lavapipe
 * (bench/step.ts --profile) its 5 dispatches took 10.6% of the step (1.9 s of 18.3 s, machine
 * under load). Here, first, axes that stay adjacent and in order are merged (a pixel shuffle
 * `[b, h, w, r, r, c]`, perm `[0, 1, 3, 2, 4, 5]`, becomes `[b·h, w, r, r·c]`, perm
 * `[0, 2, 1, 3]`), then the kernel moves `vec4`s when the innermost merged axis is kept and
 * holds a multiple of 4 floats, and the sizes are WGSL constants, so the index arithmetic is
 * multiplies and shifts, not divisions (llvmpipe has no vector integer division).
 *
 * A transpose is a pure permutation: the result equals the stock kernel's bit for bit (tests
 * compare with the cpu backend).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, type Gpu } from "./gpu.ts";

/** A transpose after merging: input `shape`, output axis `i` is input axis `perm[i]`. */
export interface Plan {
  readonly shape: readonly number[];
  readonly perm: readonly number[];
}

/**
 * Drops size-1 axes and merges runs of input axes that stay adjacent and in order in the
 * output. An identity permutation comes back as a single axis.
 */
export function simplify(shape: readonly number[], perm: readonly number[]): Plan {
  const kept = perm.filter((a) => shape[a] !== 1);
  const groups: number[][] = [];
  for (const a of kept) {
    const last = groups.at(-1);
    // Consecutive in the output and consecutive in the input (skipping dropped size-1 axes).
    const prev = last?.at(-1);
    const next = prev === undefined ? -1 : nextKept(shape, prev);
    if (last && next === a) last.push(a);
    else groups.push([a]);
  }
  if (groups.length === 0) return { shape: [1], perm: [0] };
  // Input order of the groups gives the merged input axes.
  const byInput = [...groups].sort((g, h) => g[0] - h[0]);
  const merged = byInput.map((g) => g.reduce((n, a) => n * shape[a], 1));
  const perm2 = groups.map((g) => byInput.indexOf(g));
  return { shape: merged, perm: perm2 };
}

function nextKept(shape: readonly number[], a: number): number {
  for (let b = a + 1; b < shape.length; b++) if (shape[b] !== 1) return b;
  return -1;
}

/**
 * The WGSL of a {@link Plan}, moving `vec4`s when `vec4`, `run` consecutive elements of the
 * innermost axis per invocation (`run` divides it; the source of a run is contiguous when the
 * innermost axis is kept).
 */
export function wgsl(plan: Plan, vec4: boolean, run = 1): string {
  const r = plan.shape.length;
  const inShape = [...plan.shape];
  if (vec4) inShape[r - 1] /= 4;
  if (run > 1) inShape[r - 1] /= run;
  const outShape = plan.perm.map((a) => inShape[a]);
  // Row-major strides of the input, in elements of the kernel's type.
  const inStride = new Array<number>(r);
  let s = 1;
  for (let a = r - 1; a >= 0; a--) {
    inStride[a] = s;
    s *= inShape[a];
  }
  const total = s;
  const t = floatType(vec4);
  const lines: string[] = ["  var rest = u32(id);", "  var src = 0u;"];
  for (let i = r - 1; i >= 0; i--) {
    const size = outShape[i];
    const stride = inStride[plan.perm[i]];
    if (i === 0) {
      lines.push(`  src += rest * ${stride}u;`);
    } else {
      lines.push(`  src += (rest % ${size}u) * ${stride}u;`);
      lines.push(`  rest = rest / ${size}u;`);
    }
  }
  return `@group(0) @binding(0) var<storage, read_write> Y: array<${t}>;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
${ENTRY}
  if (id >= ${total}) { return; }
${lines.join("\n")}
${
    run > 1
      ? `  for (var j = 0u; j < ${run}u; j++) { Y[u32(id) * ${run}u + j] = X[src * ${run}u + j]; }`
      : "  Y[id] = X[src];"
  }
}`;
}

/** `transpose(x, perm)` for a float32 tensor on the GPU's buffers. */
export function transpose(gpu: Gpu, x: tf.TensorInfo, perm: readonly number[]): tf.TensorInfo {
  const outShape = perm.map((a) => x.shape[a]);
  const plan = simplify(x.shape, perm);
  const size = tf.util.sizeFromShape(x.shape);
  const out = gpu.output(outShape);
  if (size === 0) return out.info;
  const vec4 = plan.perm.at(-1) === plan.shape.length - 1 && plan.shape.at(-1)! % 4 === 0;
  // Each invocation moves a run of up to 32 consecutive vec4s of the kept innermost axis:
  // fewer, longer invocations (the pixel shuffle at 8×96×96×256: 115 → 63 ms a transpose on
  // lavapipe, bench/kernels.bench.ts; llvmpipe pays per workgroup and per index computation).
  const inner = vec4 ? plan.shape.at(-1)! / 4 : 1;
  const run = [32, 16, 8, 4, 2, 1].find((n) => inner % n === 0)!;
  const key = `qat-transpose-${plan.shape.join("x")}-${plan.perm.join("")}-${vec4}-${run}`;
  const pipe = gpu.pipeline(key, () => wgsl(plan, vec4, run));
  gpu.dispatch(
    pipe,
    [{ buffer: out.buffer }, { buffer: gpu.bufferOf(x) }],
    (vec4 ? size / 4 : size) / run,
  );
  return out.info;
}
