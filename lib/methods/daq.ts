/**
 * DAQ ("DAQ: Channel-Wise Distribution-Aware Quantization for Deep Image Super-Resolution
 * Networks", Hong et al., WACV 2022) as its official code runs it (Cheeun/DAQ-pytorch,
 * `src/model/quantize.py`):
 *
 * - the step table `gaussian_steps` (the optimal uniform step of a unit Gaussian), indexed by
 *   bits − 1: 1.596 at 2 bits, 0.996 at 3, 0.586 at 4 (`gaussian_steps_func(self.a_bit-1)`);
 * - weights (`Conv2d_Q.forward`): `σ = std(W)` (unbiased, the whole tensor), mid-rise levels
 *   `(round(w/Δ + 0.5) − 0.5)·Δ` with `Δ = step·σ`, clipped to `±(2^b/2 − 0.5)·Δ`, identity
 *   gradient (`self.weight - self.weight.detach() + w_q.detach()`);
 * - activations (`Quantization.forward`), per image and channel with detached statistics and an
 *   identity gradient (`quantized_x.detach() + x - x.detach()`): when the whole tensor's minimum
 *   is 0 (after a ReLU) μ and σ are taken over the positive values (`x_num = sum(x>0) + 1`) and
 *   the grid is anchored at zero, `Δ·(round((x − t)/Δ + 0.5) − 0.5) + t` with
 *   `t = (2^b/2 − 0.5)·Δ`, and no upper clip (commented out in the official code); otherwise
 *   `μ, σ` are the channel's mean and unbiased std, the levels mid-rise around μ, clipped to
 *   `μ ± t`;
 * - σ itself quantized to `qq` bits across the channels of an image (`qq_bit`, 4 in the
 *   README's `w2a2qq4` runs): mid-rise around the channels' mean σ with step
 *   `gaussian_steps[qq − 1]·std_c(σ)`;
 * - placement: the inputs and weights of both EDSR/SRResNet block convs (`common.ResBlock`:
 *   `quant1` before conv1, `quant2` after the ReLU) and of every RDN dense conv (`model/rdn.py`
 *   `RDB_Conv`), LFF and GFF in FP32; no learnable quantizer parameters, no regulariser.
 *
 * Cost: the run-time statistics are the channel-wise dynamic cost the ODM paper removes; it
 * reports +0.5T for EDSR W2A2 (Table 6), which is 2 FP32 operations per activation value
 * (normalise, de-normalise); that is what {@link activation}'s `cost` charges.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Cooperative from "../Cooperative.ts";
import type * as Method from "../Method.ts";
import type * as Quant from "../Quant.ts";
import type * as Quantizer from "../Quantizer.ts";
import * as Ste from "../Ste.ts";
import * as Odm from "./odm.ts";
import * as Placement from "./placement.ts";

/** `gaussian_steps` of `quantize.py`, indexed by bits − 1. */
export const GAUSSIAN_STEPS: Readonly<Record<number, number>> = {
  0: 2.0,
  1: 1.596,
  2: 0.996,
  3: 0.586,
  4: 0.335,
  5: 0.188,
  6: 0.104,
  7: 0.057,
  8: 0.031,
};

/** The σ bits of the official runs (`sh test.sh edsr_baseline 2 2 4`: w2a2qq4). */
export const SIGMA_BITS = 4;

const stepOf = (bits: number) => {
  const s = GAUSSIAN_STEPS[bits - 1];
  if (s === undefined) throw new RangeError(`daq: no Gaussian step for ${bits} bits`);
  return s;
};

/** Identity gradient: `q` forward, `x`'s gradient backward (`q.detach() + x - x.detach()`). */
const straightThrough = (x: tf.Tensor, q: tf.Tensor) => tf.add(x, Ste.stopGradient(tf.sub(q, x)));

/**
 * The mid-rise rounding of `quantize.py`: `(round(v/Δ + 0.5) − 0.5)·Δ`, 0 where Δ = 0 (its
 * `step + (step==0)*(-1)` … `*(step>0)`).
 */
function midRise(v: tf.Tensor, step: tf.Tensor): tf.Tensor {
  const safe = tf.add(step, tf.mul(tf.cast(tf.equal(step, 0), "float32"), -1));
  const y = tf.mul(tf.sub(tf.round(tf.add(tf.div(v, safe), 0.5)), 0.5), safe);
  return tf.mul(y, tf.cast(tf.greater(step, 0), "float32"));
}

/** torch.std (unbiased) over `axes`, keeping them. */
function std(x: tf.Tensor, axes: number[]): tf.Tensor {
  const n = axes.reduce((a, ax) => a * x.shape[ax]!, 1);
  const mean = tf.mean(x, axes, true);
  return tf.sqrt(tf.div(tf.sum(tf.square(tf.sub(x, mean)), axes, true), Math.max(1, n - 1)));
}

/** The forward value of DAQ's weight quantizer (no gradient). */
export function weightValue(w: tf.Tensor, bits: number): tf.Tensor {
  return tf.tidy(() => {
    const step = tf.mul(std(w, w.shape.map((_, i) => i)), stepOf(bits));
    const thr = tf.mul(step, 2 ** bits / 2 - 0.5);
    return tf.minimum(tf.maximum(midRise(w, step), tf.neg(thr)), thr);
  });
}

