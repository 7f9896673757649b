/**
 * Fast kernels: our own WGSL convolutions registered into tfjs's `webgpu` backend in place of
 * the stock ones, and the fused fake-quant op of Eq. 1 of the ODM paper,
 * `q = round_half_even((clip(x, l, u) − l) / s) · s + l` with `s = (u − l) / (2^bits − 1)`.
 *
 * - {@link install} replaces `Conv2D`, `Conv2DBackpropInput` and `Conv2DBackpropFilter` on
 *   `webgpu` for NHWC float32, stride 1, dilation 1, odd square kernels 1…9 with "same"
 *   padding (tfjs's conv gradient calls the last two, so training gets them too), and
 *   `BatchMatMul` (float32, transposes, a broadcast batch of 1). Every other configuration runs
 *   the stock tfjs kernel, which stays selectable (`"stock"`, or the environment variable
 *   `QAT_KERNELS=stock`). Tiles and the operand storage (read-only storage
 *   textures on software adapters, storage buffers on GPUs) are chosen from the adapter.
 * - {@link fakeQuant} is one kernel forward and one elementwise pass plus a reduction backward,
 *   on `webgpu` and (same code path, plain JS) on `cpu`.
 * - Fusions on the training step's hot path (issue 18; shares from `bench/step.ts --profile`):
 *   `FusedConv2D` (what `Nn.conv2d` runs) adds the bias, and a ReLU where tfjs fuses one, in
 *   our conv kernel's epilogue; `Sum` over every axis but the last (every bias gradient) is a
 *   sliced column sum instead of tfjs's transpose + per-channel reduction; {@link adamUpdate}
 *   is one kernel per parameter tensor; {@link diffNorm} is the mismatch term's norm in one
 *   pass, its gradient in one more; float32 `Transpose` (every pixel shuffle and its gradient)
 *   moves runs of `vec4`s with the shape compiled in. Each has a cpu twin or falls back to the
 *   composite ops.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type * as Backend from "./Backend.ts";
import * as Register from "./internal/kernels/register.ts";
import * as Tuning from "./internal/kernels/tuning.ts";
import * as FQ from "./internal/kernels/fake_quant.ts";
import * as AdamKernel from "./internal/kernels/adam.ts";
import * as DiffNorm from "./internal/kernels/diff_norm.ts";
import * as CoopMerge from "./internal/kernels/merge.ts";
import * as Upsample from "./internal/kernels/upsample.ts";
import { installCast } from "./internal/kernels/cast.ts";
import * as Limits from "./internal/kernels/limits.ts";
import * as Env from "./internal/env.ts";

/** Which conv and matmul kernels run on `webgpu`: ours (default) or tfjs's stock ones. */
export type Which = "ours" | "stock";

/** `QAT_KERNELS` (`ours` | `stock`), else `"ours"`. */
export function defaultWhich(): Which {
  const env = Env.get("QAT_KERNELS");
  if (env === undefined || env === "") return "ours";
  if (env !== "ours" && env !== "stock") throw new Error("QAT_KERNELS must be ours or stock");
  return env;
}

/**
 * Registers our kernels (once per process) and selects which conv kernels run. Idempotent;
 * calling it again with another `which` switches. `info` picks the tuning (cpu: fake-quant
 * kernels only, the conv kernels there are tfjs's).
 */
export function install(info: Backend.Info, which: Which = defaultWhich()): void {
  // Correctness first, whichever kernels run: tfjs's AddN ignores the adapter's binding limit.
  Limits.installAddN();
  // And its Cast to float32, which relabels integer buffers instead of converting them.
  installCast(Register.gpuOf, (b) => Register.gpuOf(b).endOp(Register.state.batch));
  if (info.name === "webgpu" && tf.getBackend() === "webgpu") Limits.guardPrograms(tf.backend());
  Register.installFakeQuant();
  Register.installAdam();
  Register.installDiffNorm();
  Register.installCoopMerge();
  Register.installUpsample();
  Register.installConv();
  Register.installMatMul();
  Register.installSum();
  Register.installTranspose();
  Register.installConcat();
  Register.state.which = which;
  Register.state.batch = submitBatch();
  Register.state.tuning = info.name === "webgpu" ? Tuning.choose(info) : undefined;
}

