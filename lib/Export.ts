/**
 * Export of a trained model to ONNX (lib/Onnx.ts): a standard graph (opset 25, or 21) that any
 * ONNX runtime runs, NCHW RGB in [0, 255] in and out, any input size (the batch, height and
 * width are named dimensions).
 *
 * Full-precision layers are FP32 initializers. A quantized layer (Eq. 1 of the ODM paper,
 * SPEC §1) becomes exactly what the fake-quant forward computes:
 *
 * - **Weights** on the grid `w = k·s + l`, `s = (u − l)/(2^b − 1)`, `k ∈ [0, 2^b − 1]` (symmetric
 *   weights have `l = −u` and no zero level, so an integer zero point cannot express them): the
 *   codes `k` are a UINT2 (1–2 bits, opset 25), UINT4 (3–4 bits, and 1–2 bits at opset 21) or
 *   UINT8 initializer, `DequantizeLinear(k, s, 0)` gives `k·s` and `Add(l)` the weight, the
 *   same float32 operations as the fake-quant kernel. The range is evaluated once, from the
 *   trained parameters (`Quantizer.bounds`; for `clipCorrected` the percentile of |W| times γ),
 *   and the codes are read back from the kernel's own output, so the weights are the ones the
 *   training forward uses.
 * - **Input activations** `q = round((clip(x, l, u) − l)/s)·s + l` (round half to even):
 *   `Sub(l) → Clip(0, u − l) → QuantizeLinear(s, 0, uint8) → DequantizeLinear(s, 0) → Add(l)`.
 *   `clip(x − l, 0, fl(u − l))` equals `fl(clip(x, l, u) − l)` for every float32 x, and
 *   QuantizeLinear divides and rounds half to even, so this is the kernel's arithmetic step by
 *   step (`activations: "float"` writes `Div → Round → Mul` instead of the Q/DQ pair).
 *
 * Quantizers whose range is computed from each input at run time (per-batch max or percentile,
 * DAQ's per-image statistics, DDTB's gates: `Quantizer.dynamic`) are refused, as are
 * quantizers whose output is not an Eq. 1 grid (checked numerically at export, e.g. PAMS's
 * zero-level grid): {@link ExportError} names the layer and the reason.
 *
 * Layers are translated by kind: conv2d, linear, relu, gelu, prelu, batch and layer norm,
 * pixel shuffle (`DepthToSpace`, DCR like tfjs), nearest upsampling, mean shift, point,
 * sequential, residual (with its points), dense blocks, concatenations, RDN's trunk, window
 * attention with the shifted-window mask computed in the graph for any size, Swin blocks and
 * SwinIR's padding and crop. Values keep the layout they were made in (NCHW for convolutions,
 * NHWC for linear layers and norms over channels) and are transposed only where an operator
 * needs the other one.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Nn from "./Nn.ts";
import * as Onnx from "./Onnx.ts";
import * as Quant from "./Quant.ts";
import type * as Quantizer from "./Quantizer.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";
import { RGB_MEAN } from "../models/edsr.ts";

/** The model cannot be exported; names the layer and why. */
export class ExportError extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`cannot export ${path === "" ? "the model" : `"${path}"`}: ${reason}`);
    this.name = "ExportError";
  }
}

const f = Math.fround;

/** An Eq. 1 grid: `2^bits` levels `k·s + lower`, `s = (upper − lower)/(2^bits − 1)`. */
export interface Grid {
  readonly bits: number;
  readonly lower: number;
  readonly upper: number;
}

/** The float32 step of a grid, computed as the fake-quant kernel computes it. */
export const stepOf = (g: Grid): number => f(f(g.upper - g.lower) / (2 ** g.bits - 1));

/** Eq. 1 for one value in float32 arithmetic (the kernel's reference). */
export function quantize(x: number, g: Grid): number {
  const s = stepOf(g);
  const c = Math.min(Math.max(f(x), f(g.lower)), f(g.upper));
  return f(f(roundHalfEven(f(f(c - g.lower) / s)) * s) + g.lower);
}

const roundHalfEven = (t: number) => {
  const fl = Math.floor(t);
  const d = t - fl;
  return d > 0.5 ? fl + 1 : d < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
};

/** A quantized layer's weight: its grid, and the code of every weight (our layout order). */
export interface WeightCodes extends Grid {
  readonly codes: Uint8Array;
  readonly shape: ReadonlyArray<number>;
}

/** What the exporter (and lib/Packed.ts) reads from one quantized layer. */
export interface LayerQuant {
  readonly path: string;
  readonly kind: string;
  readonly weight?: WeightCodes;
  readonly input?: Grid;
}

