/**
 * Complexity of a model under a quantization scheme: storage and BitOPs, as Table 6 of the ODM
 * paper reports them (SPEC §9). Everything is computed by walking the model's layers in forward
 * order, tracking the spatial size; no number is looked up in a table.
 *
 * The counting rule (it reproduces the paper's EDSR numbers to 0.1T / 0.1K):
 *
 * - **Resolution.** The walk starts at the LR size, `output / scale`; `pixelShuffle` and
 *   `upsampleNearest` multiply it by their `meta.factor`. At the end it must equal the output
 *   size (otherwise the model does not upscale by `scale` and {@link of} throws).
 * - **Conv FLOPs** = 2·MACs + one add per output element for the bias, with
 *   MACs = H·W·k²·C_in·C_out at the layer's resolution ("same" padding, stride 1).
 *   BitOPs = 2·MACs · b_w · b_a + bias adds · 32 · 32: the bias is not quantized (SPEC §1), so
 *   its adds run at full precision. (Charging them b_w·b_a instead gives EDSR W2A2 214.8T,
 *   0.12% under the paper's 215.1T; option `bias: "layer"`.)
 * - **Elementwise adds**: one FLOP per element for every skip addition: a `residual` (EDSR's 16
 *   block skips and the body skip; RDN's RDB skips) and RDN's global skip `gff(…) + sfe1(x)`,
 *   at the resolution and channel count where they happen. A `resScale ≠ 1` adds one multiply.
 *   (`skips: false` leaves them out.)
 * - **Free**: ReLU, pixel shuffle, nearest upsampling, concatenation (RDN's dense connections
 *   and the concat before GFF are memory moves, no arithmetic; `concat: true` counts one op
 *   per element written).
 * - **Mean shift**: EDSR's two MeanShift layers are 3 adds per pixel (at the LR input and the
 *   HR output). They are NOT counted by default: the paper's 527.1T is matched without them
 *   (they add 0.0064T at 1920×1080 ×4); `meanShift: true` counts them.
 * - **BitOPs** of a layer = FLOPs · 32 · 32 for FP convs and all elementwise adds; for a
 *   quantized conv as above. A quantizer at 32 bits is identity, so a "quantized" layer at
 *   W32A32 counts as FP.
 * - **Storage** (K, i.e. thousands of 32-bit words) = (Σ quantized weights · b_w / 32 + every
 *   other parameter: biases, FP layers, quantizer parameters l, u, γ) / 1000. Quantizer
 *   parameters are counted from each quantizer's own `defaults()` (ODM: γ for the weights, l
 *   and u for the inputs: 3 per layer); a quantizer at 32 bits stores nothing.
 * - **A quantizer's own cost**: a quantizer with a `cost` (`Quantizer.Overhead`) is charged
 *   what it says instead of its parameter count: DAQ's per-image channel statistics (2 FP32
 *   operations per value, which gives the paper's +0.5T on EDSR W2A2), DDTB's gates (stored
 *   and run at their own 2 bits, their BN at 32). ODM's layer-wise static quantizers add only
 *   their parameters (γ, l, u) at 32 bits.
 *
 * How close it lands (×4, 1920×1080 output, ODM quantizers; `deno task cost`):
 *
 * | model     | storage (K) ours / paper | BitOPs (T) ours / paper        |
 * |-----------|--------------------------|--------------------------------|
 * | EDSR FP32 | 1517.571 / 1517.6        | 526.98 / 527.1 (−0.02%)        |
 * | EDSR W2A2 | 411.747 / 411.7          | 215.10 / 215.1 (+0.002%)       |
 * | RDN FP32  | 22271.107 / 22271.1      | 6034.44 / 6032.9 (+0.03%)      |
 * | RDN W2A2  | 1716.025 / 1716.1        | 237.58 / 236.6 (+0.41%)        |
 *
 * The paper's RDN numbers fit a slightly different convention: 2·MACs only (`bias: "none",
 * skips: false`) gives RDN FP32 6032.86T (−0.001%) but W2A2 236.00T (−0.25%) and EDSR 526.37T
 * / 214.49T (−0.14% / −0.28%); `bias: "layer"` gives RDN W2A2 236.35T (−0.11%, the closest)
 * and EDSR W2A2 214.83T (−0.12%). Counting concatenations moves RDN away (6040.6T, +0.13%;
 * W2A2 243.7T, +3.0%), so they are free.
 *
 * Counting quantizer parameters calls `defaults()` of the quantizers, which makes tfjs scalars
 * (disposed at once); nothing else touches tensors.
 *
 * Leaves of a kind this module does not know (say a future `batchNorm`) have their parameters
 * counted by initialising them, no FLOPs, and are listed in {@link Result.unmodelled}.
 *
 * @example
 * ```ts ignore
 * import * as Cost from "./lib/Cost.ts";
 * import { edsr } from "./models/edsr.ts";
 * const c = Cost.of(edsr({ upscale: 4 }), { outputHeight: 1080, outputWidth: 1920, scale: 4 });
 * c.storageK; // 1517.571
 * c.bitopsT;  // ≈ 527.0
 * ```
 *
 * @module
 */
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import type * as Quantizer from "./Quantizer.ts";
import * as Tree from "./Tree.ts";

