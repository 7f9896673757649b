/**
 * Registration of our kernels into tfjs in place of the stock ones, keeping the stock kernel
 * functions so that every unsupported case (and `which = "stock"`) runs them.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import { Gpu } from "./gpu.ts";
import * as Conv from "./conv.ts";
import * as Adam from "./adam.ts";
import * as DN from "./diff_norm.ts";
import * as FQ from "./fake_quant.ts";
import * as CM from "./merge.ts";
import * as Concat from "./concat.ts";
import * as Up from "./upsample.ts";
import * as MatMul from "./matmul.ts";
import * as Reduce from "./reduce.ts";
import * as Transpose from "./transpose.ts";
import type { Tuning } from "./tuning.ts";

/** Which implementation the conv kernels use. */
export type Which = "ours" | "stock";

type KernelArgs = Parameters<tf.KernelFunc>[0];

const gpus = new WeakMap<object, Gpu>();

/** The per-backend GPU state. */
export function gpuOf(backend: object): Gpu {
  let g = gpus.get(backend);
  if (!g) {
    g = new Gpu(backend as unknown as WebGPUBackend);
    gpus.set(backend, g);
  }
  return g;
}

/** Mutable state of the installation (one per process: tfjs's registry is global). */
export const state: { which: Which; tuning: Tuning | undefined; batch: number } = {
  which: "stock",
  tuning: undefined,
  batch: 15,
};

const stock = new Map<string, tf.KernelFunc>();

/** The stock webgpu kernel function of `name`, as registered before we replaced it. */
export function stockKernel(name: string): tf.KernelFunc {
  const f = stock.get(name) ?? tf.getKernel(name, "webgpu")?.kernelFunc;
  if (!f) throw new Error(`no stock webgpu kernel ${name}`);
  return f;
}

/**
 * Replaces the webgpu kernel `name` by `ours` (one output or several, as tfjs kernels return),
 * which may return undefined to use the stock one.
 */
export function override(
  name: string,
  ours: (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[] | undefined,
): void {
  if (!stock.has(name)) {
    const config = tf.getKernel(name, "webgpu");
    if (!config) return;
    stock.set(name, config.kernelFunc);
  }
  const base = stock.get(name)!;
  tf.unregisterKernel(name, "webgpu");
  tf.registerKernel({
    kernelName: name,
    backendName: "webgpu",
    kernelFunc: (args) => {
      const t = state.tuning;
      const r = state.which === "ours" && t ? ours(args) : undefined;
      return r ?? base(args);
    },
  });
}

const f32 = (...ts: tf.TensorInfo[]) => ts.every((t) => t.dtype === "float32");

function finish<T extends tf.TensorInfo | tf.TensorInfo[]>(
  backend: object,
  r: T | undefined,
): T | undefined {
  if (r) gpuOf(backend).endOp(state.batch);
  return r;
}

/** The "same" stride-1 conv our kernels handle for these shapes and attributes, if it is one. */
function sameConvOf(
  xShape: readonly number[],
  filterShape: readonly number[],
  a: Pick<tf.Conv2DAttrs, "strides" | "dilations" | "pad" | "dimRoundingMode" | "dataFormat">,
) {
  return Conv.sameConv(tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    a.strides,
    a.dilations,
    a.pad,
    a.dimRoundingMode,
    false,
    tf.backend_util.convertConv2DDataFormat(a.dataFormat),
  ));
}

let convInstalled = false;

/**
 * Installs our Conv2D, FusedConv2D (bias and ReLU epilogue), Conv2DBackpropInput and
 * Conv2DBackpropFilter on webgpu (once).
 */
