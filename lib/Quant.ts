/**
 * Quantization as wrappers: a layer with a weight quantizer and/or an input (activation)
 * quantizer around it, and schemes that wrap the layers of a whole model by path pattern.
 *
 * The wrapper is transparent for parameter paths: the inner layer keeps its `weight` and
 * `bias`, and the quantizers' parameters sit beside them under `wq` (weight quantizer) and `aq`
 * (activation quantizer), e.g. `body.blocks.0.conv1.aq.upper`. On every forward it reports
 * `(x, q(x))` through `ctx.tap`, which is what the mismatch regulariser of Eq. 2–3 needs.
 * In `calibrate` mode it runs full precision and reports the input (SPEC §2).
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import * as Nn from "./Nn.ts";
import * as Rng from "./Rng.ts";
import type * as Quantizer from "./Quantizer.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";

/** The quantizers of one wrapped layer. */
export interface Spec {
  /** Quantizes the layer's `weight` parameter (symmetric in the paper). */
  readonly weight?: Quantizer.Any;
  /** Quantizes the layer's input activation (asymmetric in the paper). */
  readonly input?: Quantizer.Any;
  /**
   * The bit-width of the layer's input when an activation quantizer upstream in the data path
   * produces it (PAMS and DDTB quantize the block's output, not each conv's input): costs count
   * the layer at these bits; nothing is computed with it.
   */
  readonly inputBits?: number;
}

/** A wrapped layer: a layer plus the quantizers around it. */
export interface Quantized<I extends number = number, O extends number = number>
  extends Nn.Layer<I, O> {
  readonly kind: "quantized";
  readonly inner: Nn.Layer<I, O>;
  readonly spec: Spec;
}

/** True for a layer made by {@link wrap}. */
export const isQuantized = (l: Nn.AnyLayer): l is Quantized => l.kind === "quantized";

/** True for a parameter path that belongs to a quantizer (`…wq.*` or `…aq.*`, nested too). */
export const isQuantizerParam = (path: string): boolean => /(^|\.)(wq|aq)\./.test(path);

/** Wraps a leaf layer that has a `weight` parameter (conv2d, linear) with quantizers. */
export function wrap(spec: Spec) {
  return <I extends number, O extends number>(inner: Nn.Layer<I, O>): Quantized<I, O> => {
    if (inner.children.length > 0) {
      throw new Error(`Quant.wrap: can only wrap a leaf layer, got ${inner.kind}`);
    }
    if (isQuantized(inner)) throw new Error("Quant.wrap: layer is already quantized");
    const { weight, input } = spec;
    const self: Quantized<I, O> = {
      kind: "quantized",
      inChannels: inner.inChannels,
      outChannels: inner.outChannels,
      name: inner.name,
      children: [],
      meta: {
        ...inner.meta,
        inner: inner.kind,
        wbits: weight?.bits ?? 32,
        abits: input?.bits ?? 32,
      },
      inner,
      spec,
      rebuild: () => self,
      init: (key) => {
        const p = inner.init(key);
        return {
          ...p,
          ...(weight ? { wq: weight.init(Tree.leaf(p, "weight")) } : {}),
          ...(input ? { aq: input.defaults(Rng.fold(key, "aq")) } : {}),
        };
      },
      apply: (p, x, ctx) => {
        if (ctx.mode === "calibrate") {
          ctx.tap?.({ path: ctx.path, x, q: x });
          return inner.apply(p, x, ctx);
        }
        // A policy without learnable parameters (max, percentile) has an empty subtree, which
        // does not survive flattening: absent means empty.
        const qx = input ? input.apply((p.aq ?? {}) as Params, x, ctx) : x;
        ctx.tap?.({ path: ctx.path, x, q: qx });
        const w = weight
          ? weight.apply((p.wq ?? {}) as Params, Tree.leaf(p, "weight"), ctx)
          : undefined;
        return inner.apply(w ? { ...p, weight: w } : p, qx, ctx);
      },
    };
    return self;
  };
}

/** One rule of a scheme: which layers to wrap and with what. */
export interface Rule extends Spec {
  /** Glob over dotted layer paths (`*` one segment, `**` any), e.g. `body.blocks.*.*`. */
  readonly match: string;
  /** Layer kinds to wrap (default: conv2d and linear). */
  readonly kinds?: ReadonlyArray<string>;
}

const DEFAULT_KINDS = ["conv2d", "linear"];

/**
 * Applies a scheme to a model: every leaf layer whose path matches a rule (first match wins)
 * and whose kind is listed is wrapped; everything else stays full precision.
 */
export function quantize<L extends Nn.AnyLayer>(model: L, rules: ReadonlyArray<Rule>): L {
  return Nn.transform(model, (path, layer) => {
    if (layer.children.length > 0 || isQuantized(layer)) return undefined;
    const rule = rules.find((r) =>
      (r.kinds ?? DEFAULT_KINDS).includes(layer.kind) && Tree.matches(r.match, path)
    );
    if (!rule || (!rule.weight && !rule.input)) return undefined;
    return wrap({ weight: rule.weight, input: rule.input, inputBits: rule.inputBits })(layer);
  });
}

/** The quantized layers of a model with their paths, in forward order. */
export function layers(
  model: Nn.AnyLayer,
): Array<{ readonly path: string; readonly layer: Quantized }> {
  const out: Array<{ path: string; layer: Quantized }> = [];
  Nn.walk(model, (path, layer) => {
    if (isQuantized(layer)) out.push({ path, layer });
  });
  return out;
}

const subAt = (p: Params, path: string): Params =>
  path.split(".").reduce((node, k) => Tree.sub(node, k), p);

/**
 * Calibrated quantizer parameters for every wrapped layer: the weight quantizer from the
 * current weights, the activation quantizer from the recorded full-precision inputs
 * (`inputs.get(path)`: one tensor per calibration batch, averaged as SPEC §2 says).
 * Returns only the `wq`/`aq` subtrees, to be merged into the model's parameters.
 */
export function calibrate(
  model: Nn.AnyLayer,
  params: Params,
  inputs: ReadonlyMap<string, ReadonlyArray<tf.Tensor>>,
): Params {
  const out = new Map<string, tf.Tensor>();
  for (const { path, layer } of layers(model)) {
    const p = subAt(params, path);
    const { weight, input } = layer.spec;
    if (weight) {
      for (const [k, t] of Tree.flatten(weight.init(Tree.leaf(p, "weight")))) {
        out.set(`${path}.wq.${k}`, t);
      }
    }
    if (input) {
      const samples = inputs.get(path);
      if (!samples || samples.length === 0) {
        throw new Error(`Quant.calibrate: no recorded input for "${path}"`);
      }
      const sums = new Map<string, tf.Tensor>();
      for (const s of samples) {
        for (const [k, t] of Tree.flatten(input.init(s))) {
          const prev = sums.get(k);
          sums.set(k, prev ? prev.add(t) : t);
          if (prev) {
            prev.dispose();
            t.dispose();
          }
        }
      }
      for (const [k, t] of sums) {
        out.set(`${path}.aq.${k}`, t.div(samples.length));
        t.dispose();
      }
    }
  }
  return Tree.unflatten(out);
}
