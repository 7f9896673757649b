/**
 * Adapter limits that tfjs-webgpu 4.22 does not respect, and the guard that turns any breach
 * into an error instead of wrong numbers.
 *
 * Root cause of the wrong numbers on GL llvmpipe (issue 11): tfjs's `AddN` binds every input as
 * its own storage buffer (plus one for the output) and never checks
 * `maxStorageBuffersPerShaderStage`. The wgpu in Deno 2.9.6 does not reject the pipeline either:
 * on GL (limit 16) an `addN` of 16 tensors silently drops one input, and on Vulkan lavapipe
 * (limit 32) inputs past 31 are dropped. Every sum of many gradient statistics (the cosine of
 * Eq. 6, the mismatch loss over many layers) went through it.
 *
 * - {@link installAddN} replaces webgpu `AddN` by the stock kernel over chunks that fit.
 * - {@link guardPrograms} wraps the backend's `runWebGPUProgram` so that a program needing more
 *   storage buffers than the adapter has throws {@link AdapterLimitExceeded}, naming the program.
 * - {@link checkBindings} does the same for our own dispatches (lib/internal/kernels/gpu.ts).
 * - Both count dispatches for the collections of `native.ts`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Native from "./native.ts";

/** A kernel would need more of a resource than the adapter allows. */
export class AdapterLimitExceeded extends Error {
  constructor(
    readonly kernel: string,
    readonly limit: string,
    readonly needed: number,
    readonly allowed: number,
  ) {
    super(`${kernel} needs ${needed} ${limit} but the adapter allows ${allowed}`);
    this.name = "AdapterLimitExceeded";
  }
}

interface Device {
  readonly limits: GPUSupportedLimits;
}

const deviceOf = (backend: object): Device => (backend as { device: Device }).device;

/** Storage buffers one shader stage may bind on this backend's device. */
export function storageBuffers(backend: object): number {
  return deviceOf(backend).limits.maxStorageBuffersPerShaderStage;
}

let addNInstalled = false;

/**
 * Installs a webgpu `AddN` that sums at most `maxStorageBuffersPerShaderStage − 1` inputs per
 * dispatch (the stock kernel over chunks, then over the partial sums). Idempotent.
 */
export function installAddN(): void {
  if (addNInstalled) return;
  const config = tf.getKernel("AddN", "webgpu");
  if (!config) return;
  addNInstalled = true;
  const stock = config.kernelFunc;
  tf.unregisterKernel("AddN", "webgpu");
  tf.registerKernel({
    kernelName: "AddN",
    backendName: "webgpu",
    kernelFunc: (args) => {
      const backend = args.backend as { disposeData(id: tf.DataId): void };
      const chunk = Math.max(2, storageBuffers(backend) - 1);
      let inputs = args.inputs as unknown as tf.TensorInfo[];
      const made: tf.TensorInfo[] = [];
      while (inputs.length > chunk) {
        const partial: tf.TensorInfo[] = [];
        for (let i = 0; i < inputs.length; i += chunk) {
          const part = inputs.slice(i, i + chunk);
          const sum = part.length === 1
            ? part[0]
            : stock({ ...args, inputs: part as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo;
          if (part.length > 1) made.push(sum);
          partial.push(sum);
        }
        inputs = partial;
      }
      const out = stock({ ...args, inputs: inputs as unknown as tf.NamedTensorInfoMap });
      for (const t of made) backend.disposeData(t.dataId);
      return out;
    },
  });
}

interface Program {
  readonly variableNames: readonly string[];
  readonly shaderKey?: string;
  readonly constructor: { readonly name: string };
}

const guarded = new WeakSet<object>();

/**
 * Makes every tfjs program on `backend` check its storage-buffer count (inputs + output) against
 * the device's limit before it is compiled, throwing {@link AdapterLimitExceeded}. Idempotent.
 */
export function guardPrograms(backend: object): void {
  if (guarded.has(backend)) return;
  guarded.add(backend);
  const b = backend as {
    runWebGPUProgram: (p: Program, inputs: tf.TensorInfo[], ...rest: unknown[]) => tf.TensorInfo;
  };
  const run = b.runWebGPUProgram.bind(backend);
  const limits = deviceOf(backend).limits;
  const allowed = limits.maxStorageBuffersPerShaderStage;
  const bytes = (t: { shape: readonly number[]; dtype: string }) =>
    tf.util.sizeFromShape(t.shape as number[]) * (t.dtype === "complex64" ? 8 : 4);
  b.runWebGPUProgram = (program, inputs, outputDtype, ...rest) => {
    const name = `tfjs ${program.constructor.name}`;
    const needed = inputs.length + 1;
    if (needed > allowed) throw new AdapterLimitExceeded(name, "storage buffers", needed, allowed);
    const outShape = (program as unknown as { outputShape: number[] }).outputShape;
    const largest = Math.max(
      bytes({ shape: outShape, dtype: String(outputDtype) }),
      ...inputs.map(bytes),
    );
    if (largest > limits.maxStorageBufferBindingSize) {
      throw new AdapterLimitExceeded(
        name,
        "bytes in one storage binding",
        largest,
        limits.maxStorageBufferBindingSize,
      );
    }
    Native.dispatched();
    return run(program, inputs, outputDtype, ...rest);
  };
}

/** What one of our dispatches binds and launches, checked by {@link checkBindings}. */
export interface DispatchUse {
  /** Storage buffers bound (uniform buffers not counted). */
  readonly buffers: number;
  /** Storage textures bound. */
  readonly textures: number;
  /** Bytes of the largest buffer bound (each is bound whole). */
  readonly largest: number;
  /** Workgroups in the y dimension. */
  readonly groupsY: number;
}

/** The resources of one of our dispatches, checked against the device's limits. */
export function checkBindings(device: Device, kernel: string, counts: DispatchUse): void {
  const l = device.limits;
  if (counts.largest > l.maxStorageBufferBindingSize) {
    throw new AdapterLimitExceeded(
      kernel,
      "bytes in one storage binding",
      counts.largest,
      l.maxStorageBufferBindingSize,
    );
  }
  if (counts.groupsY > l.maxComputeWorkgroupsPerDimension) {
    throw new AdapterLimitExceeded(
      kernel,
      "workgroups per dimension",
      counts.groupsY,
      l.maxComputeWorkgroupsPerDimension,
    );
  }
  if (counts.buffers > l.maxStorageBuffersPerShaderStage) {
    throw new AdapterLimitExceeded(
      kernel,
      "storage buffers",
      counts.buffers,
      l.maxStorageBuffersPerShaderStage,
    );
  }
  if (counts.textures > l.maxStorageTexturesPerShaderStage) {
    throw new AdapterLimitExceeded(
      kernel,
      "storage textures",
      counts.textures,
      l.maxStorageTexturesPerShaderStage,
    );
  }
}