/** Host copies of a model's parameters and the grids of its quantized layers. */
export interface Collected {
  readonly values: ReadonlyMap<string, Float32Array>;
  readonly shapes: ReadonlyMap<string, ReadonlyArray<number>>;
  readonly layers: ReadonlyMap<string, LayerQuant>;
}

const subAt = (p: Params, path: string): Params =>
  path === "" ? p : path.split(".").reduce((node, k) => Tree.sub(node, k), p);

const scalarOf = async (t: tf.Tensor) => (await t.data())[0];

/**
 * Reads a model's parameters to the host and evaluates every quantized layer's grids: weight
 * codes from the fake-quant kernel's output, activation bounds from the quantizer's parameters.
 * Throws {@link ExportError} for a quantizer that is not a static Eq. 1 grid.
 */
export async function collect(model: Nn.AnyLayer, params: Params): Promise<Collected> {
  const values = new Map<string, Float32Array>();
  const shapes = new Map<string, ReadonlyArray<number>>();
  for (const [p, t] of Tree.flatten(params)) {
    values.set(p, Float32Array.from(await t.data()));
    shapes.set(p, t.shape);
  }
  const layers = new Map<string, LayerQuant>();
  for (const { path, layer } of Quant.layers(model)) {
    const p = subAt(params, path);
    const { weight, input } = layer.spec;
    let w: WeightCodes | undefined;
    if (weight && weight.bits < 32) w = await weightCodes(path, weight, p);
    let a: Grid | undefined;
    if (input && input.bits < 32) a = await inputGrid(path, input, p);
    layers.set(path, {
      path,
      kind: String(layer.meta.inner),
      ...(w ? { weight: w } : {}),
      ...(a ? { input: a } : {}),
    });
  }
  return { values, shapes, layers };
}

async function weightCodes(path: string, q: Quantizer.Any, p: Params): Promise<WeightCodes> {
  const W = Tree.leaf(p, "weight");
  const wq = (p.wq ?? {}) as Params;
  const [lower, upper, out] = await (async () => {
    const b = tf.tidy(() => {
      const r = q.bounds(wq, W);
      return [tf.keep(r.lower.clone()), tf.keep(r.upper.clone())];
    });
    const fq = tf.tidy(() => q.apply(wq, W));
    const r = [await scalarOf(b[0]), await scalarOf(b[1]), Float32Array.from(await fq.data())];
    tf.dispose([...b, fq]);
    return r as [number, number, Float32Array];
  })();
  const g: Grid = { bits: q.bits, lower, upper };
  const s = stepOf(g);
  const top = 2 ** q.bits - 1;
  const codes = new Uint8Array(out.length);
  for (let i = 0; i < out.length; i++) {
    const k = Math.round((out[i] - lower) / s);
    const onGrid = k >= 0 && k <= top &&
      Math.abs(f(f(k * s) + lower) - out[i]) <= 1e-5 * (upper - lower);
    if (!onGrid) {
      throw new ExportError(
        path,
        `its weight quantizer ${q.name} gives ${out[i]}, which is not on the Eq. 1 grid of ` +
          `${2 ** q.bits} levels over [${lower}, ${upper}] (only Eq. 1 grids can be exported: ` +
          "a zero-level grid such as PAMS's is not one)",
      );
    }
    codes[i] = k;
  }
  return { ...g, codes, shape: W.shape };
}

