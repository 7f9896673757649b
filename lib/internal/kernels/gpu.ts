/**
 * Raw WebGPU plumbing for our kernels inside tfjs's `webgpu` backend.
 *
 * Our kernels record their dispatches into the backend's own command encoder and compute pass,
 * so they are ordered with every tfjs kernel and batched into the same submits. Inputs and
 * outputs are tfjs-owned `GPUBuffer`s; scratch storage (packed/padded operand textures or
 * buffers, partial sums) comes from a small pool owned here. Reusing a scratch resource in a
 * later dispatch of the same encoder is safe: WebGPU orders dispatches and copies in a command
 * buffer. Uniform buffers are written with `queue.writeBuffer`, which runs before the pending
 * encoder is submitted, so they go through the backend's deferred-release list exactly as tfjs's
 * own uniforms do.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import type { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import { checkBindings } from "./limits.ts";
import * as Native from "./native.ts";
import { hook as profileHook } from "./profile.ts";

/** The parts of tfjs's `WebGPUBackend` (4.22.0) we use, some of them private there. */
interface Internals {
  readonly device: GPUDevice;
  readonly queue: GPUQueue;
  readonly tensorMap: {
    get(dataId: tf.DataId): { resource: unknown; dtype: string; shape: number[] } | undefined;
  };
  readonly bufferManager: {
    acquireBuffer(size: number, usage: number): GPUBuffer;
    releaseBuffer(buffer: GPUBuffer, reuse?: boolean): void;
  };
  uniformPendingDisposal: GPUBuffer[];
  commandQueueOwnedIds: WeakSet<tf.DataId>;
  commandEncoder: GPUCommandEncoder | null;
  computePassEncoder: GPUComputePassEncoder | null;
  dispatchCountInPass: number;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  uploadToGPU(dataId: tf.DataId): void;
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
}

/** Where a packed operand lives: a read-only storage texture or a storage buffer. */
export type Storage = "texture" | "buffer";

/** One binding of a dispatch. */
export type Binding =
  | { readonly buffer: GPUBuffer }
  | { readonly texture: GPUTexture };

/** Workgroup size of every 1-D kernel here. */
export const WG = 16;

/** WGSL element type of a float kernel that moves `vec4`s where the size allows. */
export const floatType = (vec4: boolean): string => (vec4 ? "vec4<f32>" : "f32");

/**
 * Invocations of a strided partial reduction over `n` elements: at least 16 elements each, at
 * most `max` (the adapter's `reduceParts`), then one invocation sums the partials.
 */
export const partialCount = (n: number, max: number): number =>
  Math.max(1, Math.min(max, Math.ceil(n / 16)));

const MAX_POOL_BYTES = 512 * 1024 * 1024;

/** Per-backend state: compiled pipelines and the scratch pool. */
export class Gpu {
  readonly device: GPUDevice;
  private readonly b: Internals;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly freeTextures = new Map<string, GPUTexture[]>();
  private readonly textureKeys = new WeakMap<GPUTexture, string>();
  private readonly views = new WeakMap<GPUTexture, GPUTextureView>();
  private readonly freeBuffers = new Map<number, GPUBuffer[]>();
  private pooledBytes = 0;

  constructor(readonly backend: WebGPUBackend) {
    this.b = backend as unknown as Internals;
    this.device = this.b.device;
  }

