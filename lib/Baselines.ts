/**
 * Baselines: the quantization schemes the ODM paper compares against (Tables 2–7), as
 * composable quantizers and range policies — not forks of the training loop. Every method runs
 * through the same `Train.run`; only the quantizers and the merge rule differ (SPEC §11).
 *
 * - **LSQ-style** (Eq. 8): learnable `u_w` initialised to a percentile of |W| — {@link lsq}
 *   (an alias of `Range.learnable(Range.percentile(j))`).
 * - **max** (Eq. 7 with f = max): `u_w = max|W|` per call — {@link max} (`Range.max`).
 * - **PAMS**: symmetric quantizers with zero as a level ({@link zeroLevel}: `2^(b−1) − 1`
 *   positive levels). Weights use `u = max|W|` (no learning, {@link pamsWeight}); activations
 *   `[−α, α]` with one learnable α per quantizer ({@link pamsActivation}, {@link pamsAlpha}).
 *   NOTE: PAMS initialises α by an EMA (0.9997) of per-batch max|x| over the first epoch; here
 *   α starts at the mean over the calibration batches of per-batch max|x| (our calibration
 *   averages every quantizer's `init` over batches, SPEC §2). PAMS's SKT distillation loss and
 *   its lr 1e-2 for α are not reproduced (α uses the recipe's `lrQuant`).
 * - **DAQ**: activations normalised per image and per channel by their run-time mean and std,
 *   quantized to `2^b` levels with a fixed step table, de-normalised ({@link daq}). No
 *   learnable parameters; its run-time statistics are charged by `Cost.of` through
 *   {@link RuntimeCost}. The step table is Max's (1960) optimal uniform quantizer for a
 *   unit Gaussian ({@link DAQ_STEPS}), which is the table DAQ builds on.
 * - **DDTB**: not implemented.
 *
 * {@link methods} and {@link ablations} are the recipe variations (`quant` and `regularizer`
 * fields) that `deno task compare` runs from one base recipe.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Quantizer from "./Quantizer.ts";
import * as Range from "./Range.ts";
import type * as Recipe from "./Recipe.ts";
import type { Params } from "./Tree.ts";

/** LSQ-style learnable weight range (Eq. 8): `u_w` a parameter initialised to percentile_j(|W|). */
export const lsq = (j = 0.99): Range.Range<Range.LearnableParams> =>
  Range.learnable(Range.percentile(j));

/** The max weight range (Eq. 7 with f = max): `u = max|W|`, recomputed per call. */
export const max: Range.Range<Record<never, never>> = Range.max;

/**
 * Symmetric fake quantization with zero as a level: `q = round(clip(x, −α, α)/s)·s`,
 * `s = α / n`, `n = 2^(b−1) − 1` positive levels (so `2^b − 1` levels in all).
 *
 * NOTE: a custom gradient, for the same reason as `Quantizer.fakeQuant` (tfjs's Maximum/Minimum
 * gradients do not reduce broadcast axes). With a straight-through round: inside `[−α, α]`
 * `∂q/∂x = 1`, `∂q/∂α = (q − x)/α`; above `α`: `∂q/∂α = 1`; below `−α`: `∂q/∂α = −1`;
 * `∂q/∂x = 0` outside. tests/Baselines.test.ts checks them against finite differences.
 */
export const zeroLevelQuant = (x: tf.Tensor, alpha: tf.Scalar, bits: number): tf.Tensor =>
  zeroLevelOp(bits)(x, alpha);

const zeroOps = new Map<number, (x: tf.Tensor, a: tf.Scalar) => tf.Tensor>();