/** DAQ weights (`Conv2d_Q`): σ-based mid-rise levels clipped to ±thr, identity gradient. */
export function weight(bits: number): Quantizer.Quantizer<Record<never, never>> {
  // NOTE: the value is computed off the gradient tape (`Ste.constant`): tfjs's Minimum and
  // Maximum gradients do not reduce a broadcast bound, and the STE does not need them.
  const value = Ste.constant((w) => weightValue(w, bits));
  const fake = (w: tf.Tensor) => straightThrough(w, value(w));
  return {
    bits,
    symmetric: true,
    name: `daq${bits}·σ`,
    dynamic: true,
    init: () => ({}),
    defaults: () => ({}),
    bounds: (_p, w) => {
      const thr = tf.mul(std(w, w.shape.map((_, i) => i)), stepOf(bits) * (2 ** bits / 2 - 0.5))
        .reshape([]) as tf.Scalar;
      return { lower: tf.neg(thr), upper: thr };
    },
    apply: (_p, w) => (bits === 32 ? w : fake(w)),
  };
}

/** σ quantized to `qq` bits across the channels of each image (NHWC: `[N, 1, 1, C]`). */
export function quantizeSigma(sigma: tf.Tensor, qq = SIGMA_BITS): tf.Tensor {
  const mu = tf.mean(sigma, 3, true);
  const step = tf.mul(std(sigma, [3]), stepOf(qq));
  const thr = tf.mul(step, 2 ** qq / 2 - 0.5);
  const y = tf.minimum(tf.maximum(midRise(tf.sub(sigma, mu), step), tf.neg(thr)), thr);
  return tf.add(y, mu);
}

/** The forward value of DAQ's activation quantizer on an NHWC tensor (no gradient). */
export function activationValue(x: tf.Tensor, bits: number, qq = SIGMA_BITS): tf.Tensor {
  return tf.tidy(() => {
    const d = Ste.stopGradient(x);
    const lvls = 2 ** bits / 2;
    // `if x.min() == 0`: after a ReLU (the whole tensor's minimum, not per channel).
    const postRelu = tf.equal(tf.min(d), 0);
    // Post-ReLU statistics over the positive values (+1 in the count, as the official code).
    const count = tf.add(tf.sum(tf.cast(tf.greater(d, 0), "float32"), [1, 2], true), 1);
    const muR = tf.div(tf.sum(d, [1, 2], true), count);
    const x2 = tf.div(tf.sum(tf.square(d), [1, 2], true), count);
    // NOTE: max(0, ·) guards the float error of E[x²] − μ² (NaN in the official code).
    const sigmaR = tf.sqrt(tf.relu(tf.sub(x2, tf.square(muR))));
    const muG = tf.mean(d, [1, 2], true);
    const sigmaG = std(d, [1, 2]);
    const relu = (a: tf.Tensor, b: tf.Tensor) => tf.where(postRelu, a, b);
    let sigma = relu(sigmaR, sigmaG);
    if (qq !== 32) sigma = quantizeSigma(sigma, qq);
    const step = tf.mul(sigma, stepOf(bits));
    const thr = tf.mul(step, lvls - 0.5);
    // Post-ReLU: anchored at zero, no upper clip. Otherwise mid-rise around μ, clipped to ±thr.
    const zeroAnchored = tf.add(midRise(tf.sub(d, thr), step), thr);
    const centred = tf.add(
      tf.minimum(tf.maximum(midRise(tf.sub(d, muG), step), tf.neg(thr)), thr),
      muG,
    );
    return relu(zeroAnchored, centred);
  });
}

/** DAQ's activation quantizer (`Quantization`), identity gradient, charged 2 FP32 ops/value. */
export function activation(
  bits: number,
  qq = SIGMA_BITS,
): Quantizer.Quantizer<Record<never, never>> {
  const value = Ste.constant((x) => activationValue(x, bits, qq)); // off the tape, as weights
  return {
    bits,
    symmetric: false,
    name: `daq${bits}·qq${qq}`,
    dynamic: true, // per-image, per-channel statistics
    init: () => ({}),
    defaults: () => ({}),
    bounds: () => ({ lower: tf.scalar(-Infinity), upper: tf.scalar(Infinity) }),
    cost: ({ elements }) => ({ storage: 0, flops: 2 * elements, bitops: 2 * elements * 32 * 32 }),
    apply: (_p, x) => (bits === 32 ? x : straightThrough(x, value(x))),
  };
}

/** DAQ's placement: the ODM one, except that RDN's LFF and GFF stay FP32 (`model/rdn.py`). */
function placement(s: Method.SchemeInput): ReadonlyArray<Quant.Rule> {
  const q = { weight: weight(s.wbits), input: activation(s.abits) };
  return s.family === "rdn"
    ? [{ match: "rdbs.*.convs.*", kinds: ["conv2d"], ...q }]
    : Placement.odm(s.family, q);
}

/** The DAQ method. */
export const daq: Method.Method = {
  name: "daq",
  label: "DAQ (per-image channel-wise normalisation)",
  options: {},
  scheme: placement,
  merge: (r) => Cooperative.reconstructionOnly({ lambdaR: r.lambdaR }),
  optimizer: (t) => Odm.optimizer(t),
};
