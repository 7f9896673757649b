/**
 * Exact p-quantile of all entries of a float32 tensor, on the device, as one tfjs kernel.
 *
 * The result equals numpy's default (`method="linear"`): with `pos = p·(n−1)` and `v` the
 * ascending sorted values, `v[⌊pos⌋] + (v[⌊pos⌋+1] − v[⌊pos⌋])·(pos − ⌊pos⌋)`.
 *
 * WebGPU: an exact radix select over the order-preserving uint32 key of each float (all bits
 * flipped for negatives, the sign bit flipped otherwise; −0 sorts just below +0). Four passes
 * over the 8-bit digits, most significant first, find the elements of rank ⌊pos⌋ and ⌈pos⌉
 * together. Each pass histograms the next digit of the elements whose higher digits match the
 * prefix fixed so far: every workgroup counts its chunk of x into a workgroup-local atomic
 * histogram (one per rank while the two prefixes differ, one shared while they agree) and
 * stores it to its own slice of a global buffer, so there are no global atomics and nothing to
 * zero. A one-workgroup scan then sums the slices, fixes each rank's digit and the rank left
 * within it; the last scan turns the two keys back into floats and interpolates. Eight
 * dispatches through tfjs's `runWebGPUProgram`, recorded in its command encoder with the rest
 * of the step; nothing is read back, and the result is exact (no sampling, no tolerance).
 *
 * `cpu`: the same result from a sorted float64 copy. No gradient (callers treat the quantile as
 * a constant); the registered gradient is zero so the op may sit inside `tf.grad`.
 *
 * Inputs must be NaN-free (a NaN sorts by its bits, above +∞ or below −∞).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";

/** The tfjs kernel name. Attributes: `{ p: number }`; input `{ x }` (float32, any shape). */
export const KERNEL = "QatQuantile";

/** Bins of one histogram: the digits are 8 bits. */
const RADIX = 256;
/** Histogram bins per pass: one set of 256 for each of the two ranks. */
const BINS = 2 * RADIX;
/** Radix passes of 8 bits. */
const PASSES = 4;
/** Workgroup size of every dispatch (the histogram passes and the scans). */
const WG = 256;
/**
 * A histogram pass runs ⌈n / (WG·PER_INVOCATION)⌉ workgroups, at most MAX_GROUPS, each over a
 * contiguous chunk of x. Measured on lavapipe (2 cores): 256-wide workgroups beat 64-wide ones
 * ~2×, and fewer than ~16 elements per invocation costs more in the scans (which sum one
 * histogram per workgroup) than it gains.
 */
const PER_INVOCATION = 16;
const MAX_GROUPS = 64;

/** The ranks and interpolation weight of numpy's linear method. */
export function ranks(n: number, p: number): { lo: number; hi: number; frac: number } {
  const pos = p * (n - 1);
  const lo = Math.min(Math.floor(pos), n - 1);
  const frac = pos - lo;
  const hi = frac > 0 ? Math.min(lo + 1, n - 1) : lo;
  return { lo, hi, frac };
}

/**
 * numpy's `_lerp` (exact at both ends, monotone in t) in float32 arithmetic step by step, as the
 * WebGPU kernel computes it; `a` at t = 0 and when a = b.
 */
export function lerp32(a: number, b: number, t: number): number {
  const f = Math.fround;
  [a, b, t] = [f(a), f(b), f(t)];
  if (t === 0 || a === b) return a;
  const d = f(b - a);
  return t >= 0.5 ? f(b - f(d * f(1 - t))) : f(a + f(d * t));
}

function check(x: { dtype: string; size?: number; shape: number[] }, p: number): number {
  if (typeof p !== "number" || !(p >= 0 && p <= 1)) {
    throw new RangeError(`quantile: p must be in [0, 1], got ${p}`);
  }
  if (x.dtype !== "float32") throw new RangeError(`quantile: x must be float32, got ${x.dtype}`);
  const n = x.shape.reduce((a, b) => a * b, 1);
  if (n < 1) throw new RangeError("quantile: x must have at least one entry");
  return n;
}

