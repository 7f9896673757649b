/**
 * PAMS ("PAMS: Quantized Super-Resolution via Parameterized Max Scale", Li et al., ECCV 2020)
 * as its official code runs it (colorjam/PAMS):
 *
 * - weights: symmetric with zero a level, `q = round(w·n/m)·m/n`, `m = max|W| + 1e-8` recomputed
 *   from the current weights (no gradient through m), `n = 2^(b−1) − 1` (3 levels at 2 bits)
 *   (`model/quant_ops.py` `quant_max`, `quant_weight.forward`);
 * - activations: `q = round(clip(x, −α, α)·n/α)·α/n`, α learnable (`pams_quant_act.forward`),
 *   initialised to the batch mean of per-image `max|x|` (`pams_quant_act._ema`: with
 *   `ema_epoch = 1` the first epoch assigns it from each batch, `self.max_val = max_val`, so it
 *   ends as the last batch's value: here, the last calibration batch's);
 * - placement: activations in the data path (`model/edsr.py` `PAMS_ResBlock`, `model/rdn.py`;
 *   see `placement.ts` `dataPath`);
 * - loss: L1 + 1e3 · SKT, the attention-transfer loss `mean((at(s) − at(t))²)`,
 *   `at(x) = normalize(mean_c(x²))`, on the body output (`main.py` `Trainer.train`,
 *   `utils/common.py` `at_loss`; `option.py` `--w_at 1e+3`);
 * - Adam, α at lr 1e-2 and everything else at the base lr (`main.py`
 *   `params = [{'params': arch_param}, {'params': alpha_param, 'lr': 1e-2}]`), both stepped
 *   down by the same schedule (`StepLR`); no mismatch regulariser.
 *
 * NOTE: PAMS trains with batch 16 (`option.py --batch_size 16`): that is a recipe setting
 * (recipes/*-pams.ts), not the method's, so that `deno task compare` feeds every method the same
 * batches. PAMS's first epoch also trains the weights while α follows the batches unclipped; we
 * calibrate α on the FP model instead.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Cooperative from "../Cooperative.ts";
import type * as Method from "../Method.ts";
import type * as Quantizer from "../Quantizer.ts";
import type * as Range from "../Range.ts";
import * as Ste from "../Ste.ts";
import * as Odm from "./odm.ts";
import * as Placement from "./placement.ts";

/** PAMS's SKT weight (`option.py --w_at 1e+3`). */
export const SKT_WEIGHT = 1e3;
/** PAMS's learning rate for α (`main.py`, the `alpha_param` group). */
export const ALPHA_LR = 1e-2;
/** `quant_max`'s guard: `max|W| + 1e-8`. */
export const MAX_EPSILON = 1e-8;

const ops = new Map<number, (x: tf.Tensor, a: tf.Scalar) => tf.Tensor>();

/**
 * `round(clip(x, −α, α)·n/α)·α/n`, `n = 2^(b−1) − 1`, with autodiff's gradients under a
 * straight-through round: inside `[−α, α]` `∂q/∂x = 1`, `∂q/∂α = (q − x)/α`; above `α`:
 * `∂q/∂α = 1`; below `−α`: `∂q/∂α = −1`; `∂q/∂x = 0` outside.
 *
 * NOTE: a custom gradient because tfjs's Maximum/Minimum gradients do not reduce over broadcast
 * axes (a scalar α would get a gradient of x's shape). tests/methods.test.ts checks it against
 * finite differences and the forward pass against a float64 port of `pams_quant_act.forward`.
 */