  /** The pipeline for a WGSL source, compiled once per key. */
  pipeline(key: string, code: () => string): GPUComputePipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code: code(), label: key });
      p = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: key,
      });
      this.pipelines.set(key, p);
    }
    return p;
  }

  /** The GPU buffer of a tfjs tensor (uploading it first if its values are on the CPU). */
  bufferOf(t: tf.TensorInfo): GPUBuffer {
    this.b.uploadToGPU(t.dataId);
    const r = this.b.tensorMap.get(t.dataId)?.resource;
    if (!(r instanceof GPUBuffer)) throw new Error("tensor is not backed by a GPUBuffer");
    this.b.commandQueueOwnedIds.add(t.dataId);
    return r;
  }

  /** Whether these tensors live (after upload) in GPU buffers, as our kernels need. */
  onBuffers(...ts: tf.TensorInfo[]): boolean {
    return ts.every((t) => {
      const data = this.b.tensorMap.get(t.dataId);
      if (!data || data.dtype !== "float32") return false;
      this.b.uploadToGPU(t.dataId);
      return data.resource instanceof GPUBuffer;
    });
  }

  /** A new float32 tfjs tensor with an allocated GPU buffer. */
  output(shape: number[]): { info: tf.TensorInfo; buffer: GPUBuffer } {
    const info = this.b.makeTensorInfo(shape, "float32");
    return { info, buffer: this.bufferOf(info) };
  }

  /** A float32 tfjs tensor holding `values` (kept on the CPU until a kernel needs it). */
  constant(shape: number[], values: Float32Array): tf.TensorInfo {
    return (this.b as unknown as {
      makeTensorInfo(s: number[], d: tf.DataType, v: Float32Array): tf.TensorInfo;
    }).makeTensorInfo(shape, "float32", values);
  }

  /**
   * An rgba32float storage texture from the pool; give it back with {@link release}. Textures
   * with a `tag` are only reused under the same tag (a caller that writes only part of a texture
   * and relies on the rest staying zero tags it with its exact layout).
   */
  texture(width: number, height: number, tag = ""): GPUTexture {
    const key = `${tag}:${width}x${height}`;
    const t = this.freeTextures.get(key)?.pop();
    if (t) {
      this.pooledBytes -= width * height * 16;
      return t;
    }
    const texture = this.device.createTexture({
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label: key,
    });
    this.textureKeys.set(texture, key);
    return texture;
  }

  /**
   * The one view of a pooled texture. NOTE: a new view per dispatch leaked ~33 KB of native
   * memory per conv on lavapipe (Deno 2.9.6; views are freed with their texture only).
   */
  private viewOf(texture: GPUTexture): GPUTextureView {
    let v = this.views.get(texture);
    if (!v) {
      v = texture.createView();
      this.views.set(texture, v);
    }
    return v;
  }

  /** Records a copy of `rows` rows of `bytesPerRow` from a buffer into a texture region. */
  copyToTexture(
    src: GPUBuffer,
    offset: number,
    bytesPerRow: number,
    dst: GPUTexture,
    origin: [number, number],
    size: [number, number],
  ): void {
    const b = this.b;
    b.ensureCommandEncoderReady();
    b.endComputePassEncoder();
    profileHook.current?.copied();
    b.commandEncoder!.copyBufferToTexture(
      { buffer: src, offset, bytesPerRow },
      { texture: dst, origin },
      size,
    );
  }

  /** A storage buffer of at least `bytes` from the pool; give it back with {@link release}. */
  scratch(bytes: number): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 256) * 256);
    const b = this.freeBuffers.get(size)?.pop();
    if (b) {
      this.pooledBytes -= size;
      return b;
    }
    return this.device.createBuffer({ size, usage: GPUBufferUsage.STORAGE });
  }

  /**
   * Returns scratch resources to the pool. Later dispatches may reuse them at once (same encoder,
   * ordered). When the pool grows past its cap, pending work is submitted and the pool destroyed.
   */
  release(...items: (GPUTexture | GPUBuffer)[]): void {
    for (const r of items) {
      if (r instanceof GPUTexture) {
        const key = this.textureKeys.get(r) ?? "";
        const list = this.freeTextures.get(key) ?? [];
        list.push(r);
        this.freeTextures.set(key, list);
        this.pooledBytes += r.width * r.height * 16;
      } else {
        const list = this.freeBuffers.get(r.size) ?? [];
        list.push(r);
        this.freeBuffers.set(r.size, list);
        this.pooledBytes += r.size;
      }
    }
    if (this.pooledBytes > MAX_POOL_BYTES) this.trim();
  }

  /** Submits pending work, then destroys every pooled scratch resource. */
  trim(): void {
    this.flush();
    for (const list of this.freeTextures.values()) for (const t of list) t.destroy();
    for (const list of this.freeBuffers.values()) for (const b of list) b.destroy();
    this.freeTextures.clear();
    this.freeBuffers.clear();
    this.pooledBytes = 0;
  }

  /** Submits the backend's pending command encoder, if any. */
  flush(): void {
    if (this.b.commandEncoder) {
      this.b.endComputePassEncoder();
      this.b.submitQueue();
    }
  }

  /**
   * Starts reading float32 `t` back at this point of the queue: a copy into a mappable buffer
   * is recorded after the work recorded so far and submitted, then mapped. Work recorded after
   * this call does not delay the result (tfjs's `data()` records its copy when it is called,
   * behind everything recorded by then). `t` may be disposed once this returns.
   */
  readSoon(t: tf.TensorInfo): Promise<Float32Array> {
    const src = this.bufferOf(t);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 4;
    const staging = this.device.createBuffer({
      size: Math.max(4, bytes),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const b = this.b;
    b.ensureCommandEncoderReady();
    b.endComputePassEncoder();
    if (bytes > 0) b.commandEncoder!.copyBufferToBuffer(src, 0, staging, 0, bytes);
    b.submitQueue();
    return staging.mapAsync(GPUMapMode.READ).then(() => {
      const out = new Float32Array(staging.getMappedRange().slice(0, bytes));
      staging.destroy();
      return out;
    });
  }

  /** A uniform buffer holding `values` as i32/f32 words, released by tfjs after the submit. */
  uniforms(values: readonly number[], floats: readonly number[] = []): GPUBuffer {
    const words = Math.max(4, Math.ceil((values.length + floats.length) / 4) * 4);
    const data = new ArrayBuffer(words * 4);
    new Int32Array(data, 0, values.length).set(values);
    new Float32Array(data, values.length * 4, floats.length).set(floats);
    const buf = this.b.bufferManager.acquireBuffer(
      words * 4,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    this.b.queue.writeBuffer(buf, 0, data);
    this.b.uniformPendingDisposal.push(buf);
    return buf;
  }

  /**
   * Records one dispatch of `invocations` 1-D invocations (workgroups of {@link WG}) into the
   * backend's compute pass. Shaders recover the linear id with {@link LINEAR_ID}.
   */
  dispatch(pipeline: GPUComputePipeline, bindings: Binding[], invocations: number): void {
    const groups = Math.max(1, Math.ceil(invocations / WG));
    const x = Math.min(groups, 32768);
    const y = Math.ceil(groups / x);
    checkBindings(this.device, pipeline.label || "dispatch", {
      buffers: bindings.filter((b) =>
        "buffer" in b && (b.buffer.usage & GPUBufferUsage.UNIFORM) === 0
      ).length,
      textures: bindings.filter((b) => "texture" in b).length,
      largest: Math.max(0, ...bindings.map((b) => ("buffer" in b ? b.buffer.size : 0))),
      groupsY: y,
    });
    const bindGroup = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: bindings.map((b, i) => ({
        binding: i,
        resource: "buffer" in b ? { buffer: b.buffer } : this.viewOf(b.texture),
      })),
    });
    const b = this.b;
    b.ensureCommandEncoderReady();
    // While a profiler runs (lib/internal/kernels/profile.ts), each dispatch gets its own pass.
    const profiled = profileHook.current?.pass();
    if (profiled) {
      b.endComputePassEncoder();
      b.computePassEncoder = b.commandEncoder!.beginComputePass(profiled);
    }
    if (!b.computePassEncoder) b.computePassEncoder = b.commandEncoder!.beginComputePass({});
    b.computePassEncoder.setPipeline(pipeline);
    b.computePassEncoder.setBindGroup(0, bindGroup);
    b.computePassEncoder.dispatchWorkgroups(x, y, 1);
    b.dispatchCountInPass++;
    if (profiled) b.endComputePassEncoder();
    Native.dispatched();
  }

  /** Ends an op: submits when tfjs's batch size is reached, as tfjs's own kernels do. */
  endOp(batch: number): void {
    if (this.b.dispatchCountInPass >= batch) {
      this.b.endComputePassEncoder();
      this.b.submitQueue();
    }
  }

  /** Destroys every pooled resource and forgets compiled pipelines. */
  dispose(): void {
    this.trim();
    this.pipelines.clear();
  }
}

/** WGSL: the entry point header for 1-D dispatches; `id` is the linear invocation index. */
export const ENTRY = `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let id = i32(gid.y * nwg.x * ${WG}u + gid.x);`;

/** Alias kept for docs: see {@link ENTRY}. */
export const LINEAR_ID = ENTRY;
