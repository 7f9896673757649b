/**
 * Small tensor helpers that work around backend limits.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** Inputs per `tf.addN` call: tfjs-webgpu's AddN silently drops inputs beyond 31 (measured). */
const ADD_N_CHUNK = 16;

/** The sum of any number of same-shape tensors (`tf.addN`, chunked so every backend is exact). */
export function addN(ts: ReadonlyArray<tf.Tensor>): tf.Tensor {
  if (ts.length === 0) throw new Error("addN needs at least one tensor");
  if (ts.length === 1) return tf.clone(ts[0]);
  if (ts.length <= ADD_N_CHUNK) return tf.addN([...ts]);
  const partial: tf.Tensor[] = [];
  for (let i = 0; i < ts.length; i += ADD_N_CHUNK) partial.push(addN(ts.slice(i, i + ADD_N_CHUNK)));
  const total = addN(partial);
  tf.dispose(partial);
  return total;
}