/**
 * The p-quantile (0 ≤ p ≤ 1) of all entries of `x` (float32, any shape, at least one entry),
 * with numpy's linear interpolation, as a float32 scalar that stays on the device.
 * Throws RangeError for p outside [0, 1], a non-float32 `x` or an empty `x`.
 */
export function quantile(x: tf.Tensor, p: number): tf.Scalar {
  check(x, p);
  return tf.engine().runKernel(KERNEL, { x }, { p } as unknown as tf.NamedAttrMap) as tf.Scalar;
}

/**
 * The p-quantile of each tensor of `xs` (see {@link quantile}), stacked into one float32 vector
 * of `xs.length` entries. A convenience: one kernel per tensor (eight dispatches each).
 */
export function quantiles(xs: tf.Tensor[], p: number): tf.Tensor1D {
  if (xs.length === 0) throw new RangeError("quantiles: xs must not be empty");
  return tf.tidy(() => tf.stack(xs.map((x) => quantile(x, p))) as tf.Tensor1D);
}

// ---------------------------------------------------------------------------------------------
// cpu twin

/** The cpu twin's quantile of float32 values: a sorted copy, then {@link lerp32}. */
export function quantileOf(values: ArrayLike<number>, p: number): number {
  const sorted = Float32Array.from(values).sort();
  const { lo, hi, frac } = ranks(sorted.length, p);
  return lerp32(sorted[lo], sorted[hi], frac);
}

interface CpuBackend {
  readSync(dataId: tf.DataId): ArrayLike<number>;
  makeTensorInfo(shape: number[], dtype: tf.DataType, values: Float32Array): tf.TensorInfo;
}

