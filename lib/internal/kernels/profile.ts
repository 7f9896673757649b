/**
 * Where the time of a training step goes, by kernel family, on tfjs's `webgpu` backend.
 *
 * A {@link Profiler} attributes every dispatch (tfjs's programs and ours) to the tfjs kernel
 * that issued it — the outermost `engine.runKernel` on the call stack — and to the part of the
 * step around it (the optimizer, the quantile of a range, the merge of Eq. 6, the backward
 * walks), then measures the dispatches one of two ways:
 *
 * - **GPU timestamps** (`timestamp-query`; lavapipe and GL llvmpipe have it): while profiling,
 *   every dispatch gets its own compute pass with a timestamp at its start and end. The time
 *   between two passes of one submit goes to the next dispatch's family when that dispatch's
 *   kernel recorded copies there (our operand packing), else to "gaps between dispatches".
 * - **timed dispatch groups** (adapters without timestamps): the dispatches of one step are
 *   recorded (pipeline, bind group, grid), and after the step each family's dispatches are
 *   replayed as one submit and timed on the clock, the cost of an empty submit subtracted.
 *   NOTE: a replay rewrites the step's output buffers from whatever their inputs hold now, so
 *   the state a profiled step produced must not be used afterwards.
 *
 * Per-pass timestamps change the schedule a little (one pass per dispatch); a profile is for
 * shares, the step time itself comes from unprofiled runs.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";

/** The kernel families of a profile, in table order. */
export const FAMILIES = [
  "conv forward",
  "conv input grad",
  "conv weight grad",
  "matmul",
  "element-wise (forward)",
  "element-wise (backward)",
  "reductions (forward)",
  "reductions (backward)",
  "layout (transpose, concat, slice, pad)",
  "fake-quant",
  "quantile",
  "merge (Eq. 6 and statistics)",
  "optimizer",
  "other",
] as const;

/** One kernel family. */
export type Family = (typeof FAMILIES)[number];

const CONV: Record<string, Family> = {
  Conv2D: "conv forward",
  FusedConv2D: "conv forward",
  QatConv2D: "conv forward",
  Conv2DBackpropInput: "conv input grad",
  QatConv2DBackpropInput: "conv input grad",
  Conv2DBackpropFilter: "conv weight grad",
  QatConv2DBackpropFilter: "conv weight grad",
  QatConvBiasGrad: "conv weight grad",
  BatchMatMul: "matmul",
  _FusedMatMul: "matmul",
  QatFakeQuant: "fake-quant",
  QatFakeQuantGrad: "fake-quant",
  QatQuantile: "quantile",
  QatAdam: "optimizer",
  // The mismatch term's norm (lib/internal/kernels/diff_norm.ts): a reduction forward, one
  // element-wise pass backward.
  QatDiffNorm: "reductions (forward)",
  QatDiffNormGrad: "element-wise (backward)",
};

const REDUCTIONS = new Set([
  "Sum",
  "Mean",
  "Max",
  "Min",
  "Prod",
  "All",
  "Any",
  "ArgMax",
  "ArgMin",
  "QatSumSquares",
]);

const LAYOUT = new Set([
  "Transpose",
  "Concat",
  "Slice",
  "StridedSlice",
  "Pad",
  "MirrorPad",
  "Tile",
  "Reshape",
  "Pack",
  "Unpack",
  "Reverse",
  "DepthToSpace",
  "Gather",
  "GatherV2",
  "Identity",
  "Cast",
]);

/**
 * The family of a kernel run at a call stack: named kernels first, then where in the step it
 * runs (the optimizer, a range's quantile, the merge), then what kind of op it is, forward or
 * on a backward walk (lib/internal/tape.ts, or tfjs's own gradient code).
 */