/** Options of {@link of}. */
export interface Options {
  /** Height of the SR output in pixels (1080 in Table 6). */
  readonly outputHeight: number;
  /** Width of the SR output in pixels (1920 in Table 6). */
  readonly outputWidth: number;
  /** The model's upscaling factor; the walk starts at `output / scale`. */
  readonly scale: number;
  /**
   * The bias adds of a conv: `"fp"` (default) one add per output element at 32·32 bits, as the
   * bias is not quantized (SPEC §1); `"layer"` at the layer's b_w·b_a; `"none"` not counted.
   */
  readonly bias?: "fp" | "layer" | "none";
  /** Count skip additions (default true). */
  readonly skips?: boolean;
  /** Count concatenations as one op per element written (default false: memory moves). */
  readonly concat?: boolean;
  /** Count the 3 adds per pixel of each mean-shift layer (default false, see the module doc). */
  readonly meanShift?: boolean;
}

/** The cost of one leaf layer or one elementwise addition. */
export interface LayerCost {
  /**
   * Dotted path of the layer; an addition is named `<path of the skip>.+`, a concatenation
   * `<path>.cat`.
   */
  readonly path: string;
  /**
   * `conv2d`, `add`, `concat`, `meanShift`, `relu`, `pixelShuffle`, …; a quantized conv is
   * `conv2d`.
   */
  readonly kind: string;
  /** Spatial size at which the layer runs (its output size for upsampling layers). */
  readonly height: number;
  readonly width: number;
  readonly inChannels: number;
  readonly outChannels: number;
  /** Weight and activation bits (32 = full precision). */
  readonly wbits: number;
  readonly abits: number;
  /** Scalars stored: weights, biases and quantizer parameters. */
  readonly params: number;
  /** Of which quantizer parameters (l, u, γ, …). */
  readonly quantizerParams: number;
  /** Storage in 32-bit words: quantized weights count b_w/32 each, everything else 1. */
  readonly storage: number;
  readonly macs: number;
  readonly flops: number;
  readonly bitops: number;
}

/** The cost of a whole model. */
export interface Result {
  /** Storage in thousands of 32-bit words (the paper's "K"). */
  readonly storageK: number;
  /** BitOPs in units of 10¹² (the paper's "T"). */
  readonly bitopsT: number;
  readonly flops: number;
  readonly bitops: number;
  readonly macs: number;
  /** Stored scalars (all parameters, quantizer parameters included). */
  readonly params: number;
  /** Leaves and additions in forward order. */
  readonly perLayer: ReadonlyArray<LayerCost>;
  /** Paths of leaves whose kind has no FLOP model (counted as 0 FLOPs). */
  readonly unmodelled: ReadonlyArray<string>;
}

/** Stored scalars of a quantizer (0 at 32 bits: identity, nothing stored). */
function quantizerParams(q: Quantizer.Any | undefined): number {
  if (!q || q.bits >= 32) return 0;
  const p = q.defaults();
  const n = Tree.size(p);
  Tree.dispose(p);
  return n;
}

/**
 * What a quantizer stores and computes beyond its layer: its own `cost` where it has one
 * (DDTB's gates, DAQ's run-time statistics), else its parameters at 32 bits and nothing run.
 */
function overhead(
  q: Quantizer.Any | undefined,
  elements: number,
  channels: number,
): Quantizer.Overhead {
  if (!q || q.bits >= 32) return { storage: 0, flops: 0, bitops: 0 };
  return q.cost?.({ elements, channels }) ?? { storage: quantizerParams(q), flops: 0, bitops: 0 };
}

interface Size {
  readonly height: number;
  readonly width: number;
}

const join = (path: string, name: string) => (path === "" ? name : `${path}.${name}`);

/**
 * Storage and BitOPs of `model` for an output of `outputHeight × outputWidth` at ×`scale`.
 * Quantization is read from the model itself (layers wrapped by `Quant.quantize`).
 */
