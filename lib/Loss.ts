/**
 * Losses of QAT for SR: the L1 reconstruction loss, the mismatch regulariser of Eq. 2–3
 * of the ODM paper, computed from the quantized layers' recorded inputs ({@link Nn.Tap}), and
 * PAMS's attention-transfer distillation (SKT).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Kernels from "./Kernels.ts";
import type * as Nn from "./Nn.ts";
import * as Ste from "./Ste.ts";

/** Mean absolute error (the only loss of ODM's training, SPEC §7). */
export const l1 = (sr: tf.Tensor, hr: tf.Tensor): tf.Scalar =>
  tf.mean(tf.abs(tf.sub(sr, hr))) as tf.Scalar;

/** ε inside the square root of the Frobenius norm, so its gradient exists at e = 0. */
export const NORM_EPSILON = 1e-12;

/**
 * Eq. 2–3: `L_M = Σ_i ‖X_i − q(X_i)‖_F` over the quantized layers, each norm over the whole
 * batch tensor (not squared, not averaged). With `detach` (default, SPEC §3) `q(X_i)` is a
 * constant, so ∂M/∂X is the unit direction `e/‖e‖` and the activation ranges get no gradient
 * from L_M; without it the gradient flows through q by the STE.
 */
export function mismatch(
  taps: ReadonlyArray<Nn.Tap>,
  opts: { readonly detach?: boolean } = {},
): tf.Scalar {
  if (taps.length === 0) return tf.scalar(0);
  const detach = opts.detach ?? true;
  // ‖X − q(X)‖ as one fused op (sub, square, sum, add and sqrt in one pass; its gradient in
  // one more): lib/Kernels.ts `diffNorm`.
  const norms = taps.map((t) =>
    Kernels.diffNorm(t.x, detach ? Ste.stopGradient(t.q) : t.q, NORM_EPSILON)
  );
  return tf.addN(norms) as tf.Scalar;
}

/** ε of the attention map's L2 normalisation (PAMS: `F.normalize`'s default). */
export const ATTENTION_EPSILON = 1e-12;

/**
 * The spatial attention map of a feature map `[N, H, W, C]` (Zagoruyko & Komodakis, used by
 * PAMS's SKT): `mean_C(x²)`, flattened to `[N, H·W]` and divided by its L2 norm per image
 * (`max(‖·‖, ε)`).
 */
export function attention(x: tf.Tensor4D): tf.Tensor2D {
  const [n, h, w] = x.shape;
  const a = tf.reshape(tf.mean(tf.square(x), 3), [n, h * w]);
  const norm = tf.maximum(tf.norm(a, 2, 1, true), ATTENTION_EPSILON);
  return tf.div(a, norm) as tf.Tensor2D;
}

/**
 * PAMS's SKT loss: the mean squared difference of the attention maps of the student's and the
 * teacher's features (the teacher is a constant).
 */
export const attentionTransfer = (student: tf.Tensor4D, teacher: tf.Tensor4D): tf.Scalar =>
  tf.mean(tf.square(tf.sub(attention(student), Ste.stopGradient(attention(teacher))))) as tf.Scalar;