async function inputGrid(path: string, q: Quantizer.Any, p: Params): Promise<Grid> {
  if (q.dynamic !== false) {
    throw new ExportError(
      path,
      `its input quantizer ${q.name} takes its range from each input at run time (per-batch ` +
        "statistics, DAQ's per-image normalisation or DDTB's gate): a static graph cannot " +
        "reproduce it",
    );
  }
  const aq = (p.aq ?? {}) as Params;
  const probe = tf.zeros([1]);
  const b = tf.tidy(() => {
    const r = q.bounds(aq, probe);
    return [tf.keep(r.lower.clone()), tf.keep(r.upper.clone())];
  });
  const g: Grid = { bits: q.bits, lower: await scalarOf(b[0]), upper: await scalarOf(b[1]) };
  tf.dispose([...b, probe]);
  // The quantizer must compute Eq. 1 over these bounds: probe it across and beyond the range.
  const n = 1024;
  const span = g.upper - g.lower;
  const xs = Float32Array.from(
    { length: n },
    (_, i) => g.lower - span / 2 + (2 * span * i) / (n - 1),
  );
  const x = tf.tensor1d(xs);
  const y = tf.tidy(() => q.apply(aq, x));
  const ys = await y.data();
  tf.dispose([x, y]);
  for (let i = 0; i < n; i++) {
    if (Math.abs(ys[i] - quantize(xs[i], g)) > 1e-5 * Math.max(span, 1e-6)) {
      throw new ExportError(
        path,
        `its input quantizer ${q.name} maps ${xs[i]} to ${ys[i]}, not to Eq. 1's ` +
          `${quantize(xs[i], g)} on [${g.lower}, ${g.upper}] with ${2 ** q.bits} levels`,
      );
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Graph emission.

type Layout = "nchw" | "nhwc";

/** A value of the graph: its name and, for feature maps, the layout it is in. */
interface V {
  readonly name: string;
  readonly layout: Layout;
}

/** Options of {@link toOnnx}. */
export interface Options {
  /** 25 (default: 2-bit codes as UINT2) or 21 (2-bit codes in UINT4). */
  readonly opset?: 21 | 25;
  /** `qdq` (default): activations through QuantizeLinear/DequantizeLinear; `float`: Div/Round/Mul. */
  readonly activations?: "qdq" | "float";
  /**
   * The pixel range of a SwinIR model (its `rgbRange` option, default 255: models/swinir.ts
   * does not record it in the layer's meta, so the caller passes the recipe's).
   */
  readonly rgbRange?: number;
  /** The graph's name. */
  readonly name?: string;
  /** Extra `metadata_props`. */
  readonly metadata?: Readonly<Record<string, string>>;
}

const join = (path: string, name: string) => (path === "" ? name : `${path}.${name}`);
const INT64_MAX = Number.MAX_SAFE_INTEGER;

class Emitter {
  readonly g = new Onnx.Graph();
  private readonly masks = new Map<string, string>();
  constructor(
    readonly c: Collected,
    readonly opts: Required<Pick<Options, "opset" | "activations" | "rgbRange">>,
  ) {}

  /** The host values of parameter `path`. */
  values(path: string): Float32Array {
    const v = this.c.values.get(path);
    if (!v) throw new ExportError(path, "parameter missing");
    return v;
  }
  shape(path: string): ReadonlyArray<number> {
    return this.c.shapes.get(path)!;
  }
  param(path: string, values = this.values(path), dims = this.shape(path)): string {
    return this.g.initializer(path, Onnx.DataType.FLOAT, dims, Onnx.floatRaw(values));
  }

  to(v: V, layout: Layout): V {
    if (v.layout === layout) return v;
    const perm = layout === "nchw" ? [0, 3, 1, 2] : [0, 2, 3, 1];
    return {
      name: this.g.op("Transpose", [v.name], `${v.name}/to_${layout}`, { perm: { ints: perm } }),
      layout,
    };
  }

  binary(op: string, a: V, b: V, name: string): V {
    const bb = this.to(b, a.layout);
    return { name: this.g.op(op, [a.name, bb.name], name), layout: a.layout };
  }

  // ---- quantization

  /** The input quantizer of a layer as Q/DQ (or float) nodes. */
  quantInput(x: V, a: Grid, path: string): V {
    const g = this.g;
    const s = stepOf(a);
    const lower = g.scalar(a.lower);
    const d = g.op("Sub", [x.name, lower], `${path}.aq`);
    const c = g.op("Clip", [d, g.scalar(0), g.scalar(f(a.upper - a.lower))], `${path}.aq`);
    let k: string;
    if (this.opts.activations === "qdq") {
      const zp = g.code(0, Onnx.DataType.UINT8);
      const q = g.op("QuantizeLinear", [c, g.scalar(s), zp], `${path}.aq`);
      k = g.op("DequantizeLinear", [q, g.scalar(s), zp], `${path}.aq`);
    } else {
      const r = g.op("Round", [g.op("Div", [c, g.scalar(s)], `${path}.aq`)], `${path}.aq`);
      k = g.op("Mul", [r, g.scalar(s)], `${path}.aq`);
    }
    return { name: g.op("Add", [k, lower], `${path}.aq`), layout: x.layout };
  }

  /** A quantized weight: codes → DequantizeLinear → Add(lower), in `dims` order given by `order`. */
  quantWeight(
    path: string,
    w: WeightCodes,
    dims: ReadonlyArray<number>,
    order: (i: number) => number,
  ): string {
    const g = this.g;
    const n = w.codes.length;
    const codes = new Uint8Array(n);
    for (let i = 0; i < n; i++) codes[i] = w.codes[order(i)];
    const narrow = w.bits <= 2 && this.opts.opset >= 25;
    const [type, width] = narrow
      ? [Onnx.DataType.UINT2, 2]
      : w.bits <= 4
      ? [Onnx.DataType.UINT4, 4]
      : [Onnx.DataType.UINT8, 8];
    const init = g.initializer(`${path}.weight.codes`, type, dims, Onnx.packBits(codes, width));
    const dq = g.op("DequantizeLinear", [init, g.scalar(stepOf(w)), g.code(0, type)], `${path}.wq`);
    return g.op("Add", [dq, g.scalar(w.lower)], `${path}.wq`);
  }

  // ---- leaves

  conv(path: string, x: V, layer: Nn.AnyLayer, q?: LayerQuant): V {
    const shape = this.shape(`${path}.weight`); // HWIO
    const [kh, kw, ci, co] = shape;
    const oihw = (i: number) => {
      // i indexes OIHW; return the HWIO index.
      const xw = i % kw, yh = Math.floor(i / kw) % kh, ii = Math.floor(i / (kw * kh)) % ci;
      const o = Math.floor(i / (kw * kh * ci));
      return ((yh * kw + xw) * ci + ii) * co + o;
    };
    const dims = [co, ci, kh, kw];
    let w: string;
    if (q?.weight) w = this.quantWeight(path, q.weight, dims, oihw);
    else {
      const src = this.values(`${path}.weight`);
      const out = new Float32Array(src.length);
      for (let i = 0; i < out.length; i++) out[i] = src[oihw(i)];
      w = this.param(`${path}.weight`, out, dims);
    }
    const inputs = [this.to(x, "nchw").name, w];
    if (layer.meta.bias !== false) inputs.push(this.param(`${path}.bias`));
    const pad = (kh - 1) / 2;
    return {
      name: this.g.op("Conv", inputs, path, {
        kernel_shape: { ints: [kh, kw] },
        pads: { ints: [pad, pad, pad, pad] },
      }),
      layout: "nchw",
    };
  }

  linear(path: string, x: V, layer: Nn.AnyLayer, q?: LayerQuant): V {
    const [inF, outF] = this.shape(`${path}.weight`);
    const w = q?.weight
      ? this.quantWeight(path, q.weight, [inF, outF], (i) => i)
      : this.param(`${path}.weight`);
    const xv = x.layout === "nhwc" ? x : this.to(x, "nhwc");
    let y = this.g.op("MatMul", [xv.name, w], path);
    if (layer.meta.bias !== false) y = this.g.op("Add", [y, this.param(`${path}.bias`)], path);
    return { name: y, layout: "nhwc" };
  }

  /** A per-channel constant shaped for `layout` (`[1, C, 1, 1]` or `[C]`). */
  channelConst(
    values: Float32Array | ReadonlyArray<number>,
    layout: Layout,
    name?: string,
  ): string {
    const v = Float32Array.from(values);
    const dims = layout === "nchw" ? [1, v.length, 1, 1] : [v.length];
    return name
      ? this.g.initializer(name, Onnx.DataType.FLOAT, dims, Onnx.floatRaw(v))
      : this.g.floats(v, dims);
  }

  leaf(path: string, layer: Nn.AnyLayer, x: V): V {
    const g = this.g;
    const q = Quant.isQuantized(layer) ? this.c.layers.get(path) : undefined;
    const inner = Quant.isQuantized(layer) ? layer.inner : layer;
    const xin = q?.input ? this.quantInput(x, q.input, path) : x;
    switch (inner.kind) {
      case "conv2d":
        return this.conv(path, xin, inner, q);
      case "linear":
        return this.linear(path, xin, inner, q);
      case "point":
        return xin;
      case "relu":
        return { name: g.op("Relu", [xin.name], path), layout: xin.layout };
      case "gelu": {
        // x · 0.5 · (1 + erf(x / √2)), in the order of Nn.gelu.
        const half = g.op("Mul", [xin.name, g.scalar(0.5)], path);
        const e = g.op("Erf", [g.op("Mul", [xin.name, g.scalar(Math.SQRT1_2)], path)], path);
        return {
          name: g.op("Mul", [half, g.op("Add", [e, g.scalar(1)], path)], path),
          layout: xin.layout,
        };
      }
      case "prelu": {
        const v = this.to(xin, "nchw");
        const slope = this.values(`${path}.weight`);
        const s = slope.length === 1 ? this.param(`${path}.weight`) : this.g.initializer(
          `${path}.weight`,
          Onnx.DataType.FLOAT,
          [slope.length, 1, 1],
          Onnx.floatRaw(slope),
        );
        return { name: g.op("PRelu", [v.name, s], path), layout: "nchw" };
      }
      case "pixelShuffle": {
        const v = this.to(xin, "nchw");
        return {
          name: g.op("DepthToSpace", [v.name], path, {
            blocksize: { int: inner.meta.factor as number },
            mode: { string: "DCR" },
          }),
          layout: "nchw",
        };
      }
      case "upsampleNearest": {
        const r = inner.meta.factor as number;
        const v = this.to(xin, "nchw");
        return {
          name: g.op("Resize", [v.name, "", g.floats([1, 1, r, r])], path, {
            mode: { string: "nearest" },
            coordinate_transformation_mode: { string: "asymmetric" },
            nearest_mode: { string: "floor" },
          }),
          layout: "nchw",
        };
      }
      case "meanShift": {
        const mean = inner.meta.mean as ReadonlyArray<number>;
        const sign = inner.meta.sign as number;
        const range = (inner.meta.rgbRange as number | undefined) ?? 255;
        const shift = mean.map((m) => sign * range * m);
        return {
          name: g.op("Add", [xin.name, this.channelConst(shift, xin.layout)], path),
          layout: xin.layout,
        };
      }
      case "batchNorm": {
        // Inference uses the running statistics (Nn.batchNorm in eval mode).
        const v = this.to(xin, "nchw");
        return {
          name: g.op(
            "BatchNormalization",
            [
              v.name,
              this.param(`${path}.weight`),
              this.param(`${path}.bias`),
              this.param(`${path}.running_mean`),
              this.param(`${path}.running_var`),
            ],
            path,
            { epsilon: { float: inner.meta.eps as number } },
          ),
          layout: "nchw",
        };
      }
      case "layerNorm": {
        const v = this.to(xin, "nhwc");
        return {
          name: g.op(
            "LayerNormalization",
            [v.name, this.param(`${path}.weight`), this.param(`${path}.bias`)],
            path,
            {
              axis: { int: -1 },
              epsilon: { float: inner.meta.eps as number },
            },
          ),
          layout: "nhwc",
        };
      }
      default:
        throw new ExportError(
          path,
          `a ${inner.kind} layer: the ONNX exporter does not know this kind`,
        );
    }
  }

  // ---- composites

  emit(layer: Nn.AnyLayer, path: string, x: V): V {
    if (layer.children.length === 0) return this.leaf(path, layer, x);
    switch (layer.kind) {
      case "sequential":
        return this.chain(layer.children, path, x);
      case "residual":
        return this.residual(layer, path, x);
      case "denseBlock":
        return this.dense(layer, path, x);
      case "concatOutputs": {
        const outs: V[] = [];
        let y = x;
        for (const [name, child] of layer.children) {
          y = this.to(this.emit(child, join(path, name), y), "nchw");
          outs.push(y);
        }
        return outs.length === 1 ? outs[0] : {
          name: this.g.op("Concat", outs.map((o) => o.name), path, { axis: { int: 1 } }),
          layout: "nchw",
        };
      }
      case "rdn":
        return this.rdn(layer, path, x);
      case "swinir":
        return this.swinir(layer, path, x);
      case "swinBlock": {
        const run = this.runner(layer, path);
        const y = this.binary("Add", x, run("attn", run("norm1", x)), `${path}.+attn`);
        return this.binary("Add", y, run("mlp", run("norm2", y)), `${path}.+mlp`);
      }
      case "windowAttention":
        return this.attention(layer, path, x);
      default:
        throw new ExportError(
          path,
          `a ${layer.kind} layer: the ONNX exporter does not know this kind`,
        );
    }
  }

  runner(layer: Nn.AnyLayer, path: string) {
    const byName = new Map(layer.children);
    return (name: string, x: V): V => {
      const child = byName.get(name);
      if (!child) throw new ExportError(path, `${layer.kind} has no child "${name}"`);
      return this.emit(child, join(path, name), x);
    };
  }

  chain(children: ReadonlyArray<Nn.Child>, path: string, x: V): V {
    let y = x;
    for (const [name, child] of children) y = this.emit(child, join(path, name), y);
    return y;
  }

  /** `skip(y) + out(resScale · inner(y))`, `y = input(x)` (Nn.residual; the inner is a chain). */
  residual(layer: Nn.AnyLayer, path: string, x: V): V {
    const isPoint = (l: Nn.AnyLayer) =>
      l.kind === "point" || (Quant.isQuantized(l) && l.inner.kind === "point");
    const points = new Map(
      layer.children.filter(([n, l]) => ["input", "skip", "out"].includes(n) && isPoint(l)),
    );
    const inner = layer.children.filter(([n]) => !points.has(n));
    const at = (name: string, v: V) => {
      const l = points.get(name);
      return l ? this.emit(l, join(path, name), v) : v;
    };
    const y = at("input", x);
    let body = this.chain(inner, path, y);
    const resScale = (layer.meta.resScale as number | undefined) ?? 1;
    if (resScale !== 1) {
      body = {
        name: this.g.op("Mul", [body.name, this.g.scalar(resScale)], `${path}.scale`),
        layout: body.layout,
      };
    }
    return this.binary("Add", at("skip", y), at("out", body), `${path}.+`);
  }

  /** Nn.denseBlock: `features = [features, relu(conv_c(point_c(features)))]`. */
  dense(layer: Nn.AnyLayer, path: string, x: V): V {
    const points = new Map(layer.children.filter(([n]) => /^in\d+$/.test(n)));
    const steps = layer.children.filter(([n]) => !points.has(n));
    let features = this.to(x, "nchw");
    steps.forEach(([name, conv], c) => {
      const mark = points.get(`in${c}`);
      if (mark) features = this.to(this.emit(mark, join(path, `in${c}`), features), "nchw");
      const y = this.to(this.emit(conv, join(path, name), features), "nchw");
      const r = this.g.op("Relu", [y.name], join(path, name));
      features = {
        name: this.g.op("Concat", [features.name, r], join(path, name), { axis: { int: 1 } }),
        layout: "nchw",
      };
    });
    return features;
  }

  /** models/rdn.ts: `tail(upsample(gff(rdbs(sfe2(F₋₁))) + F₋₁))`, `F₋₁ = sfe1(x)`. */
  rdn(layer: Nn.AnyLayer, path: string, x: V): V {
    const run = this.runner(layer, path);
    const shallow = run("sfe1", x);
    const fused = this.binary(
      "Add",
      run("gff", run("rdbs", run("sfe2", shallow))),
      shallow,
      `${path}.+`,
    );
    return run("tail", run("upsample", fused));
  }

  // ---- shapes

  /** Dimension `axis` of a value as a 1-D int64 tensor of one element. */
  dim(v: string, axis: number, name: string): string {
    return this.g.op("Shape", [v], name, { start: { int: axis }, end: { int: axis + 1 } });
  }

  /** `torch.roll(x, shift, axis)` for a constant shift on a dynamic axis (Nn.roll). */
  roll(v: string, shift: number, axis: number, name: string): string {
    const g = this.g;
    // y[i] = x[(i − k) mod n]: k > 0 → [x[n−k:], x[:n−k]]; k < 0 → [x[−k:], x[:−k]]; both
    // are [x[−k:], x[:−k]] with Slice's negative indices.
    const cut = -shift;
    const head = g.op("Slice", [v, g.int64s([cut]), g.int64s([INT64_MAX]), g.int64s([axis])], name);
    const tail = g.op("Slice", [v, g.int64s([0]), g.int64s([cut]), g.int64s([axis])], name);
    return g.op("Concat", [head, tail], name, { axis: { int: axis } });
  }

  /** SwinIR's shifted-window mask `[1, nW, 1, ws², ws²]` for the map `v` (NHWC), in the graph. */
  mask(v: string, ws: number, shift: number, path: string): string {
    // Every attention layer of a SwinIR sees the same map size: one mask per window and shift.
    const key = `${ws}:${shift}`;
    const known = this.masks.get(key);
    if (known) return known;
    const g = this.g;
    const name = `${path}.mask`;
    const regions = (axis: number) => {
      const n = g.op("Squeeze", [this.dim(v, axis, name), g.int64s([0])], name);
      const i = g.op("Range", [g.int64s([0], []), n, g.int64s([1], [])], name);
      const cut = (d: number) =>
        g.op(
          "Cast",
          [g.op("GreaterOrEqual", [i, g.op("Sub", [n, g.int64s([d], [])], name)], name)],
          name,
          {
            to: { int: Onnx.DataType.INT64 },
          },
        );
      return g.op("Add", [cut(ws), cut(shift)], name); // region 0, 1, 2 (Nn.shiftedWindowMask)
    };
    const rows = g.op("Unsqueeze", [regions(1), g.int64s([1])], name);
    const cols = g.op("Unsqueeze", [regions(2), g.int64s([0])], name);
    const label = g.op("Add", [g.op("Mul", [rows, g.int64s([3], [])], name), cols], name); // [H, W]
    const nh = g.op("Div", [this.dim(v, 1, name), g.int64s([ws])], name);
    const nw = g.op("Div", [this.dim(v, 2, name), g.int64s([ws])], name);
    const shape = g.op("Concat", [nh, g.int64s([ws]), nw, g.int64s([ws])], name, {
      axis: { int: 0 },
    });
    const windows = g.op("Reshape", [
      g.op("Transpose", [g.op("Reshape", [label, shape], name)], name, {
        perm: { ints: [0, 2, 1, 3] },
      }),
      g.int64s([-1, ws * ws]),
    ], name); // [nW, n]
    const eq = g.op("Equal", [
      g.op("Unsqueeze", [windows, g.int64s([2])], name),
      g.op("Unsqueeze", [windows, g.int64s([1])], name),
    ], name);
    const m = g.op("Where", [eq, g.scalar(0), g.scalar(-100)], name);
    const out = g.op("Unsqueeze", [m, g.int64s([0, 2])], name);
    this.masks.set(key, out);
    return out;
  }

  /** Nn.windowAttention on an NHWC map whose sides are multiples of the window. */
  attention(layer: Nn.AnyLayer, path: string, x: V): V {
    const g = this.g;
    const { heads, window: ws, shift, qkScale } = layer.meta as {
      heads: number;
      window: number;
      shift: number;
      qkScale: number;
    };
    const c = layer.inChannels as number;
    const hd = c / heads;
    const n = ws * ws;
    const xv = this.to(x, "nhwc").name;
    const B = this.dim(xv, 0, path), H = this.dim(xv, 1, path), W = this.dim(xv, 2, path);
    const nh = g.op("Div", [H, g.int64s([ws])], path), nw = g.op("Div", [W, g.int64s([ws])], path);
    const cat = (parts: string[]) => g.op("Concat", parts, path, { axis: { int: 0 } });
    const shifted = shift > 0 ? this.roll(this.roll(xv, -shift, 1, path), -shift, 2, path) : xv;
    const windows = g.op("Reshape", [
      g.op(
        "Transpose",
        [g.op(
          "Reshape",
          [shifted, cat([B, nh, g.int64s([ws]), nw, g.int64s([ws]), g.int64s([c])])],
          path,
        )],
        path,
        {
          perm: { ints: [0, 1, 3, 2, 4, 5] },
        },
      ),
      g.int64s([-1, n, c]),
    ], path);
    const run = this.runner(layer, path);
    const qkv = run("qkv", { name: windows, layout: "nhwc" }).name; // [bw, n, 3c]
    const split = g.op(
      "Transpose",
      [g.op("Reshape", [qkv, g.int64s([-1, n, 3, heads, hd])], path)],
      path,
      {
        perm: { ints: [2, 0, 3, 1, 4] },
      },
    ); // [3, bw, heads, n, hd]
    const part = (i: number) =>
      g.op("Gather", [split, g.int64s([i], [])], path, { axis: { int: 0 } });
    const [q, k, v] = [part(0), part(1), part(2)];
    let attn = g.op("MatMul", [
      g.op("Mul", [q, g.scalar(qkScale)], path),
      g.op("Transpose", [k], path, { perm: { ints: [0, 1, 3, 2] } }),
    ], path); // [bw, heads, n, n]
    const index = Array.from(Nn.relativePositionIndex(ws));
    const table = this.param(`${path}.relative_position_bias_table`);
    const bias = g.op(
      "Transpose",
      [
        g.op("Reshape", [
          g.op("Gather", [table, g.int64s(index)], path, { axis: { int: 0 } }),
          g.int64s([n, n, heads]),
        ], path),
      ],
      path,
      { perm: { ints: [2, 0, 1] } },
    );
    attn = g.op("Add", [attn, bias], path);
    if (shift > 0) {
      const nW = g.op("Mul", [nh, nw], path);
      const five = g.op(
        "Reshape",
        [attn, cat([g.int64s([-1]), nW, g.int64s([heads, n, n])])],
        path,
      );
      attn = g.op("Reshape", [
        g.op("Add", [five, this.mask(shifted, ws, shift, path)], path),
        g.int64s([-1, heads, n, n]),
      ], path);
    }
    const probs = g.op("Softmax", [attn], path, { axis: { int: -1 } });
    const out = g.op("Reshape", [
      g.op("Transpose", [g.op("MatMul", [probs, v], path)], path, { perm: { ints: [0, 2, 1, 3] } }),
      g.int64s([-1, n, c]),
    ], path);
    const proj = run("proj", { name: out, layout: "nhwc" }).name;
    const merged = g.op("Reshape", [
      g.op(
        "Transpose",
        [g.op(
          "Reshape",
          [proj, cat([B, nh, nw, g.int64s([ws]), g.int64s([ws]), g.int64s([c])])],
          path,
        )],
        path,
        {
          perm: { ints: [0, 1, 3, 2, 4, 5] },
        },
      ),
      cat([B, H, W, g.int64s([c])]),
    ], path);
    const back = shift > 0 ? this.roll(this.roll(merged, shift, 1, path), shift, 2, path) : merged;
    return { name: back, layout: "nhwc" };
  }

  /** models/swinir.ts: reflect-pad to the window grid, the trunk, the upsampler, the crop. */
  swinir(layer: Nn.AnyLayer, path: string, x: V): V {
    const g = this.g;
    const meta = layer.meta as { windowSize: number; factor: number };
    const ws = meta.windowSize, s = meta.factor;
    const range = this.opts.rgbRange;
    const xv = this.to(x, "nchw").name;
    const H = this.dim(xv, 2, path), W = this.dim(xv, 3, path);
    const pad = (d: string) =>
      g.op("Mod", [
        g.op("Sub", [g.int64s([ws]), g.op("Mod", [d, g.int64s([ws])], path)], path),
        g.int64s([ws]),
      ], path);
    const pads = g.op("Concat", [g.int64s([0, 0, 0, 0, 0, 0]), pad(H), pad(W)], path, {
      axis: { int: 0 },
    });
    const t = g.op("Div", [xv, g.scalar(range)], path);
    const padded = g.op("Pad", [t, pads], path, { mode: { string: "reflect" } });
    const mean = this.channelConst(RGB_MEAN, "nchw");
    const run = this.runner(layer, path);
    const first = run("conv_first", { name: g.op("Sub", [padded, mean], path), layout: "nchw" });
    const deep = run("norm", run("layers", run("patch_embed", first)));
    const body = this.binary("Add", run("conv_after_body", deep), first, `${path}.+`);
    const up = this.to(run("upsample", body), "nchw");
    const y = g.op("Mul", [g.op("Add", [up.name, mean], path), g.scalar(range)], path);
    const ends = g.op(
      "Concat",
      [g.op("Mul", [H, g.int64s([s])], path), g.op("Mul", [W, g.int64s([s])], path)],
      path,
      {
        axis: { int: 0 },
      },
    );
    return {
      name: g.op("Slice", [y, g.int64s([0, 0]), ends, g.int64s([2, 3])], path),
      layout: "nchw",
    };
  }
}

/** What {@link toOnnx} made. */
export interface Exported {
  readonly bytes: Uint8Array;
  readonly summary: {
    readonly nodes: number;
    readonly initializers: number;
    /** Quantized layers and their code types. */
    readonly quantized: number;
    readonly opset: number;
  };
}

/**
 * The ONNX model of `model` with `params`: input `input` `[batch, 3, height, width]`, output
 * `output` `[batch, 3, height·s, width·s]`, RGB in [0, 255] (see the module comment).
 */
export async function toOnnx(
  model: Nn.AnyLayer,
  params: Params,
  opts: Options = {},
): Promise<Exported> {
  const collected = await collect(model, params);
  return toOnnxFrom(model, collected, opts);
}

/** {@link toOnnx} from parameters already collected. */
export function toOnnxFrom(model: Nn.AnyLayer, collected: Collected, opts: Options = {}): Exported {
  const opset = opts.opset ?? 25;
  const e = new Emitter(collected, {
    opset,
    activations: opts.activations ?? "qdq",
    rgbRange: opts.rgbRange ?? 255,
  });
  const y = e.to(e.emit(model, "", { name: "input", layout: "nchw" }), "nchw");
  e.g.nodes.push({
    op: "Identity",
    inputs: [y.name],
    outputs: ["output"],
    name: "output/Identity",
    attributes: {},
  });
  const bytes = Onnx.encodeModel({
    irVersion: opset >= 25 ? 12 : 10,
    opset,
    producer: { name: "qat-sr", version: "1" },
    graph: {
      name: opts.name ?? "qat-sr",
      doc: "NCHW RGB in [0, 255] in and out; quantized layers as low-bit codes + DequantizeLinear",
      nodes: e.g.nodes,
      initializers: e.g.initializers,
      inputs: [{
        name: "input",
        dataType: Onnx.DataType.FLOAT,
        dims: ["batch", 3, "height", "width"],
      }],
      outputs: [{
        name: "output",
        dataType: Onnx.DataType.FLOAT,
        dims: ["batch", 3, "out_height", "out_width"],
      }],
    },
    metadata: opts.metadata ?? {},
  });
  return {
    bytes,
    summary: {
      nodes: e.g.nodes.length,
      initializers: e.g.initializers.length,
      quantized: [...collected.layers.values()].filter((l) => l.weight || l.input).length,
      opset,
    },
  };
}