export function familyOf(kernel: string, stack: string): Family {
  const named = CONV[kernel];
  if (named) return named;
  if (/\/Optim\.ts/.test(stack)) return "optimizer";
  if (/\/quantile\.ts|\/Range\.ts/.test(stack)) return "quantile";
  if (/\/Cooperative\.ts/.test(stack)) return "merge (Eq. 6 and statistics)";
  // Our tape's backward walk (lib/internal/tape.ts) or tfjs's own (tf.grads, customGrad).
  const backward = /at backward \([^)]*tape\.ts|_grad\.js|backpropagateGradients/.test(stack);
  if (REDUCTIONS.has(kernel)) return backward ? "reductions (backward)" : "reductions (forward)";
  if (LAYOUT.has(kernel)) return "layout (transpose, concat, slice, pad)";
  if (kernel === "") return "other";
  return backward ? "element-wise (backward)" : "element-wise (forward)";
}

/** One row of a profile table. */
export interface Row {
  readonly family: Family | "gaps between dispatches" | "outside the GPU's span";
  /** Milliseconds in one step. */
  readonly ms: number;
  readonly dispatches: number;
  /** The kernels of this family and their milliseconds, largest first (at most 6). */
  readonly kernels: ReadonlyArray<readonly [string, number]>;
}

/** The profile of one step. */
export interface Profile {
  /** `timestamps` (per-dispatch GPU timestamps) or `replay` (timed dispatch groups). */
  readonly method: "timestamps" | "replay";
  /** Wall-clock milliseconds of the profiled step (the profiling itself included). */
  readonly wallMs: number;
  readonly dispatches: number;
  /** Read-backs awaited during the step and the wall milliseconds spent waiting for them. */
  readonly readbacks: { readonly count: number; readonly ms: number };
  readonly rows: ReadonlyArray<Row>;
}

/** The parts of tfjs's backend (4.22) the profiler patches or drives. */
interface Internals {
  readonly device: GPUDevice;
  readonly queue: GPUQueue;
  commandEncoder: GPUCommandEncoder | null;
  computePassEncoder: GPUComputePassEncoder | null;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  recordAndSubmit(...args: unknown[]): void;
  read(dataId: object): Promise<unknown>;
}

/** Our own dispatcher's hook (lib/internal/kernels/gpu.ts), set while a profiler runs. */
export interface DispatchHook {
  /** Descriptor of the pass our next dispatch runs in (its own, with timestamps), if any. */
  readonly pass: () => GPUComputePassDescriptor | undefined;
  /** Called when our code records a copy (operand packing) into the command encoder. */
  readonly copied: () => void;
}

/** The hook our dispatcher reads (undefined when no profiler runs). */
export const hook: { current: DispatchHook | undefined } = { current: undefined };

/** Queries per query set (WebGPU's maximum is 4096). */
const QUERIES = 4096;

interface Entry {
  readonly family: Family;
  readonly kernel: string;
  /** Query set and index of the begin timestamp (end = index + 1). */
  readonly set: number;
  readonly index: number;
  readonly submit: number;
  /** Our kernel recorded copies right before this dispatch. */
  readonly afterCopy: boolean;
}

interface Recorded {
  readonly family: Family;
  readonly kernel: string;
  readonly pipeline: GPUComputePipeline;
  readonly group: GPUBindGroup;
  readonly x: number;
  readonly y: number;
  readonly z: number;
}

/** Whether this backend's device can write timestamps at pass boundaries. */
export function hasTimestamps(backend: object): boolean {
  return (backend as unknown as Internals).device.features.has("timestamp-query");
}

/**
 * A new webgpu backend for tfjs on a device that has `timestamp-query` (when the adapter
 * offers it and the current device was requested without it). Returns whether timestamps are
 * available afterwards. The old backend is removed; kernels stay registered (tfjs's registry
 * is per backend name).
 */