export function zeroLevelQuant(x: tf.Tensor, alpha: tf.Scalar, bits: number): tf.Tensor {
  let op = ops.get(bits);
  if (!op) {
    const n = 2 ** (bits - 1) - 1;
    const f = tf.customGrad(
      ((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
        const [x, a, save] = args as [tf.Tensor, tf.Scalar, tf.GradSaveFunc];
        const clipped = tf.minimum(tf.maximum(x, tf.neg(a)), a);
        // The official order: `act * qmax / alpha`, rounded, then `* alpha / qmax`.
        const q = tf.div(tf.mul(tf.round(tf.div(tf.mul(clipped, n), a)), a), n);
        save([x, a, q]);
        return {
          value: q,
          gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
            const [sx, sa, sq] = saved;
            const inside = tf.lessEqual(tf.abs(sx), sa);
            const dx = tf.where(inside, dy, tf.zerosLike(sx));
            const slope = tf.div(tf.mul(dy, tf.sub(sq, sx)), sa);
            const outside = tf.where(tf.greater(sx, sa), dy, tf.neg(dy));
            return [dx, tf.sum(tf.where(inside, slope, outside))];
          },
        };
      }) as Parameters<typeof tf.customGrad>[0],
    );
    op = (x, a) => f(x, a);
    ops.set(bits, op);
  }
  return op(x, alpha);
}

const checkBits = (bits: number, what: string) => {
  if (!(Number.isInteger(bits) && ((bits >= 2 && bits <= 8) || bits === 32))) {
    throw new RangeError(`${what}: bits must be an integer in 2–8 or 32, got ${bits}`);
  }
};

/** PAMS weights (`quant_weight`): `m = max|W| + 1e-8`, nothing learned, identity gradient. */
export function weight(bits: number): Quantizer.Quantizer<Record<never, never>> {
  checkBits(bits, "pams weight");
  const bound = (w: tf.Tensor) =>
    tf.add(Ste.stopGradient(tf.max(tf.abs(w))), MAX_EPSILON) as tf.Scalar;
  return {
    bits,
    symmetric: true,
    name: `pams${bits}·max`,
    dynamic: true,
    init: () => ({}),
    defaults: () => ({}),
    bounds: (_p, w) => {
      const u = bound(w);
      return { lower: tf.neg(u), upper: u };
    },
    apply: (_p, w) => (bits === 32 ? w : zeroLevelQuant(w, bound(w), bits)),
  };
}

/** Parameters of {@link activation}: the learnable clipping bound α. */
export type AlphaParams = { readonly alpha: tf.Scalar };

/** `pams_quant_act._ema`: the batch mean of each image's `max|x|`. */
export const meanImageMax = (x: tf.Tensor): tf.Scalar =>
  tf.tidy(() => {
    const axes = Array.from({ length: x.rank - 1 }, (_, i) => i + 1);
    return tf.mean(tf.max(tf.abs(x), axes)) as tf.Scalar;
  });

/** PAMS's range `[−α, α]`, α learnable, initialised by {@link meanImageMax}. */
export const alphaRange: Range.Range<AlphaParams> = {
  name: "pamsAlpha",
  dynamic: false,
  init: (sample) => ({ alpha: meanImageMax(sample) }),
  defaults: () => ({ alpha: tf.scalar(10) }), // `reset_parameter`: `nn.init.constant_(alpha, 10)`
  bounds: (p) => ({ lower: tf.neg(p.alpha), upper: p.alpha }),
};

/**
 * PAMS activations (`pams_quant_act`). Calibration keeps the last batch's value
 * (`calibrationDecay` 0: `self.max_val = max_val` on every batch of the first epoch).
 */
export function activation(bits: number): Quantizer.Quantizer<AlphaParams> {
  checkBits(bits, "pams activation");
  return {
    bits,
    symmetric: true,
    name: `pams${bits}·α`,
    dynamic: false,
    calibrationDecay: 0,
    init: (sample) => alphaRange.init(sample, true),
    defaults: () => alphaRange.defaults(true),
    bounds: (p) => ({ lower: tf.neg(p.alpha), upper: p.alpha }),
    apply: (p, x) => (bits === 32 ? x : zeroLevelQuant(x, p.alpha, bits)),
  };
}

/** The PAMS method. */
export const pams: Method.Method = {
  name: "pams",
  label: "PAMS (max|W|, learnable α, SKT)",
  options: {},
  scheme: (s) =>
    Placement.dataPath(s.family, { weight: weight(s.wbits), input: activation(s.abits) }),
  merge: (r) => Cooperative.reconstructionOnly({ lambdaR: r.lambdaR }),
  optimizer: (t) => Odm.optimizer(t, ALPHA_LR),
  distill: { weight: SKT_WEIGHT, at: "upsample" },
};
