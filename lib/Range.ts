/**
 * Range policies: how a quantizer finds its clipping range `[l, u]` (Eq. 1 of the ODM paper).
 *
 * A policy is a value with two pure functions: `init` gives its learnable parameters from a
 * sample of the tensor it will quantize (calibration), and `bounds` gives the range for a
 * tensor from those parameters. The policies of the paper:
 *
 * - {@link max}: `u = max|x|` (Eq. 7 with f = max), nothing learned.
 * - {@link percentile}: `u = percentile_j(|x|)` (or the j and 1−j percentiles of x), nothing learned.
 * - {@link learnable}: the bounds are parameters (Eq. 8, LSQ-like), initialised from another policy.
 * - {@link clipCorrected}: `u = stopgrad(percentile_j(|W|)) · γ` with a learnable γ initialised
 *   to 1 (Eq. 9, weight clipping correction); the percentile follows the current weights.
 *
 * Symmetric ranges are `[−u, u]`; asymmetric ranges are `[l, u]`. A user can write a policy
 * of their own as any value of type {@link Range}.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { quantile as exactQuantile } from "./internal/quantile.ts";
import * as Ste from "./Ste.ts";
import type { Params } from "./Tree.ts";

/** A clipping range as two scalar tensors. */
export interface Bounds {
  readonly lower: tf.Scalar;
  readonly upper: tf.Scalar;
}

/** A range policy. `P` is the shape of its learnable parameters (`{}` when none). */
export interface Range<P extends Params = Params> {
  /** A short name for logs and checkpoints, e.g. `percentile(0.99)`. */
  readonly name: string;
  /** Learnable parameters computed from a sample of the quantized tensor (calibration). */
  readonly init: (sample: tf.Tensor, symmetric: boolean) => P;
  /** Parameters to use before any calibration has been run. */
  readonly defaults: (symmetric: boolean) => P;
  /** The clipping range for `x`. */
  readonly bounds: (params: P, x: tf.Tensor, symmetric: boolean) => Bounds;
  /**
   * Whether `bounds` reads `x` (per-call statistics: max, percentile, and clipCorrected's
   * percentile of the weights); left out, it is taken to be true. See `Quantizer.dynamic`.
   */
  readonly dynamic?: boolean;
}

/**
 * The `p`-quantile (0 ≤ p ≤ 1) of all entries of `x`, with linear interpolation between the
 * two nearest ranks as numpy/torch (`pos = p·(n−1)`). No gradient flows through it.
 *
 * NOTE: an exact radix select on the GPU (lib/internal/quantile.ts): `tf.topk` sorts the whole
 * tensor and took ~90 ms for one 64×64×3×3 weight on lavapipe, this takes ~2 ms.
 */
export function quantile(x: tf.Tensor, p: number): tf.Scalar {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`quantile: p must be in [0, 1], got ${p}`);
  return exactQuantile(x, p);
}

/**
 * Bounds from a statistic of x, as constants (no gradient): symmetric `[−f(|x|), f(|x|)]`,
 * asymmetric `[g(x), f(x)]`.
 */
function statistic(
  upperOf: (t: tf.Tensor) => tf.Scalar,
  lowerOf: (t: tf.Tensor) => tf.Scalar,
): (x: tf.Tensor, symmetric: boolean) => Bounds {
  const sym = Ste.constant((x) => upperOf(tf.abs(x)));
  const asym = Ste.constant((x) => tf.stack([lowerOf(x), upperOf(x)]));
  return (x, symmetric) => {
    if (symmetric) {
      const u = sym(x) as tf.Scalar;
      return { lower: tf.neg(u), upper: u };
    }
    const lu = asym(x);
    return {
      lower: lu.slice([0], [1]).reshape([]) as tf.Scalar,
      upper: lu.slice([1], [1]).reshape([]) as tf.Scalar,
    };
  };
}

const maxStat = statistic((t) => tf.max(t) as tf.Scalar, (t) => tf.min(t) as tf.Scalar);

/** `u = max|x|` (symmetric) or `[min x, max x]`, recomputed from the tensor each call (Eq. 7). */
export const max: Range<Record<never, never>> = {
  name: "max",
  dynamic: true,
  init: () => ({}),
  defaults: () => ({}),
  bounds: (_p, x, symmetric) => maxStat(x, symmetric),
};

/** `u = percentile_j(|x|)` (symmetric) or `[percentile_{1−j}(x), percentile_j(x)]`, per call. */
export const percentile = (j = 0.99): Range<Record<never, never>> => {
  if (!(j > 0.5 && j <= 1)) throw new RangeError(`percentile: j must be in (0.5, 1], got ${j}`);
  const stat = statistic((t) => quantile(t, j), (t) => quantile(t, 1 - j));
  return {
    name: `percentile(${j})`,
    dynamic: true,
    init: () => ({}),
    defaults: () => ({}),
    bounds: (_p, x, symmetric) => stat(x, symmetric),
  };
};

/** Parameters of {@link learnable}: `upper` always, `lower` for asymmetric ranges. */
export type LearnableParams = { readonly lower?: tf.Scalar; readonly upper: tf.Scalar };

/**
 * Learnable bounds (Eq. 8): `l` and `u` are parameters, initialised by `from` on the
 * calibration sample (default: the 1st/99th percentiles, SPEC §2).
 */
export const learnable = <P extends Params>(
  from: Range<P> = percentile(0.99) as unknown as Range<P>,
): Range<LearnableParams> => ({
  name: `learnable(${from.name})`,
  dynamic: false,
  init: (sample, symmetric) =>
    tf.tidy(() => {
      const b = from.bounds(from.init(sample, symmetric), sample, symmetric);
      return symmetric ? { upper: tf.keep(b.upper.clone()) } : {
        lower: tf.keep(b.lower.clone()),
        upper: tf.keep(b.upper.clone()),
      };
    }),
  defaults: (symmetric) =>
    symmetric ? { upper: tf.scalar(1) } : { lower: tf.scalar(0), upper: tf.scalar(1) },
  bounds: (p, _x, symmetric) => {
    if (symmetric) return { lower: tf.neg(p.upper), upper: p.upper };
    if (!p.lower) throw new Error("learnable: asymmetric range needs a `lower` parameter");
    return { lower: p.lower, upper: p.upper };
  },
});

/** Parameters of {@link clipCorrected}: the correction factor γ. */
export type ClipCorrectedParams = { readonly gamma: tf.Scalar };

/**
 * Weight clipping correction (Eq. 9): `u = stopgrad(percentile_j(|W|)) · γ`, γ learnable and
 * initialised to 1. The percentile is recomputed from the tensor on every call, so it follows
 * the weights as they train; only γ receives a gradient.
 */
export const clipCorrected = (j = 0.99): Range<ClipCorrectedParams> => {
  const base = percentile(j);
  return {
    name: `clipCorrected(${j})`,
    dynamic: true, // the percentile of the tensor it quantizes (weights: fixed per model)
    init: () => ({ gamma: tf.scalar(1) }),
    defaults: () => ({ gamma: tf.scalar(1) }),
    bounds: (p, x, symmetric) => {
      const b = base.bounds({}, x, symmetric);
      return { lower: tf.mul(b.lower, p.gamma), upper: tf.mul(b.upper, p.gamma) };
    },
  };
};