export function installConv(): void {
  if (convInstalled || !tf.getKernel("Conv2D", "webgpu")) return;
  convInstalled = true;
  override("Conv2D", ({ inputs, attrs, backend }) => {
    const { x, filter } = inputs as { x: tf.TensorInfo; filter: tf.TensorInfo };
    const a = attrs as unknown as tf.Conv2DAttrs;
    if (!f32(x, filter) || x.shape.length !== 4) return undefined;
    if (!gpuOf(backend).onBuffers(x, filter)) return undefined;
    const s = sameConvOf(x.shape, filter.shape, a);
    if (!s) return undefined;
    return finish(backend, Conv.forward(gpuOf(backend), state.tuning!, s, x, filter, false));
  });
  // tf.fused.conv2d (what Nn.conv2d runs): the bias and a ReLU in the conv's epilogue, one
  // dispatch less per conv and no pass over the output for the add (the forward Adds were
  // 5.9% of an EDSR-baseline ODM step on lavapipe, bench/step.ts --profile).
  override("FusedConv2D", ({ inputs, attrs, backend }) => {
    const { x, filter, bias, preluActivationWeights } = inputs as Record<
      string,
      tf.TensorInfo | undefined
    >;
    const a = attrs as unknown as tf.FusedConv2DAttrs;
    if (!x || !filter || preluActivationWeights) return undefined;
    if (a.activation !== "linear" && a.activation !== "relu") return undefined;
    const o = filter.shape[3];
    if (bias && (bias.shape.at(-1) !== o || tf.util.sizeFromShape(bias.shape) !== o)) {
      return undefined;
    }
    if (!f32(x, filter, ...(bias ? [bias] : [])) || x.shape.length !== 4) return undefined;
    if (!gpuOf(backend).onBuffers(x, filter, ...(bias ? [bias] : []))) return undefined;
    const s = sameConvOf(x.shape, filter.shape, a);
    if (!s) return undefined;
    return finish(
      backend,
      Conv.forward(gpuOf(backend), state.tuning!, s, x, filter, false, {
        bias,
        relu: a.activation === "relu",
      }),
    );
  });
  override("Conv2DBackpropInput", ({ inputs, attrs, backend }) => {
    const { dy, filter } = inputs as { dy: tf.TensorInfo; filter: tf.TensorInfo };
    const a = attrs as unknown as tf.Conv2DBackpropInputAttrs;
    if (!f32(dy, filter) || dy.shape.length !== 4) return undefined;
    if (!gpuOf(backend).onBuffers(dy, filter)) return undefined;
    const s = sameConvOf(a.inputShape, filter.shape, { ...a, dilations: 1 });
    if (!s || dy.shape.some((d, i) => d !== [s.n, s.h, s.w, s.o][i])) return undefined;
    // The input gradient is a forward conv of dy with the flipped, transposed filter.
    const t: Conv.ConvShape = { ...s, i: s.o, o: s.i };
    return finish(backend, Conv.forward(gpuOf(backend), state.tuning!, t, dy, filter, true));
  });
  override("Conv2DBackpropFilter", ({ inputs, attrs, backend }) => {
    const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
    const a = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
    if (!f32(x, dy) || x.shape.length !== 4) return undefined;
    if (!gpuOf(backend).onBuffers(x, dy)) return undefined;
    const s = sameConvOf(x.shape, a.filterShape, { ...a, dilations: 1 });
    if (!s || dy.shape.some((d, i) => d !== [s.n, s.h, s.w, s.o][i])) return undefined;
    return finish(backend, Conv.filterGradient(gpuOf(backend), state.tuning!, s, x, dy));
  });
}

let matMulInstalled = false;

/** Installs our BatchMatMul on webgpu (once). */
export function installMatMul(): void {
  if (matMulInstalled || !tf.getKernel("BatchMatMul", "webgpu")) return;
  matMulInstalled = true;
  override("BatchMatMul", ({ inputs, attrs, backend }) => {
    const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
    if (!f32(a, b) || !gpuOf(backend).onBuffers(a, b)) return undefined;
    const s = MatMul.matMulShape(a.shape, b.shape, transposeA, transposeB);
    if (!s) return undefined;
    return finish(backend, MatMul.matMul(gpuOf(backend), state.tuning!, s, a, b));
  });
}

/** Registers `QatFakeQuant` and `QatFakeQuantGrad` on webgpu and cpu, and the gradient. */
export function installFakeQuant(): void {
  if (tf.getKernel(FQ.FAKE_QUANT, "cpu")) return;
  const attrsOf = (a: unknown) => a as FQ.FakeQuantAttrs;
  tf.registerKernel({ kernelName: FQ.FAKE_QUANT, backendName: "cpu", kernelFunc: FQ.fakeQuantCpu });
  tf.registerKernel({
    kernelName: FQ.FAKE_QUANT_GRAD,
    backendName: "cpu",
    kernelFunc: FQ.fakeQuantGradCpu,
  });
  tf.registerKernel({
    kernelName: FQ.FAKE_QUANT,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, lower, upper } = inputs as Record<string, tf.TensorInfo>;
      return finish(
        backend,
        FQ.fakeQuantGpu(gpuOf(backend), x, lower, upper, attrsOf(attrs).bits),
      )!;
    },
  });
  tf.registerKernel({
    kernelName: FQ.FAKE_QUANT_GRAD,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { dy, x, lower, upper } = inputs as Record<string, tf.TensorInfo>;
      const parts = state.tuning?.reduceParts ?? 1024;
      return finish(
        backend,
        FQ.fakeQuantGradGpu(
          gpuOf(backend),
          dy,
          x,
          lower,
          upper,
          attrsOf(attrs).bits,
          parts,
        ),
      )!;
    },
  });
  tf.registerGradient({
    kernelName: FQ.FAKE_QUANT,
    inputsToSave: ["x", "lower", "upper"],
    gradFunc: (dy, saved, attrs) => {
      const [x, lower, upper] = saved;
      const [dx, dl, du] = tf.engine().runKernel(
        FQ.FAKE_QUANT_GRAD,
        { dy: dy as tf.Tensor, x, lower, upper },
        attrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
      return { x: () => dx, lower: () => dl, upper: () => du };
    },
  });
}

