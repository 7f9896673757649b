/**
 * The part of tfjs's cpu backend that our kernels' cpu twins use (tfjs does not export its
 * type), and the float32 read they all do.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";

/** What a cpu kernel calls on its `backend` argument. */
export interface CpuBackend {
  readSync(dataId: tf.DataId): tf.backend_util.BackendValues;
  makeTensorInfo(
    shape: number[],
    dtype: tf.DataType,
    values?: tf.backend_util.BackendValues,
  ): tf.TensorInfo;
}

/** A float32 input's values, without a copy. */
export const read = (b: CpuBackend, t: tf.TensorInfo) => b.readSync(t.dataId) as Float32Array;
