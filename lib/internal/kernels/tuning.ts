/**
 * Adapter-dependent tuning of our kernels, chosen once at start-up from the backend's `Info`.
 *
 * Software adapters (llvmpipe/lavapipe, SwiftShader) run a shader as SIMD loops on the CPU:
 * there, operands in read-only storage textures, big register tiles and a few thousand
 * invocations win (PLATFORM.md, "WebGPU without a GPU"). Real GPUs want storage buffers, smaller
 * tiles and many more invocations. Nothing here names a particular machine.
 *
 * @module
 */
import type { Storage } from "./gpu.ts";

/**
 * The adapter limits a device is requested with (at the adapter's own values) and our kernels
 * tune themselves to: lib/Backend.ts under Deno and lib/web/backend.ts in a page.
 */
export const LIMITS = [
  "maxTextureDimension2D",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeWorkgroupsPerDimension",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeInvocationsPerWorkgroup",
  "maxStorageBuffersPerShaderStage",
  "maxStorageTexturesPerShaderStage",
] as const;

/** The knobs of our kernels. */
export interface Tuning {
  /** Where packed operands live. */
  readonly storage: Storage;
  /** Target `vec4` accumulators per forward invocation (pixels × out-channels / 4). */
  readonly forwardAccumulators: number;
  /** Largest out-channel tile of the forward kernel (multiple of 4). */
  readonly forwardMaxTileO: number;
  /** Target `vec4` accumulators per matmul invocation (rows × columns / 4). */
  readonly matMulAccumulators: number;
  /** Largest in- and out-channel tiles of the weight-gradient kernel (multiples of 4). */
  readonly filterMaxTile: number;
  /** Invocations the weight gradient aims for (it slices the pixels to get there). */
  readonly filterInvocations: number;
  /** Partial sums of the fake-quant gradient's range reductions. */
  readonly reduceParts: number;
  /** Largest texture side (`maxTextureDimension2D`). */
  readonly maxTexture: number;
  /** Largest storage-buffer binding in bytes. */
  readonly maxBinding: number;
}

/** The subset of `Backend.Info` the tuning reads. */
export interface AdapterFacts {
  readonly software: boolean;
  readonly limits?: Readonly<Record<string, number>>;
}

/** Whether this WebGPU implementation accepts read-only storage textures in WGSL. */
export function readonlyTextures(): boolean {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  const features = gpu?.wgslLanguageFeatures as ReadonlySet<string> | undefined;
  return features?.has("readonly_and_readwrite_storage_textures") ?? false;
}

/** Picks the tuning for an adapter. */
export function choose(facts: AdapterFacts): Tuning {
  const limits = facts.limits ?? {};
  const maxTexture = limits.maxTextureDimension2D ?? 8192;
  const maxBinding = limits.maxStorageBufferBindingSize ?? 128 * 1024 * 1024;
  if (facts.software) {
    return {
      storage: readonlyTextures() ? "texture" : "buffer",
      forwardAccumulators: 16,
      forwardMaxTileO: 8,
      matMulAccumulators: 32,
      filterMaxTile: 16,
      filterInvocations: 1024,
      reduceParts: 1024,
      maxTexture,
      maxBinding,
    };
  }
  return {
    storage: "buffer",
    forwardAccumulators: 8,
    forwardMaxTileO: 8,
    matMulAccumulators: 8,
    filterMaxTile: 8,
    filterInvocations: 65536,
    reduceParts: 16384,
    maxTexture,
    maxBinding,
  };
}
