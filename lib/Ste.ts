/**
 * Straight-through estimators: operations whose forward pass is not differentiable (rounding)
 * or must not be differentiated (statistics of the weights), with the backward pass the
 * quantization papers use.
 *
 * `tf.round` is round-half-to-even forward but has a zero gradient, and tfjs has no
 * `stopGradient`; both are written here with `tf.customGrad` (every input a tensor, one
 * gradient per input, as tfjs requires).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** A one-input `tf.customGrad` (tfjs types its callback as variadic over tensors and `save`). */
function unary(
  f: (x: tf.Tensor) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor) => tf.Tensor[] },
): (x: tf.Tensor) => tf.Tensor {
  const g = tf.customGrad(
    ((...args: Array<tf.Tensor | tf.GradSaveFunc>) => f(args[0] as tf.Tensor)) as Parameters<
      typeof tf.customGrad
    >[0],
  );
  return (x) => g(x);
}

/**
 * Round half to even forward, identity backward (the STE of Eq. 1 of the ODM paper).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { round } from "./Ste.ts";
 * const y = round(tf.tensor1d([0.5, 1.5, 2.4]));
 * // y = [0, 2, 2]; dy/dx = [1, 1, 1]
 * ```
 */
export const round: (x: tf.Tensor) => tf.Tensor = unary((x) => ({
  value: tf.round(x),
  gradFunc: (dy) => [dy],
}));

/** Identity forward, zero gradient backward (`stop_gradient` / `.detach()`). */
export const stopGradient: <T extends tf.Tensor>(x: T) => T = unary((x) => ({
  value: tf.clone(x),
  gradFunc: (dy) => [tf.zerosLike(dy)],
})) as <T extends tf.Tensor>(x: T) => T;

/**
 * A statistic of `x` treated as a constant: `f(x)` forward, zero gradient to `x` backward.
 *
 * NOTE: unlike `stopGradient(f(x))`, the operations inside `f` are not recorded on the
 * gradient tape at all, so `f` may use ops that have no gradient in tfjs (`topk`).
 */
export function constant(f: (x: tf.Tensor) => tf.Tensor): (x: tf.Tensor) => tf.Tensor {
  return unary((x) => ({ value: f(x), gradFunc: () => [tf.zerosLike(x)] }));
}