export async function enableTimestamps(): Promise<boolean> {
  const current = tf.backend() as unknown as Internals;
  if (current.device.features.has("timestamp-query")) return true;
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter || !adapter.features.has("timestamp-query")) return false;
  const info = adapter.info;
  // Every limit the current device was given, so the kernels' tuning stays valid.
  const wanted: Record<string, number> = {};
  const have = current.device.limits as unknown as Record<string, unknown>;
  for (const name in have) {
    const v = have[name];
    const offered = (adapter.limits as unknown as Record<string, unknown>)[name];
    if (typeof v === "number" && typeof offered === "number") wanted[name] = v;
  }
  const device = await adapter.requestDevice({
    requiredFeatures: ["timestamp-query"],
    requiredLimits: wanted,
  });
  const { WebGPUBackend: Backend } = await import("@tensorflow/tfjs-backend-webgpu");
  tf.removeBackend("webgpu");
  tf.registerBackend(
    "webgpu",
    () => new Backend(device, info as unknown as ConstructorParameters<typeof Backend>[1]),
    3,
  );
  await tf.setBackend("webgpu");
  await tf.ready();
  return true;
}

/** Profiles the dispatches between {@link Profiler.start} and {@link Profiler.stop}. */
export class Profiler {
  private readonly b: Internals;
  private readonly method: "timestamps" | "replay";
  private readonly sets: GPUQuerySet[] = [];
  private used = QUERIES;
  private readonly entries: Entry[] = [];
  private readonly recorded: Recorded[] = [];
  private submits = 0;
  private copyPending = false;
  private readonly stack: Array<{ kernel: string; stack: string }> = [];
  private readonly restore: Array<() => void> = [];
  private t0 = 0;
  private reads = { count: 0, ms: 0 };

  constructor(backend: WebGPUBackend, opts: { readonly replay?: boolean } = {}) {
    this.b = backend as unknown as Internals;
    this.method = !opts.replay && hasTimestamps(backend) ? "timestamps" : "replay";
  }

  /** The family of the kernel running now. */
  private current(): { family: Family; kernel: string } {
    const top = this.stack[0];
    if (!top) return { family: "other", kernel: "(outside any kernel)" };
    return { family: familyOf(top.kernel, top.stack), kernel: top.kernel };
  }

  private writes(): GPUComputePassDescriptor {
    if (this.used + 2 > QUERIES) {
      this.sets.push(this.b.device.createQuerySet({ type: "timestamp", count: QUERIES }));
      this.used = 0;
    }
    const set = this.sets[this.sets.length - 1];
    const index = this.used;
    this.used += 2;
    const { family, kernel } = this.current();
    this.entries.push({
      family,
      kernel,
      set: this.sets.length - 1,
      index,
      submit: this.submits,
      afterCopy: this.copyPending,
    });
    this.copyPending = false;
    return {
      timestampWrites: {
        querySet: set,
        beginningOfPassWriteIndex: index,
        endOfPassWriteIndex: index + 1,
      },
    };
  }