export function of(model: Nn.AnyLayer, opts: Options): Result {
  const { outputHeight: oh, outputWidth: ow, scale } = opts;
  for (const [k, v] of [["outputHeight", oh], ["outputWidth", ow], ["scale", scale]] as const) {
    if (!(Number.isInteger(v) && v > 0)) {
      throw new RangeError(`Cost.of: ${k} must be a positive integer, got ${v}`);
    }
  }
  if (oh % scale !== 0 || ow % scale !== 0) {
    throw new RangeError(`Cost.of: output ${ow}x${oh} is not a multiple of the scale ×${scale}`);
  }
  const out: LayerCost[] = [];
  const unmodelled: string[] = [];

  const bias = opts.bias ?? "fp";
  const elementwise = (
    kind: "add" | "concat",
    path: string,
    size: Size,
    channels: number,
    perElement: number,
  ): void => {
    const flops = perElement * size.height * size.width * channels;
    out.push({
      path: `${path}.${kind === "add" ? "+" : "cat"}`,
      kind,
      ...size,
      inChannels: channels,
      outChannels: channels,
      wbits: 32,
      abits: 32,
      params: 0,
      quantizerParams: 0,
      storage: 0,
      macs: 0,
      flops,
      bitops: flops * 32 * 32,
    });
  };

  const leaf = (path: string, layer: Nn.AnyLayer, size: Size): Size => {
    const q = Quant.isQuantized(layer) ? layer : undefined;
    const inner = q ? q.inner : layer;
    const wbits = Math.min(32, q?.spec.weight?.bits ?? 32);
    const abits = Math.min(32, q?.spec.input?.bits ?? q?.spec.inputBits ?? 32);
    const pixels = size.height * size.width;
    const own = [
      overhead(q?.spec.weight, 0, 0),
      overhead(q?.spec.input, pixels * (inner.inChannels as number), inner.inChannels as number),
    ];
    const qp = own[0].storage + own[1].storage;
    const base = {
      path,
      kind: inner.kind,
      inChannels: inner.inChannels as number,
      outChannels: inner.outChannels as number,
      wbits,
      abits,
    };
    // The run-time arithmetic of a dynamic activation quantizer (DAQ, DDTB's gate), with the
    // bit-widths its own `cost` gives.
    const extra = own[1].flops;
    const extraBitops = own[1].bitops;
    // A conv or linear layer with `weights` weights per output pixel (token): 2·MACs FLOPs,
    // one bias add per output element (at 32 bits unless `bias: "layer"`), and the run-time
    // statistics of a dynamic activation quantizer (DAQ) at 32 bits.
    const weighted = (weights: number): Size => {
      const biases = inner.meta.bias === false ? 0 : base.outChannels;
      const macs = pixels * weights;
      const adds = biases > 0 && bias !== "none" ? pixels * base.outChannels : 0;
      out.push({
        ...base,
        ...size,
        params: weights + biases + qp,
        quantizerParams: qp,
        storage: (weights * wbits) / 32 + biases + qp,
        macs,
        flops: 2 * macs + adds + extra,
        bitops: 2 * macs * wbits * abits + adds * (bias === "fp" ? 32 * 32 : wbits * abits) +
          extraBitops,
      });
      return size;
    };
    switch (inner.kind) {
      case "conv2d": {
        const k = inner.meta.kernel ?? 3;
        return weighted(k * k * base.inChannels * base.outChannels);
      }
      case "pixelShuffle":
      case "upsampleNearest": {
        const r = inner.meta.factor;
        if (!(typeof r === "number" && Number.isInteger(r) && r > 0)) {
          throw new Error(`Cost.of: ${inner.kind} at "${path}" has no integer meta.factor`);
        }
        const next = { height: size.height * r, width: size.width * r };
        out.push({ ...base, ...next, ...zero(qp) });
        return next;
      }
      case "meanShift": {
        const flops = opts.meanShift ? pixels * 3 : 0;
        out.push({ ...base, ...size, ...zero(qp), flops, bitops: flops * 32 * 32 });
        return size;
      }
      // A linear layer is a 1×1 conv over the tokens (one token per pixel in SwinIR).
      case "linear":
        return weighted(base.inChannels * base.outChannels);
      case "layerNorm":
      case "batchNorm":
      case "prelu": {
        // Per-channel affine maps: their parameters are stored at 32 bits; their few
        // elementwise operations per value are not counted (as for ReLU). Batch-norm running
        // statistics are stored too (needed at inference unless folded).
        const n = Nn.parameterCount(inner);
        out.push({ ...base, ...size, ...zero(qp), params: n, storage: n });
        return size;
      }
      case "relu":
      case "gelu":
      case "point": // an identity mark: its activation quantizer's parameters and arithmetic
        out.push({ ...base, ...size, ...zero(qp), flops: extra, bitops: extraBitops });
        return size;
      default: {
        const n = Nn.parameterCount(inner) + qp;
        unmodelled.push(path);
        out.push({ ...base, ...size, ...zero(qp), params: n, storage: n });
        return size;
      }
    }
  };

  const visit = (path: string, layer: Nn.AnyLayer, size: Size): Size => {
    if (layer.children.length === 0) return leaf(path, layer, size);
    const skips = opts.skips ?? true;
    let s = size;
    for (const [i, [name, child]] of layer.children.entries()) {
      s = visit(join(path, name), child, s);
      // RDN's global residual: F_DF = gff(…) + F₋₁, at the resolution of the trunk.
      if (layer.kind === "rdn" && name === "gff" && skips) {
        elementwise("add", join(path, name), s, child.outChannels, 1);
      }
      // A dense block writes [features, y_i] after each step.
      if (layer.kind === "denseBlock" && opts.concat) {
        const growth = layer.meta.growth as number;
        elementwise("concat", join(path, name), s, layer.inChannels + (i + 1) * growth, 1);
      }
    }
    // Window attention: its children are the qkv and proj linears; the attention itself
    // (QKᵀ and attn·V, FP32: not quantized) costs N·C MACs each per token for windows of
    // N = window² tokens, and the relative position bias table is a stored parameter.
    if (layer.kind === "windowAttention") {
      const n = (layer.meta.window as number) ** 2;
      const heads = layer.meta.heads as number;
      const c = layer.inChannels as number;
      const table = (2 * (layer.meta.window as number) - 1) ** 2 * heads;
      const macs = s.height * s.width * 2 * n * c;
      out.push({
        path: `${path}.attention`,
        kind: "attention",
        ...s,
        inChannels: c,
        outChannels: c,
        wbits: 32,
        abits: 32,
        params: table,
        quantizerParams: 0,
        storage: table,
        macs,
        flops: 2 * macs,
        bitops: 2 * macs * 32 * 32,
      });
    }
    if (layer.kind === "concatOutputs" && opts.concat) {
      elementwise("concat", path, s, layer.outChannels, 1);
    }
    if (layer.kind === "residual" && skips) {
      if (s.height !== size.height || s.width !== size.width) {
        throw new Error(`Cost.of: the residual at "${path}" changes the spatial size`);
      }
      const resScale = (layer.meta.resScale as number | undefined) ?? 1;
      elementwise("add", path, s, layer.outChannels, resScale === 1 ? 1 : 2);
    }
    return s;
  };

  const end = visit("", model, { height: oh / scale, width: ow / scale });
  if (end.height !== oh || end.width !== ow) {
    throw new RangeError(
      `Cost.of: the model maps ${ow / scale}x${oh / scale} to ${end.width}x${end.height}, ` +
        `not to ${ow}x${oh}: it does not upscale by ×${scale}`,
    );
  }
  const sum = (f: (c: LayerCost) => number) => out.reduce((a, c) => a + f(c), 0);
  const storage = sum((c) => c.storage);
  const bitops = sum((c) => c.bitops);
  return {
    storageK: storage / 1000,
    bitopsT: bitops / 1e12,
    flops: sum((c) => c.flops),
    bitops,
    macs: sum((c) => c.macs),
    params: sum((c) => c.params),
    perLayer: out,
    unmodelled,
  };
}

/** A layer with nothing but its quantizer parameters (if any). */
const zero = (qp: number) => ({
  params: qp,
  quantizerParams: qp,
  storage: qp,
  macs: 0,
  flops: 0,
  bitops: 0,
});

/** Storage and BitOPs of each part of a model, summed by the first `depth` path segments. */
export function byPart(r: Result, depth = 1): Array<{
  readonly part: string;
  readonly storageK: number;
  readonly bitopsT: number;
}> {
  const parts = new Map<string, { storage: number; bitops: number }>();
  for (const c of r.perLayer) {
    const key = c.path.split(".").slice(0, depth).join(".").replace(/\.\+$/, "");
    const p = parts.get(key) ?? { storage: 0, bitops: 0 };
    p.storage += c.storage;
    p.bitops += c.bitops;
    parts.set(key, p);
  }
  return [...parts].map(([part, p]) => ({
    part,
    storageK: p.storage / 1000,
    bitopsT: p.bitops / 1e12,
  }));
}