function cpuKernel({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { x } = inputs as { x: tf.TensorInfo };
  const p = (attrs as unknown as { p: number }).p;
  check(x, p);
  const b = backend as unknown as CpuBackend;
  const v = quantileOf(b.readSync(x.dataId), p);
  return b.makeTensorInfo([], "float32", new Float32Array([v]));
}

// ---------------------------------------------------------------------------------------------
// webgpu

/** The parts of tfjs's WebGPUProgram (4.22.0) our programs fill in. */
interface Program {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms?: string;
  atomic?: boolean;
  variableComponents?: number[];
  getUserCode(): string;
}

type Uniform = { type: "int32" | "float32" | "uint32"; data: number[] };

interface Runner {
  runWebGPUProgram(
    program: Program,
    inputs: tf.TensorInfo[],
    outputDtype: tf.DataType,
    uniforms?: Uniform[],
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
}

const KEY = /* wgsl */ `
fn qatKey(v : f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn qatValue(k : u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}
`;

/** How the histogram passes split x among workgroups. */
interface Layout {
  /** Elements per load of x: 4 (vec4) when n is a multiple of 4, else 1. */
  readonly per: number;
  /** Loads of x in all. */
  readonly loads: number;
  /** Workgroups of every histogram pass. */
  readonly groups: number;
  /** Loads per workgroup (a contiguous chunk of x). */
  readonly chunk: number;
}

function layout(n: number): Layout {
  const per = n % 4 === 0 ? 4 : 1;
  const loads = n / per;
  const groups = Math.max(1, Math.min(MAX_GROUPS, Math.ceil(n / (WG * PER_INVOCATION))));
  return { per, loads, groups, chunk: Math.ceil(loads / groups) };
}

/*
 * The histograms of all passes share one int32 buffer, one histogram per workgroup of each pass
 * (no global atomics, nothing to zero): [pass 0 (G·256) | pass 1 (G·512) | 2 (G·512) | 3 (G·512)]
 * with G the workgroups of a pass. In a 512-bin histogram rank lo's bins are at +0 and rank hi's
 * at +256, used only while the two prefixes differ. The state after each scan is a separate
 * int32 tensor [key prefix lo, key prefix hi, rank left lo, rank left hi].
 */
function histOffset(pass: number, l: Layout): number {
  return pass === 0 ? 0 : l.groups * (RADIX + (pass - 1) * BINS);
}

/**
 * Histogram pass `pass` of digit `pass` (bits 31−8·pass … 24−8·pass) of the elements of x whose
 * key matches a rank's prefix. Each workgroup counts its chunk of x into a workgroup-local atomic
 * histogram and stores it to its own slice of the output.
 */
function histogramProgram(pass: number, l: Layout): Program {
  const bins = pass === 0 ? RADIX : BINS;
  const shift = 24 - 8 * pass;
  const count = (k: string) =>
    pass === 0 ? `atomicAdd(&qatHist[${k} >> 24u], 1u);` : `{
          let k = ${k};
          let top = k >> ${32 - 8 * pass}u;
          let d = (k >> ${shift}u) & 255u;
          if (top == pLo) {
            atomicAdd(&qatHist[d], 1u);
          } else if (split && top == pHi) {
            atomicAdd(&qatHist[${RADIX}u + d], 1u);
          }
        }`;
  const body = l.per === 4
    ? `let v = x[i];
          ${count("qatKey(v.x)")}
          ${count("qatKey(v.y)")}
          ${count("qatKey(v.z)")}
          ${count("qatKey(v.w)")}`
    : count("qatKey(x[i])");
  const out = histOffset(pass, l);
  return {
    variableNames: pass === 0 ? ["x"] : ["x", "state"],
    outputShape: [0], // set by the caller
    shaderKey: `qatQuantileHist${pass}_${l.per}_${l.groups}`,
    dispatchLayout: { x: [0] },
    dispatch: [l.groups, 1, 1],
    workgroupSize: [WG, 1, 1],
    ...(l.per === 4 ? { variableComponents: pass === 0 ? [4] : [4, 1] } : {}),
    uniforms: "loads : i32, chunk : i32,",
    getUserCode: () => `
      ${KEY}
      var<workgroup> qatHist : array<atomic<u32>, ${bins}>;

      fn main(index : i32) {
        let t = i32(localIndex);
        let wg = i32(workgroupId.x);
        for (var b = t; b < ${bins}; b += ${WG}) { atomicStore(&qatHist[b], 0u); }
        ${pass === 0 ? "" : "let pLo = u32(state[0]);\n        let pHi = u32(state[1]);"}
        let split = ${pass === 0 ? "false" : "pLo != pHi"};
        workgroupBarrier();
        let end = min((wg + 1) * uniforms.chunk, uniforms.loads);
        for (var i = wg * uniforms.chunk + t; i < end; i += ${WG}) {
          ${body}
        }
        workgroupBarrier();
        for (var b = t; b < ${bins}; b += ${WG}) {
          result[${out} + wg * ${bins} + b] = i32(atomicLoad(&qatHist[b]));
        }
      }`,
  };
}

/**
 * Scan of pass `pass`: sums the per-workgroup histograms, fixes each rank's digit and the
 * rank left within it. Writes the next state, or after the last pass the interpolated quantile.
 */
function scanProgram(pass: number, l: Layout): Program {
  const last = pass === PASSES - 1;
  const bins = pass === 0 ? RADIX : BINS;
  const hist = histOffset(pass, l);
  const state = pass === 0
    ? "0u, 0u, uniforms.rankLo, uniforms.rankHi"
    : "u32(state[0]), u32(state[1]), state[2], state[3]";
  const write = last
    ? `let a = qatValue(kLo);
        let b = qatValue(kHi);
        let w = uniforms.frac;
        let d = b - a;
        // numpy's _lerp; exactly a at w = 0 (also when a = b = ±inf).
        let v = select(a + d * w, b - d * (1.0 - w), w >= 0.5);
        result[0] = select(v, a, w == 0.0 || a == b);`
    : `result[0] = i32(kLo);
        result[1] = i32(kHi);
        result[2] = lo.y;
        result[3] = hi.y;`;
  return {
    variableNames: pass === 0 ? ["hist"] : ["hist", "state"],
    outputShape: [0], // set by the caller
    shaderKey: `qatQuantileScan${pass}_${l.groups}`,
    dispatchLayout: { x: [0] },
    dispatch: [1, 1, 1],
    workgroupSize: [WG, 1, 1],
    uniforms: "rankLo : i32, rankHi : i32, frac : f32,",
    getUserCode: () => `
      ${KEY}
      struct State { pLo : u32, pHi : u32, rLo : i32, rHi : i32 };
      var<workgroup> total : array<i32, ${bins}>;

      // The digit whose bin holds rank \`rank\` and the rank left inside that bin.
      fn pick(offset : i32, rank : i32) -> vec2<i32> {
        var r = rank;
        for (var d = 0; d < 255; d++) {
          let c = total[offset + d];
          if (r < c) { return vec2<i32>(d, r); }
          r -= c;
        }
        return vec2<i32>(255, r);
      }

      fn main(index : i32) {
        let t = i32(localIndex);
        for (var b = t; b < ${bins}; b += ${WG}) {
          var sum = 0;
          for (var g = 0; g < ${l.groups}; g++) { sum += hist[${hist} + g * ${bins} + b]; }
          total[b] = sum;
        }
        workgroupBarrier();
        // Every binding must be used, or the pipeline's derived layout drops it.
        if (t != 0 || uniforms.rankLo < 0) { return; }
        let s = State(${state});
        let lo = pick(0, s.rLo);
        let hi = pick(select(0, ${RADIX}, s.pLo != s.pHi), s.rHi);
        let kLo = (s.pLo << 8u) | u32(lo.x);
        let kHi = (s.pHi << 8u) | u32(hi.x);
        ${write}
      }`,
  };
}

function webgpuKernel({ inputs, attrs, backend }: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { x } = inputs as { x: tf.TensorInfo };
  const p = (attrs as unknown as { p: number }).p;
  const n = check(x, p);
  const b = backend as unknown as Runner & WebGPUBackend;
  const { lo, hi, frac } = ranks(n, p);
  const l = layout(n);
  const flat: tf.TensorInfo = { dataId: x.dataId, shape: [n], dtype: "float32" };
  const scanUniforms: Uniform[] = [
    { type: "int32", data: [lo] },
    { type: "int32", data: [hi] },
    { type: "float32", data: [frac] },
  ];
  // One entry per scalar field (tfjs would align a multi-element entry as a vector).
  const histUniforms: Uniform[] = [
    { type: "int32", data: [l.loads] },
    { type: "int32", data: [l.chunk] },
  ];
  const histShape = [histOffset(PASSES, l)];
  let hist: tf.TensorInfo | undefined;
  let state: tf.TensorInfo | undefined;
  for (let pass = 0; pass < PASSES; pass++) {
    const hp = histogramProgram(pass, l);
    hp.outputShape = histShape;
    hist = b.runWebGPUProgram(hp, state ? [flat, state] : [flat], "int32", histUniforms, hist);
    const last = pass === PASSES - 1;
    const sp = scanProgram(pass, l);
    sp.outputShape = last ? [] : [4];
    const next = b.runWebGPUProgram(
      sp,
      state ? [hist, state] : [hist],
      last ? "float32" : "int32",
      scanUniforms,
    );
    if (state) b.disposeData(state.dataId);
    state = next;
  }
  b.disposeData(hist!.dataId);
  return state!;
}

// ---------------------------------------------------------------------------------------------
// registration

let registered = false;

/** Registers the kernels (webgpu, cpu) and the zero gradient; done on import, idempotent. */
export function register(): void {
  if (registered) return;
  registered = true;
  if (!tf.getKernel(KERNEL, "cpu")) {
    tf.registerKernel({ kernelName: KERNEL, backendName: "cpu", kernelFunc: cpuKernel });
  }
  if (!tf.getKernel(KERNEL, "webgpu")) {
    tf.registerKernel({ kernelName: KERNEL, backendName: "webgpu", kernelFunc: webgpuKernel });
  }
  if (!tf.getGradient(KERNEL)) {
    tf.registerGradient({
      kernelName: KERNEL,
      inputsToSave: ["x"],
      gradFunc: (_dy, saved) => ({ x: () => tf.zerosLike(saved[0]) }),
    });
  }
}

register();