  /** Starts attributing and timing dispatches. */
  start(): void {
    const b = this.b;
    const engine = tf.engine() as unknown as {
      runKernel: (name: string, ...rest: unknown[]) => unknown;
    };
    const runKernel = engine.runKernel;
    const frames = Error.stackTraceLimit;
    Error.stackTraceLimit = 60;
    this.restore.push(() => (Error.stackTraceLimit = frames));
    engine.runKernel = (name: string, ...rest: unknown[]) => {
      this.stack.push({ kernel: name, stack: this.stack.length ? "" : new Error().stack ?? "" });
      try {
        return runKernel.call(engine, name, ...rest);
      } finally {
        this.stack.pop();
      }
    };
    this.restore.push(() => (engine.runKernel = runKernel));

    const submit = b.submitQueue;
    b.submitQueue = () => {
      this.submits++;
      submit.call(b);
    };
    this.restore.push(() => (b.submitQueue = submit));

    const read = b.read;
    b.read = async (id: object) => {
      const t = performance.now();
      try {
        return await read.call(b, id);
      } finally {
        this.reads.count++;
        this.reads.ms += performance.now() - t;
      }
    };
    this.restore.push(() => (b.read = read));

    if (this.method === "timestamps") {
      const record = b.recordAndSubmit;
      b.recordAndSubmit = (...args: unknown[]) => {
        b.ensureCommandEncoderReady();
        b.endComputePassEncoder();
        b.computePassEncoder = b.commandEncoder!.beginComputePass(this.writes());
        record.apply(b, args);
        b.endComputePassEncoder();
      };
      this.restore.push(() => (b.recordAndSubmit = record));
      hook.current = { pass: () => this.writes(), copied: () => (this.copyPending = true) };
    } else {
      // Record every dispatch on the pass encoder itself (tfjs's and ours alike).
      const proto = GPUComputePassEncoder.prototype;
      const { setPipeline, setBindGroup, dispatchWorkgroups } = proto;
      let pipeline: GPUComputePipeline | undefined;
      let group: GPUBindGroup | undefined;
      proto.setPipeline = function (this: GPUComputePassEncoder, p: GPUComputePipeline) {
        pipeline = p;
        return setPipeline.call(this, p);
      };
      proto.setBindGroup = function (
        this: GPUComputePassEncoder,
        i: number,
        g: GPUBindGroup | null,
        ...rest: unknown[]
      ) {
        if (i === 0 && g) group = g;
        return (setBindGroup as (...a: unknown[]) => void).call(this, i, g, ...rest);
      } as typeof proto.setBindGroup;
      // An arrow function keeps the profiler's `this`; the patched method gets the encoder's.
      const note = (x: number, y?: number, z?: number) => {
        if (!pipeline || !group) return;
        const { family, kernel } = this.current();
        this.recorded.push({ family, kernel, pipeline, group, x, y: y ?? 1, z: z ?? 1 });
      };
      proto.dispatchWorkgroups = function (
        this: GPUComputePassEncoder,
        x: number,
        y?: number,
        z?: number,
      ) {
        note(x, y, z);
        return dispatchWorkgroups.call(this, x, y, z);
      };
      this.restore.push(() => {
        proto.setPipeline = setPipeline;
        proto.setBindGroup = setBindGroup;
        proto.dispatchWorkgroups = dispatchWorkgroups;
      });
    }
    this.t0 = performance.now();
  }

  /** Stops, reads the timestamps back (or replays the groups) and returns the profile. */
  async stop(): Promise<Profile> {
    const wallMs = performance.now() - this.t0;
    for (const r of this.restore.reverse()) r();
    hook.current = undefined;
    const b = this.b;
    if (b.commandEncoder) {
      b.endComputePassEncoder();
      b.submitQueue();
    }
    const rows = this.method === "timestamps" ? await this.fromTimestamps(wallMs) : await this
      .fromReplay(wallMs);
    const dispatches = this.method === "timestamps" ? this.entries.length : this.recorded.length;
    return { method: this.method, wallMs, dispatches, readbacks: this.reads, rows };
  }