function zeroLevelOp(bits: number) {
  let op = zeroOps.get(bits);
  if (op) return op;
  const n = 2 ** (bits - 1) - 1;
  const f = tf.customGrad(
    ((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
      const [x, a, save] = args as [tf.Tensor, tf.Scalar, tf.GradSaveFunc];
      const s = tf.div(a, n);
      const clipped = tf.minimum(tf.maximum(x, tf.neg(a)), a);
      const q = tf.mul(tf.round(tf.div(clipped, s)), s);
      save([x, a, q]);
      return {
        value: q,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sx, sa, sq] = saved;
          const inside = tf.lessEqual(tf.abs(sx), sa);
          const zero = tf.zerosLike(sx);
          const dx = tf.where(inside, dy, zero);
          const slope = tf.div(tf.mul(dy, tf.sub(sq, sx)), sa);
          const outside = tf.where(tf.greater(sx, sa), dy, tf.neg(dy));
          const da = tf.sum(tf.where(inside, slope, outside));
          return [dx, da];
        },
      };
    }) as Parameters<typeof tf.customGrad>[0],
  );
  op = (x, a) => f(x, a);
  zeroOps.set(bits, op);
  return op;
}

/**
 * A symmetric quantizer with a zero level (PAMS): the range policy gives `u` (= α), the tensor
 * is quantized by {@link zeroLevelQuant}. Bits 2–8, or 32 for none.
 */
export function zeroLevel<P extends Params>(
  opts: { readonly bits: number; readonly range: Range.Range<P> },
): Quantizer.Quantizer<P> {
  const { bits, range } = opts;
  if (!(Number.isInteger(bits) && ((bits >= 2 && bits <= 8) || bits === 32))) {
    throw new RangeError(`zeroLevel: bits must be an integer in 2–8 or 32, got ${bits}`);
  }
  const bounds = (params: P, x: tf.Tensor): Range.Bounds => {
    const u = tf.maximum(range.bounds(params, x, true).upper, Quantizer.EPSILON) as tf.Scalar;
    return { lower: tf.neg(u), upper: u };
  };
  return {
    bits,
    symmetric: true,
    name: `zero${bits}·${range.name}`,
    init: (sample) => range.init(sample, true),
    defaults: () => range.defaults(true),
    bounds,
    apply: (params, x) => (bits === 32 ? x : zeroLevelQuant(x, bounds(params, x).upper, bits)),
  };
}

/** Parameters of {@link pamsAlpha}: the learnable clipping bound α. */
export type AlphaParams = { readonly alpha: tf.Scalar };

/**
 * PAMS's activation range `[−α, α]`, α learnable, initialised to max|x| of the calibration
 * sample (averaged over calibration batches by `Quant.calibrate`).
 */
export const pamsAlpha: Range.Range<AlphaParams> = {
  name: "pamsAlpha",
  init: (sample) => ({ alpha: tf.tidy(() => tf.max(tf.abs(sample)) as tf.Scalar) }),
  defaults: () => ({ alpha: tf.scalar(1) }),
  bounds: (p) => ({ lower: tf.neg(p.alpha), upper: p.alpha }),
};

/** PAMS weights: symmetric, zero level, `u = max|W|`, nothing learned. */
export const pamsWeight = (bits: number): Quantizer.Quantizer<Record<never, never>> =>
  zeroLevel({ bits, range: Range.max });

/** PAMS activations: symmetric `[−α, α]`, zero level, α learnable. */
export const pamsActivation = (bits: number): Quantizer.Quantizer<AlphaParams> =>
  zeroLevel({ bits, range: pamsAlpha });

/**
 * The step of DAQ's quantizer for normalised (zero-mean, unit-std) activations, by bit-width:
 * the optimal uniform quantizer of a unit Gaussian with `2^b` levels (J. Max, "Quantizing for
 * minimum distortion", 1960, Table II). Levels sit at `±Δ/2, ±3Δ/2, …` (mid-rise).
 */
export const DAQ_STEPS: Readonly<Record<number, number>> = {
  1: 1.596,
  2: 0.9957,
  3: 0.586,
  4: 0.3352,
  5: 0.1881,
  6: 0.1041,
  7: 0.0569,
  8: 0.0308,
};

/** A quantizer with arithmetic of its own at run time, which `Cost.of` charges at FP32. */
export interface RuntimeCost {
  /** FLOPs per forward for an input of `elements` values in `channels` channels (one image). */
  readonly runtimeFlops: (elements: number, channels: number) => number;
}

/** Variance floor of DAQ's normalisation (keeps `1/σ` finite on constant channels). */
export const DAQ_EPSILON = 1e-6;

