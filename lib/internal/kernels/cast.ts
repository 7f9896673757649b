/**
 * A webgpu `Cast` to float32 that converts.
 *
 * tfjs-webgpu 4.22 casts bool and int32 to float32 without touching the data ("we cast to
 * higher precision", `kernels/Cast.ts`): the result shares the input's buffer, which holds
 * 32-bit integers, and is labelled float32. Most kernels type their inputs by the buffer and
 * get it right, but Transpose does not, so every reduction over leading axes (which transposes
 * first) read the integers as floats: `sum(cast(x > 0, "float32"), [1, 2])` gave 0 instead of
 * the counts, and a later `mean` even returned a stale buffer (measured on lavapipe and GL;
 * found by the port of DAQ's post-ReLU statistics in tests/methods.test.ts). Here the cast
 * writes real float32 values: on the CPU when the values are there, else one dispatch.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, type Gpu } from "./gpu.ts";

const SOURCE = `struct U { size: i32 };
@group(0) @binding(0) var<storage, read_write> Y: array<f32>;
@group(0) @binding(1) var<storage, read> X: array<i32>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.size) { return; }
  Y[id] = f32(X[id]);
}`;

interface TensorData {
  readonly values?: ArrayLike<number> | null;
  readonly dtype: tf.DataType;
}

let installed = false;

/** Replaces webgpu `Cast` for bool/int32 → float32; other casts run the stock kernel. */
export function installCast(gpuOf: (backend: object) => Gpu, endOp: (b: object) => void): void {
  if (installed) return;
  const config = tf.getKernel("Cast", "webgpu");
  if (!config) return;
  installed = true;
  const stock = config.kernelFunc;
  tf.unregisterKernel("Cast", "webgpu");
  tf.registerKernel({
    kernelName: "Cast",
    backendName: "webgpu",
    kernelFunc: (args) => {
      const x = args.inputs.x as tf.TensorInfo;
      const dtype = (args.attrs as unknown as { dtype: tf.DataType }).dtype;
      const backend = args.backend as unknown as {
        tensorMap: { get(id: tf.DataId): TensorData };
      };
      const stored = backend.tensorMap.get(x.dataId);
      if (dtype !== "float32" || (stored.dtype !== "bool" && stored.dtype !== "int32")) {
        return stock(args);
      }
      const gpu = gpuOf(args.backend);
      const size = tf.util.sizeFromShape(x.shape);
      if (stored.values || size === 0) {
        return gpu.constant(x.shape, Float32Array.from(stored.values ?? []));
      }
      const out = gpu.output(x.shape);
      const pipe = gpu.pipeline("qat-cast-f32", () => SOURCE);
      gpu.dispatch(pipe, [{ buffer: out.buffer }, { buffer: gpu.bufferOf(x) }, {
        buffer: gpu.uniforms([size]),
      }], size);
      endOp(args.backend);
      return out.info;
    },
  });
}