/** tfjs's deferred-submit batch size (our kernels submit on the same schedule). */
function submitBatch(): number {
  try {
    return tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE");
  } catch {
    return 15;
  }
}

/** The conv and matmul kernels selected now. */
export function current(): Which {
  return Register.state.which;
}

/** What {@link install} chose, for run summaries: `ours (texture)`, `stock`, … */
export function describe(): string {
  const t = Register.state.tuning;
  if (Register.state.which === "stock" || !t) return "stock";
  return `ours (${t.storage})`;
}

/**
 * Fake-quantizes `x` to `2^bits` levels on `[lower, upper]` (Eq. 1), with the straight-through
 * gradients: `dx = dy` inside `[l, u]` (inclusive) and 0 outside; `dl = Σ_inside dy·(x − q)/(u − l)
 * + Σ_{x<l} dy`; `du = Σ_inside dy·(q − x)/(u − l) + Σ_{x>u} dy`.
 *
 * NOTE: these are exactly the gradients of the composite expression under autodiff with a
 * straight-through `round`; `lower` and `upper` are one-element tensors and get gradients of
 * their own shapes.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import * as Backend from "./Backend.ts";
 * import * as Kernels from "./Kernels.ts";
 * const info = await Backend.initialize({ prefer: "cpu", log: false });
 * Kernels.install(info);
 * const q = Kernels.fakeQuant(tf.tensor1d([-1, 0.2, 0.5, 3]), tf.scalar(0), tf.scalar(1), 1);
 * console.log(await q.data()); // 0, 0, 0 (half to even), 1
 * ```
 */
export function fakeQuant(
  x: tf.Tensor,
  lower: tf.Tensor,
  upper: tf.Tensor,
  bits: number,
): tf.Tensor {
  if (!Number.isInteger(bits) || bits < 1 || bits > 8) {
    throw new Error(`fakeQuant: bits must be an integer in 1..8, got ${bits}`);
  }
  if (lower.size !== 1 || upper.size !== 1) {
    throw new Error("fakeQuant: lower and upper must be one-element tensors");
  }
  if (x.dtype !== "float32" || lower.dtype !== "float32" || upper.dtype !== "float32") {
    throw new Error("fakeQuant: float32 tensors only");
  }
  Register.installFakeQuant();
  return tf.engine().runKernel(FQ.FAKE_QUANT, { x, lower, upper }, { bits }) as tf.Tensor;
}

/**
 * One Adam step for one parameter tensor as one fused kernel (lib/internal/kernels/adam.ts):
 * returns `[Δ, m', v']` with `m' = m·β1 + g·(1−β1)`, `v' = v·β2 + g²·(1−β2)` and
 * `Δ = m' / (√(v'·c) + ε) · (−a)`; `a = lr/(1−β1^t)`, `c = 1/(1−β2^t)`. On a backend without
 * the kernel (neither webgpu nor cpu) it computes the same composite with tfjs ops.
 */
export function adamUpdate(
  g: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  o: AdamKernel.AdamAttrs,
): [tf.Tensor, tf.Tensor, tf.Tensor] {
  Register.installAdam();
  if (tf.getKernel(AdamKernel.ADAM, tf.getBackend()) && g.dtype === "float32") {
    return tf.engine().runKernel(
      AdamKernel.ADAM,
      { g, m, v },
      o as unknown as tf.NamedAttrMap,
    ) as [tf.Tensor, tf.Tensor, tf.Tensor];
  }
  const m1 = tf.add(tf.mul(m, o.b1), tf.mul(g, 1 - o.b1));
  const v1 = tf.add(tf.mul(v, o.b2), tf.mul(tf.square(g), 1 - o.b2));
  return [tf.mul(tf.div(m1, tf.add(tf.sqrt(tf.mul(v1, o.c)), o.eps)), -o.a), m1, v1];
}

/**
 * `√(Σ (x − q)² + eps)` as one op (lib/internal/kernels/diff_norm.ts), with the gradients
 * `dx = dy·(x − q)/n` and `dq = −dx`; on a backend without the kernel, the same composite with
 * tfjs ops. `x` and `q` have one shape.
 */