/** Registers `QatAdam` (the fused Adam update, lib/internal/kernels/adam.ts) on webgpu and cpu. */
export function installAdam(): void {
  if (tf.getKernel(Adam.ADAM, "cpu")) return;
  tf.registerKernel({ kernelName: Adam.ADAM, backendName: "cpu", kernelFunc: Adam.adamCpu });
  tf.registerKernel({
    kernelName: Adam.ADAM,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { g, m, v } = inputs as Record<string, tf.TensorInfo>;
      return finish(
        backend,
        Adam.adamGpu(gpuOf(backend), g, m, v, attrs as unknown as Adam.AdamAttrs),
      )!;
    },
  });
}

let sumInstalled = false;

/** Installs our `Sum` over every axis but the last (lib/internal/kernels/reduce.ts) on webgpu. */
export function installSum(): void {
  if (sumInstalled || !tf.getKernel("Sum", "webgpu")) return;
  sumInstalled = true;
  override("Sum", ({ inputs, attrs, backend }) => {
    const { x } = inputs as { x: tf.TensorInfo };
    const { axis, keepDims } = attrs as unknown as tf.SumAttrs;
    if (!f32(x) || !gpuOf(backend).onBuffers(x)) return undefined;
    const d = Reduce.columnSumShape(x.shape, axis);
    const t = state.tuning!;
    if (!d || d.rows * d.cols * 4 > t.maxBinding) return undefined;
    const shape = keepDims ? [...x.shape.slice(0, -1).map(() => 1), d.cols] : [d.cols];
    return finish(
      backend,
      Reduce.columnSum(gpuOf(backend), x, d, shape, t.filterInvocations),
    );
  });
}

/** Registers `QatCoopMerge` (Eq. 6 for one tensor, lib/internal/kernels/merge.ts) on webgpu and cpu. */
export function installCoopMerge(): void {
  if (tf.getKernel(CM.COOP_MERGE, "cpu")) return;
  tf.registerKernel({ kernelName: CM.COOP_MERGE, backendName: "cpu", kernelFunc: CM.coopMergeCpu });
  tf.registerKernel({
    kernelName: CM.COOP_MERGE,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { r, m } = inputs as Record<string, tf.TensorInfo>;
      const parts = state.tuning?.reduceParts ?? 1024;
      return finish(
        backend,
        CM.coopMergeGpu(
          gpuOf(backend),
          r,
          m,
          attrs as unknown as CM.CoopMergeAttrs,
          parts,
        ),
      )!;
    },
  });
  tf.registerKernel({
    kernelName: CM.MERGE_STATS,
    backendName: "cpu",
    kernelFunc: CM.mergeStatsCpu,
  });
  tf.registerKernel({
    kernelName: CM.MERGE_STATS,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { r, m, g } = inputs as Record<string, tf.TensorInfo>;
      const parts = state.tuning?.reduceParts ?? 1024;
      const a = attrs as unknown as CM.MergeStatsAttrs;
      return finish(backend, CM.mergeStatsGpu(gpuOf(backend), r, m, g, a, parts))!;
    },
  });
}

/** Registers `QatUpsampleNearest` and its gradient kernel (lib/internal/kernels/upsample.ts). */
export function installUpsample(): void {
  if (tf.getKernel(Up.UPSAMPLE, "cpu")) return;
  const factor = (a: unknown) => (a as Up.UpsampleAttrs).factor;
  tf.registerKernel({ kernelName: Up.UPSAMPLE, backendName: "cpu", kernelFunc: Up.upsampleCpu });
  tf.registerKernel({
    kernelName: Up.UPSAMPLE_GRAD,
    backendName: "cpu",
    kernelFunc: Up.upsampleGradCpu,
  });
  tf.registerKernel({
    kernelName: Up.UPSAMPLE,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x } = inputs as Record<string, tf.TensorInfo>;
      return finish(backend, Up.upsampleGpu(gpuOf(backend), x, factor(attrs)))!;
    },
  });
  tf.registerKernel({
    kernelName: Up.UPSAMPLE_GRAD,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { dy } = inputs as Record<string, tf.TensorInfo>;
      return finish(backend, Up.upsampleGradGpu(gpuOf(backend), dy, factor(attrs)))!;
    },
  });
  tf.registerGradient({
    kernelName: Up.UPSAMPLE,
    gradFunc: (dy, _saved, attrs) => ({
      x: () =>
        tf.engine().runKernel(Up.UPSAMPLE_GRAD, { dy: dy as tf.Tensor }, {
          factor: factor(attrs),
        }) as tf.Tensor,
    }),
  });
}