/**
 * DAQ's activation quantizer: for each image and channel, `μ, σ` over the spatial axes (every
 * axis but the first and the last), computed from `x` itself on every call (training and
 * evaluation alike); `q(x) = σ · Q((x − μ)/σ) + μ` with `Q` the `2^b`-level mid-rise uniform
 * quantizer of step `DAQ_STEPS[b]` (STE round). No learnable parameters.
 *
 * `bounds` reports the range in the normalised domain, `±(2^b − 1)·Δ/2`.
 *
 * Run-time cost per value: 1 add (mean), 3 (variance: sub, square, add), 2 (normalise: sub,
 * multiply by 1/σ), 2 (de-normalise: multiply, add) = 8 FLOPs, plus 2 per channel (sqrt,
 * reciprocal).
 */
export function daq(
  bits: number,
): Quantizer.Quantizer<Record<never, never>> & RuntimeCost {
  if (!(Number.isInteger(bits) && ((bits >= 1 && bits <= 8) || bits === 32))) {
    throw new RangeError(`daq: bits must be an integer in 1–8 or 32, got ${bits}`);
  }
  const step = DAQ_STEPS[bits] ?? 0;
  const half = ((2 ** bits - 1) * step) / 2;
  const bounds = (): Range.Bounds => ({ lower: tf.scalar(-half), upper: tf.scalar(half) });
  return {
    bits,
    symmetric: false,
    name: `daq${bits}`,
    init: () => ({}),
    defaults: () => ({}),
    bounds,
    runtimeFlops: (elements, channels) => (bits === 32 ? 0 : 8 * elements + 2 * channels),
    apply: (_p, x) => {
      if (bits === 32) return x;
      const axes = Array.from({ length: x.rank - 2 }, (_, i) => i + 1);
      const { mean, variance } = tf.moments(x, axes, true);
      const std = tf.sqrt(tf.add(variance, DAQ_EPSILON));
      const normalised = tf.div(tf.sub(x, mean), std);
      const b = bounds();
      const q = Quantizer.fakeQuant(normalised, b.lower, b.upper, bits);
      return tf.add(tf.mul(q, std), mean);
    },
  };
}

/** The `quant` and `regularizer` fields that make a method out of a base recipe. */
export interface Variation {
  /** One line for tables. */
  readonly label: string;
  readonly quant: Pick<Recipe.Input["quant"], "weightRange" | "activationRange">;
  readonly regularizer: { readonly merge: "cooperative" | "naive" | "reconstruction" };
}

/** The methods of Tables 2–5: ODM and the baselines, all trained with the same loop. */
export const methods: Readonly<Record<string, Variation>> = {
  odm: {
    label: "ODM (WCC + cooperative MR)",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
  lsq: {
    label: "LSQ-style learnable u_w (Eq. 8)",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  max: {
    label: "max u_w (Eq. 7)",
    quant: { weightRange: "max", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  pams: {
    label: "PAMS (max|W|, learnable α)",
    quant: { weightRange: "pams", activationRange: "pams" },
    regularizer: { merge: "reconstruction" },
  },
  daq: {
    label: "DAQ (per-image channel norm)",
    quant: { weightRange: "pams", activationRange: "daq" },
    regularizer: { merge: "reconstruction" },
  },
};

/** Table 7's ablation: (a) baseline … (e) full ODM. */
export const ablations: Readonly<Record<string, Variation>> = {
  a: {
    label: "(a) learnable u_w, reconstruction only",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  b: {
    label: "(b) + WCC",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  c: {
    label: "(c) + cooperative MR, no WCC",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
  d: {
    label: "(d) WCC + naive MR",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "naive" },
  },
  e: {
    label: "(e) WCC + cooperative MR (ODM)",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
};

/** The base recipe as the given method (name suffixed with `-<method>`), as recipe input. */
export function vary(base: Recipe.Recipe, key: string, v: Variation): Recipe.Input {
  return {
    ...base,
    name: `${base.name}-${key}`,
    quant: { ...base.quant, ...v.quant },
    regularizer: { ...base.regularizer, ...v.regularizer },
  };
}
