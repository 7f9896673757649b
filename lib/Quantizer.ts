/**
 * Quantizers: fake quantization of a tensor to `2^b` uniform levels over a clipping range.
 *
 * Eq. 1 of the ODM paper: `q(x; l, u) = round((clip(x, l, u) − l) / s) · s + l` with
 * `s = (u − l) / (2^b − 1)`; both `l` and `u` are levels. Rounding is half-to-even forward and
 * identity backward (STE), so autodiff through the expression gives (SPEC §1):
 * inside the range `∂q/∂x = 1`, `∂q/∂u = (q − x)/(u − l)`, `∂q/∂l = (x − q)/(u − l)`;
 * above `u`, `∂q/∂u = 1`; below `l`, `∂q/∂l = 1`; `∂q/∂x = 0` outside.
 *
 * Activations use {@link asymmetric} `[l, u]`; weights use {@link symmetric} `[−u, u]` (no zero
 * level: 2-bit weights are ±u/3, ±u). The range comes from a {@link Range.Range} policy.
 * `bits: 32` means no quantization.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Kernels from "./Kernels.ts";
import type * as Nn from "./Nn.ts";
import type * as Range from "./Range.ts";
import type { Params } from "./Tree.ts";

/** Smallest width of a range, so `s > 0` whatever the learnable bounds do (SPEC §1 guards). */
export const EPSILON = 1e-6;

/** A quantizer: a bit-width, a range policy and a pure fake-quant `apply`. */
export interface Quantizer<P extends Params = Params> {
  /** Bit-width 1–8, or 32 for none. */
  readonly bits: number;
  /** Symmetric `[−u, u]` (weights) or asymmetric `[l, u]` (activations). */
  readonly symmetric: boolean;
  /** Name for logs, e.g. `asym4·learnable(percentile(0.99))`. */
  readonly name: string;
  /** Learnable parameters from a sample of the tensor (calibration). */
  readonly init: (sample: tf.Tensor) => P;
  /** Parameters before calibration (`key` seeds any random initialisation, e.g. a gate). */
  readonly defaults: (key?: number) => P;
  /** The clipping range this quantizer uses for `x` (guards applied). */
  readonly bounds: (params: P, x: tf.Tensor) => Range.Bounds;
  /**
   * Fake-quantizes `x` (STE gradients). `ctx` is the forward pass's context at the wrapped
   * layer (mode, step, path): a quantizer whose behaviour depends on the training stage (DDTB's
   * gate) reads it, and may report tensors through `ctx.observe` (`<path>.aq.<name>`) or
   * updated buffers through `ctx.buffer`.
   */
  readonly apply: (params: P, x: tf.Tensor, ctx?: Nn.Ctx) => tf.Tensor;
  /**
   * Calibration combines the per-batch `init` values by their mean, or, when this is set, by an
   * exponential moving average with this decay, starting from the first batch (PAMS: 0.9997).
   */
  readonly calibrationDecay?: number;
  /**
   * The range is computed from the tensor being quantized at every call (per-batch max or
   * percentile, per-image statistics): an activation quantizer like that sees the whole image,
   * so tiled inference cannot reproduce it. `false` for fixed or learned ranges; left out, it
   * is taken to be true.
   */
  readonly dynamic?: boolean;
  /**
   * What the quantizer stores and computes at run time beyond the quantized layer itself, for
   * an input of `elements` values in `channels` channels over `images` images (`Cost.of`
   * charges it). Without it: its parameters are stored at 32 bits and it computes nothing.
   */
  readonly cost?: (input: { readonly elements: number; readonly channels: number }) => Overhead;
}

/** A quantizer's own cost: stored 32-bit words and run-time BitOPs (and the FLOPs behind them). */
export interface Overhead {
  readonly storage: number;
  readonly flops: number;
  readonly bitops: number;
}

/** A quantizer with any parameter shape (what wrappers and schemes accept). */
// deno-lint-ignore no-explicit-any
export type Any = Quantizer<any>;

/**
 * Eq. 1 on tensors: the fake-quant of `x` to `bits` over `[lower, upper]`, differentiable in
 * all three inputs, as one fused kernel (lib/Kernels.ts) on webgpu and cpu.
 *
 * NOTE: the backward pass is exactly what autodiff through `min(max(x, l), u)` with a
 * straight-through round gives (SPEC §1), written out: tfjs's Maximum/Minimum gradients do
 * not reduce over broadcast axes and broadcasting the bounds explicitly (Tile) costs one op
 * per tile. Inside `[l, u]`: `∂q/∂x = 1`, `∂q/∂u = (q − x)/(u − l)`, `∂q/∂l = (x − q)/(u − l)`;
 * above: `∂q/∂u = 1`; below: `∂q/∂l = 1`. tests/Quantizer.test.ts checks them against finite
 * differences.
 */
export const fakeQuant = (
  x: tf.Tensor,
  lower: tf.Scalar,
  upper: tf.Scalar,
  bits: number,
): tf.Tensor => Kernels.fakeQuant(x, lower, upper, bits);

function checkBits(bits: number): void {
  if (!(Number.isInteger(bits) && ((bits >= 1 && bits <= 8) || bits === 32))) {
    throw new RangeError(`quantizer bits must be an integer in 1–8 or 32, got ${bits}`);
  }
}

function make<P extends Params>(
  symmetric: boolean,
  opts: { readonly bits: number; readonly range: Range.Range<P> },
): Quantizer<P> {
  checkBits(opts.bits);
  const { bits, range } = opts;
  const bounds = (params: P, x: tf.Tensor): Range.Bounds => {
    const b = range.bounds(params, x, symmetric);
    if (symmetric) {
      const u = tf.maximum(b.upper, EPSILON) as tf.Scalar;
      return { lower: tf.neg(u), upper: u };
    }
    return { lower: b.lower, upper: tf.maximum(b.upper, tf.add(b.lower, EPSILON)) as tf.Scalar };
  };
  return {
    bits,
    symmetric,
    name: `${symmetric ? "sym" : "asym"}${bits}·${range.name}`,
    dynamic: range.dynamic ?? true,
    init: (sample) => range.init(sample, symmetric),
    defaults: () => range.defaults(symmetric),
    bounds,
    apply: (params, x) => {
      if (bits === 32) return x;
      const b = bounds(params, x);
      return fakeQuant(x, b.lower, b.upper, bits);
    },
  };
}

/** A symmetric quantizer `[−u, u]` (weights). */
export const symmetric = <P extends Params>(
  opts: { readonly bits: number; readonly range: Range.Range<P> },
): Quantizer<P> => make(true, opts);

/** An asymmetric quantizer `[l, u]` (activations). */
export const asymmetric = <P extends Params>(
  opts: { readonly bits: number; readonly range: Range.Range<P> },
): Quantizer<P> => make(false, opts);