let concatInstalled = false;

/** Installs our float32 `Concat` and `SplitV` (lib/internal/kernels/concat.ts) on webgpu. */
export function installConcat(): void {
  if (concatInstalled || !tf.getKernel("Concat", "webgpu")) return;
  concatInstalled = true;
  const fits = (shape: readonly number[]) => {
    const n = tf.util.sizeFromShape([...shape]);
    return n > 0 && n * 4 <= state.tuning!.maxBinding;
  };
  override("Concat", ({ inputs, attrs, backend }) => {
    const xs = Object.values(inputs) as tf.TensorInfo[];
    if (xs.length < 2 || !f32(...xs) || !gpuOf(backend).onBuffers(...xs)) return undefined;
    if (!xs.every((x) => fits(x.shape) && x.shape.length === xs[0].shape.length)) {
      return undefined;
    }
    const axis = tf.util.parseAxisParam((attrs as unknown as tf.ConcatAttrs).axis, xs[0].shape)[0];
    const total = xs.reduce((n, x) => n + tf.util.sizeFromShape(x.shape), 0);
    if (total * 4 > state.tuning!.maxBinding) return undefined;
    return finish(backend, Concat.concat(gpuOf(backend), xs, axis));
  });
  override("SplitV", ({ inputs, attrs, backend }) => {
    const { x } = inputs as { x: tf.TensorInfo };
    const a = attrs as unknown as tf.SplitVAttrs;
    if (!f32(x) || !fits(x.shape) || !gpuOf(backend).onBuffers(x)) return undefined;
    const axis = tf.util.parseAxisParam(a.axis, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x, a.numOrSizeSplits, axis);
    return finish(backend, Concat.split(gpuOf(backend), x, sizes, axis));
  });
}

let transposeInstalled = false;

/** Installs our float32 `Transpose` (lib/internal/kernels/transpose.ts) on webgpu. */
export function installTranspose(): void {
  if (transposeInstalled || !tf.getKernel("Transpose", "webgpu")) return;
  transposeInstalled = true;
  override("Transpose", ({ inputs, attrs, backend }) => {
    const { x } = inputs as { x: tf.TensorInfo };
    const { perm } = attrs as unknown as tf.TransposeAttrs;
    if (!f32(x) || !gpuOf(backend).onBuffers(x)) return undefined;
    if (tf.util.sizeFromShape(x.shape) * 4 > state.tuning!.maxBinding) return undefined;
    return finish(backend, Transpose.transpose(gpuOf(backend), x, perm));
  });
}

/** Registers `QatDiffNorm` and `QatDiffNormGrad` (lib/internal/kernels/diff_norm.ts) and the gradient. */
export function installDiffNorm(): void {
  if (tf.getKernel(DN.DIFF_NORM, "cpu")) return;
  tf.registerKernel({ kernelName: DN.DIFF_NORM, backendName: "cpu", kernelFunc: DN.diffNormCpu });
  tf.registerKernel({
    kernelName: DN.DIFF_NORM_GRAD,
    backendName: "cpu",
    kernelFunc: DN.diffNormGradCpu,
  });
  tf.registerKernel({
    kernelName: DN.DIFF_NORM,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, q } = inputs as Record<string, tf.TensorInfo>;
      const eps = (attrs as unknown as DN.DiffNormAttrs).eps;
      const parts = state.tuning?.reduceParts ?? 1024;
      return finish(backend, DN.diffNormGpu(gpuOf(backend), x, q, eps, parts))!;
    },
  });
  tf.registerKernel({
    kernelName: DN.DIFF_NORM_GRAD,
    backendName: "webgpu",
    kernelFunc: ({ inputs, backend }) => {
      const { dy, x, q, n } = inputs as Record<string, tf.TensorInfo>;
      return finish(backend, DN.diffNormGradGpu(gpuOf(backend), dy, x, q, n))!;
    },
  });
  tf.registerGradient({
    kernelName: DN.DIFF_NORM,
    inputsToSave: ["x", "q"],
    outputsToSave: [true],
    gradFunc: (dy, saved) => {
      const [x, q, n] = saved;
      const [dx, dq] = tf.engine().runKernel(
        DN.DIFF_NORM_GRAD,
        { dy: dy as tf.Tensor, x, q, n },
        {},
      ) as tf.Tensor[];
      return { x: () => dx, q: () => dq };
    },
  });
}