  private async fromTimestamps(wallMs: number): Promise<Row[]> {
    const device = this.b.device;
    const times: BigUint64Array[] = [];
    for (const set of this.sets) {
      const resolve = device.createBuffer({
        size: QUERIES * 8,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      const staging = device.createBuffer({
        size: QUERIES * 8,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      const enc = device.createCommandEncoder();
      const used = set === this.sets[this.sets.length - 1] ? this.used : QUERIES;
      enc.resolveQuerySet(set, 0, used, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, staging, 0, QUERIES * 8);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      times.push(new BigUint64Array(staging.getMappedRange().slice(0)));
      staging.unmap();
      staging.destroy();
      resolve.destroy();
      set.destroy();
    }
    const acc = new Accumulator();
    let first = Infinity;
    let last = -Infinity;
    let prev: { end: number; submit: number } | undefined;
    for (const e of this.entries) {
      const t = times[e.set];
      const begin = Number(t[e.index]) / 1e6;
      const end = Number(t[e.index + 1]) / 1e6;
      first = Math.min(first, begin);
      last = Math.max(last, end);
      acc.add(e.family, e.kernel, Math.max(0, end - begin), 1);
      if (prev && prev.submit === e.submit && begin > prev.end) {
        const gap = begin - prev.end;
        if (e.afterCopy) acc.add(e.family, `${e.kernel} (copies)`, gap, 0);
        else acc.add("gaps between dispatches", "", gap, 0);
      } else if (prev && begin > prev.end) {
        acc.add("gaps between dispatches", "(between submits)", begin - prev.end, 0);
      }
      prev = { end, submit: e.submit };
    }
    const span = this.entries.length ? last - first : 0;
    acc.add("outside the GPU's span", "", Math.max(0, wallMs - span), 0);
    return acc.rows();
  }

  private async fromReplay(wallMs: number): Promise<Row[]> {
    const device = this.b.device;
    const time = async (items: ReadonlyArray<Recorded>) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (const r of items) {
        pass.setPipeline(r.pipeline);
        pass.setBindGroup(0, r.group);
        pass.dispatchWorkgroups(r.x, r.y, r.z);
      }
      pass.end();
      const t = performance.now();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
      return performance.now() - t;
    };
    const empty = [await time([]), await time([]), await time([])].sort((a, b) => a - b)[1];
    const acc = new Accumulator();
    const byKernel = new Map<string, Recorded[]>();
    for (const r of this.recorded) {
      const key = `${r.family}\u0000${r.kernel}`;
      byKernel.set(key, [...(byKernel.get(key) ?? []), r]);
    }
    let busy = 0;
    for (const items of byKernel.values()) {
      const ms = Math.max(0, (await time(items)) - empty);
      busy += ms;
      acc.add(items[0].family, items[0].kernel, ms, items.length);
    }
    acc.add("outside the GPU's span", "(host, copies, read-backs)", Math.max(0, wallMs - busy), 0);
    return acc.rows();
  }
}

class Accumulator {
  private readonly m = new Map<string, { ms: number; n: number; k: Map<string, number> }>();
  add(family: Row["family"], kernel: string, ms: number, n: number): void {
    const r = this.m.get(family) ?? { ms: 0, n: 0, k: new Map() };
    r.ms += ms;
    r.n += n;
    if (kernel) r.k.set(kernel, (r.k.get(kernel) ?? 0) + ms);
    this.m.set(family, r);
  }
  rows(): Row[] {
    const order: Row["family"][] = [
      ...FAMILIES,
      "gaps between dispatches",
      "outside the GPU's span",
    ];
    return order.flatMap((family) => {
      const r = this.m.get(family);
      if (!r) return [];
      const kernels = [...r.k].sort((a, b) => b[1] - a[1]).slice(0, 6);
      return [{ family, ms: r.ms, dispatches: r.n, kernels }];
    });
  }
}

/** The profile as a text table: family, ms, share of the step, dispatches, top kernels. */
export function table(p: Profile): string {
  const total = p.rows.reduce((s, r) => s + r.ms, 0);
  const w = Math.max(...p.rows.map((r) => r.family.length), 6);
  const lines = [
    `${"family".padEnd(w)}  ${"ms".padStart(8)}  ${"share".padStart(6)}  ${
      "disp".padStart(5)
    }  kernels (ms)`,
  ];
  for (const r of p.rows) {
    const ks = r.kernels.map(([k, ms]) => `${k} ${ms.toFixed(0)}`).join(", ");
    lines.push(
      `${r.family.padEnd(w)}  ${r.ms.toFixed(1).padStart(8)}  ${
        (100 * r.ms / total).toFixed(1).padStart(5)
      }%  ${String(r.dispatches).padStart(5)}  ${ks}`,
    );
  }
  lines.push(
    `${"total".padEnd(w)}  ${total.toFixed(1).padStart(8)}  100.0%  ${
      String(p.dispatches).padStart(5)
    }  (${p.method}; wall ${p.wallMs.toFixed(0)} ms; ${p.readbacks.count} read-back(s) awaited, ${
      p.readbacks.ms.toFixed(0)
    } ms)`,
  );
  return lines.join("\n");
}