export function diffNorm(x: tf.Tensor, q: tf.Tensor, eps: number): tf.Scalar {
  Register.installDiffNorm();
  if (x.shape.join(",") !== q.shape.join(",")) {
    throw new Error(`diffNorm: shapes [${x.shape}] and [${q.shape}] differ`);
  }
  if (tf.getKernel(DiffNorm.DIFF_NORM, tf.getBackend()) && x.dtype === "float32") {
    return tf.engine().runKernel(DiffNorm.DIFF_NORM, { x, q }, { eps }) as tf.Scalar;
  }
  return tf.sqrt(tf.add(tf.sum(tf.square(tf.sub(x, q))), eps)) as tf.Scalar;
}

/**
 * The values of a float32 tensor, read back from where the device's queue is now: on `webgpu`
 * the copy is submitted at once, so steps recorded after this call do not delay it (the
 * training loop reads step k's report while step k+1 runs). `t.data()` elsewhere. `t` may be
 * disposed once this returns.
 */
export function readSoon(t: tf.Tensor): Promise<Float32Array> {
  const b = tf.backend();
  if (tf.getBackend() === "webgpu" && t.dtype === "float32" && Register.state.tuning) {
    return Register.gpuOf(b).readSoon(t);
  }
  return t.data() as Promise<Float32Array>;
}

/** Whether {@link coopMerge} and {@link mergeStats} have a kernel on the current backend. */
export function fusedMerge(): boolean {
  Register.installCoopMerge();
  return tf.getKernel(CoopMerge.COOP_MERGE, tf.getBackend()) !== undefined;
}

/**
 * Eq. 6 for one float32 parameter tensor, `λ_R·r + λ_M·(cos(r, m) + 1)/2·m` with
 * `cos = r·m/(√(r·r·m·m) + eps)`, as one op (lib/internal/kernels/merge.ts); where
 * {@link fusedMerge} holds (lib/Cooperative.ts keeps the composite for the other cases).
 */
export function coopMerge(
  r: tf.Tensor,
  m: tf.Tensor,
  o: { readonly lambdaR: number; readonly lambdaM: number; readonly eps: number },
): tf.Tensor {
  Register.installCoopMerge();
  if (r.shape.join(",") !== m.shape.join(",")) {
    throw new Error(`coopMerge: shapes [${r.shape}] and [${m.shape}] differ`);
  }
  return tf.engine().runKernel(CoopMerge.COOP_MERGE, { r, m }, { ...o }) as tf.Tensor;
}

/**
 * Nearest-neighbour upsampling of `[b, h, w, c]` by an integer `factor` as one op with a
 * one-op gradient (lib/internal/kernels/upsample.ts); reshape → tile → reshape (the same
 * values, the same gradient sums in the same order) where the kernel is not registered.
 */
export function upsampleNearest(x: tf.Tensor4D, factor: number): tf.Tensor4D {
  Register.installUpsample();
  if (tf.getKernel(Upsample.UPSAMPLE, tf.getBackend()) && x.dtype === "float32") {
    return tf.engine().runKernel(Upsample.UPSAMPLE, { x }, { factor }) as tf.Tensor4D;
  }
  const [b, h, w, c] = x.shape;
  return x.reshape([b * h, 1, w, c]).tile([1, factor, 1, factor]).reshape([
    b,
    h * factor,
    w * factor,
    c,
  ]);
}

/**
 * The statistics of the merge for one tensor (lib/Cooperative.ts `Stats`) as one op:
 * `[Σ r·m, Σ r², Σ m², opposite-sign entries, entries non-zero in both, Σ (g − λ_R·r)², 0, 0]`
 * (lib/internal/kernels/merge.ts `STATS`).
 */
export function mergeStats(r: tf.Tensor, m: tf.Tensor, g: tf.Tensor, lambdaR: number): tf.Tensor1D {
  Register.installCoopMerge();
  if (r.shape.join(",") !== m.shape.join(",") || r.shape.join(",") !== g.shape.join(",")) {
    throw new Error(`mergeStats: shapes [${r.shape}], [${m.shape}] and [${g.shape}] differ`);
  }
  return tf.engine().runKernel(CoopMerge.MERGE_STATS, { r, m, g }, { lambdaR }) as tf.Tensor1D;
}
