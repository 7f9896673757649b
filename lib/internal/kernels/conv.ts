/**
 * Our WebGPU convolutions: forward, input gradient and weight gradient for NHWC float32,
 * stride 1, dilation 1, odd square kernels with "same" padding. {@link sameConv} says whether a
 * tfjs conv is one of those; everything else stays with the stock tfjs kernels.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Binding, Gpu, Storage } from "./gpu.ts";
import * as Wgsl from "./wgsl.ts";
import type { Tuning } from "./tuning.ts";

/** A convolution our kernels handle: `[n, h, w, i] ⊛ [k, k, i, o] → [n, h, w, o]`, pad `p`. */
export interface ConvShape {
  readonly n: number;
  readonly h: number;
  readonly w: number;
  readonly i: number;
  readonly o: number;
  readonly k: number;
  readonly p: number;
}

/** Kernel sizes we compile kernels for. */
export const KERNEL_SIZES: readonly number[] = [1, 3, 5, 7, 9];

/** The shape of a conv our kernels support, or undefined (then the stock kernel runs). */
export function sameConv(c: tf.backend_util.Conv2DInfo): ConvShape | undefined {
  const k = c.filterHeight;
  const p = (k - 1) / 2;
  const pad = c.padInfo;
  const ok = c.dataFormat === "channelsLast" &&
    c.strideHeight === 1 && c.strideWidth === 1 &&
    c.dilationHeight === 1 && c.dilationWidth === 1 &&
    c.filterWidth === k && KERNEL_SIZES.includes(k) &&
    pad.top === p && pad.bottom === p && pad.left === p && pad.right === p &&
    c.outHeight === c.inHeight && c.outWidth === c.inWidth &&
    c.inChannels > 0 && c.outChannels > 0 && c.batchSize > 0 &&
    c.inHeight > 0 && c.inWidth > 0;
  return ok
    ? { n: c.batchSize, h: c.inHeight, w: c.inWidth, i: c.inChannels, o: c.outChannels, k, p }
    : undefined;
}

const up = (x: number, m: number) => Math.ceil(x / m) * m;

/** Channel tile: a multiple of 4, at most `max`. */
const channelTile = (c: number, max: number) => Math.min(max, up(c, 4));

interface Packed {
  readonly resource: GPUTexture | GPUBuffer;
  /** Row width in texels (the buffer layout's row stride). */
  readonly width: number;
  readonly height: number;
}

const bind = (p: Packed): Binding =>
  p.resource instanceof GPUTexture ? { texture: p.resource } : { buffer: p.resource };

/** The storage for packed operands of these sizes, or undefined when none fits the limits. */
function storageFor(t: Tuning, sizes: readonly [number, number][]): Storage | undefined {
  if (t.storage === "texture" && sizes.every(([w, h]) => w <= t.maxTexture && h <= t.maxTexture)) {
    return "texture";
  }
  return sizes.every(([w, h]) => w * h * 16 <= t.maxBinding) ? "buffer" : undefined;
}

function allocate(gpu: Gpu, storage: Storage, width: number, height: number): Packed {
  const resource = storage === "texture"
    ? gpu.texture(width, height)
    : gpu.scratch(width * height * 16);
  return { resource, width, height };
}

/** Activations `[n, h, w, c]` → padded layout, `p` pixels each side, `cover` ≥ w columns. */
export function packActivations(
  gpu: Gpu,
  storage: Storage,
  src: GPUBuffer,
  d: { n: number; h: number; w: number; c: number },
  p: number,
  cover: number,
  cpad: number,
): Packed {
  const c4 = cpad / 4;
  const wp = cover + 2 * p;
  const hp = d.h + 2 * p;
  const rowBytes = d.w * d.c * 4;
  if (storage === "texture" && cpad === d.c && rowBytes % 256 === 0) {
    // Copies run far faster than a packing shader; the zero border of a texture tagged with
    // its exact layout is never written.
    const tag = `act:${d.n},${d.h},${d.w},${d.c},${p},${cover}`;
    const out = { resource: gpu.texture(wp * c4, d.n * hp, tag), width: wp * c4, height: d.n * hp };
    const texture = out.resource as GPUTexture;
    if (p === 0) {
      gpu.copyToTexture(src, 0, rowBytes, texture, [0, 0], [d.w * c4, d.n * d.h]);
    } else {
      for (let n = 0; n < d.n; n++) {
        gpu.copyToTexture(src, n * d.h * rowBytes, rowBytes, texture, [p * c4, n * hp + p], [
          d.w * c4,
          d.h,
        ]);
      }
    }
    return out;
  }
  const out = allocate(gpu, storage, wp * c4, d.n * hp);
  const total = wp * d.n * hp;
  const vec4Source = d.c % 4 === 0;
  const pipe = gpu.pipeline(
    `qat-pack-act-${storage}-${vec4Source}`,
    () => Wgsl.packActivations(storage, vec4Source),
  );
  const u = gpu.uniforms([d.n, d.h, d.w, d.c, p, c4, wp, hp, total]);
  gpu.dispatch(pipe, [{ buffer: src }, bind(out), { buffer: u }], total);
  return out;
}

/** Weights `[taps, i, o]` (or transposed `[taps, o, i]`) → texels `(o4, tap·ipad + i)`. */
export function packWeights(
  gpu: Gpu,
  storage: Storage,
  src: GPUBuffer,
  d: { taps: number; i: number; o: number; ip: number; op: number },
  transposed: boolean,
): Packed {
  if (
    storage === "texture" && !transposed && d.ip === d.i && d.op === d.o && (d.o * 4) % 256 === 0
  ) {
    const tag = `w:${d.taps},${d.i},${d.o}`;
    const texture = gpu.texture(d.o / 4, d.taps * d.i, tag);
    gpu.copyToTexture(src, 0, d.o * 4, texture, [0, 0], [d.o / 4, d.taps * d.i]);
    return { resource: texture, width: d.o / 4, height: d.taps * d.i };
  }
  const out = allocate(gpu, storage, d.op / 4, d.taps * d.ip);
  const total = out.width * out.height;
  const pipe = gpu.pipeline(
    `qat-pack-w-${storage}-${transposed}`,
    () => Wgsl.packWeights(storage, transposed),
  );
  const u = gpu.uniforms([d.taps, d.i, d.o, d.ip, d.op / 4, total]);
  gpu.dispatch(pipe, [{ buffer: src }, bind(out), { buffer: u }], total);
  return out;
}

/**
 * The forward tile for `o` output channels, width `w` and kernel size `k`. Kernel columns are
 * unrolled in steps of 3 where 3 divides k (the JIT time of a fully unrolled 5×5 or 9×9 kernel
 * is not worth it for those rare layers).
 */
export function forwardTile(t: Tuning, o: number, w: number, k: number): Wgsl.ForwardTile {
  const to = channelTile(o, t.forwardMaxTileO);
  let tp = Math.max(1, Math.floor((t.forwardAccumulators * 4) / to));
  while (tp > 4 && tp / 2 >= w) tp /= 2;
  return { tp, to, unroll: k % 3 === 0 ? 3 : 1 };
}

/**
 * `y = x ⊛ w` for a {@link ConvShape}; with `transposed` the filter is `[k, k, o, i]` and is used
 * flipped and transposed (the input gradient of a conv, with `x` = `dy`).
 */
export function forward(
  gpu: Gpu,
  t: Tuning,
  s: ConvShape,
  x: tf.TensorInfo,
  filter: tf.TensorInfo,
  transposed: boolean,
  epilogue: { readonly bias?: tf.TensorInfo; readonly relu?: boolean } = {},
): tf.TensorInfo | undefined {
  const tile = forwardTile(t, s.o, s.w, s.k);
  const ip = up(s.i, 4);
  const op = up(s.o, tile.to);
  const cover = up(s.w, tile.tp);
  const taps = s.k * s.k;
  const xSize: [number, number] = [(cover + 2 * s.p) * (ip / 4), s.n * (s.h + 2 * s.p)];
  const wSize: [number, number] = [op / 4, taps * ip];
  const storage = storageFor(t, [xSize, wSize]);
  const bound = [s.n * s.h * s.w * s.i, s.k * s.k * s.i * s.o, s.n * s.h * s.w * s.o];
  if (!storage || bound.some((e) => e * 4 > t.maxBinding)) return undefined;
  const xp = packActivations(gpu, storage, gpu.bufferOf(x), { ...s, c: s.i }, s.p, cover, ip);
  const wp = packWeights(
    gpu,
    storage,
    gpu.bufferOf(filter),
    { taps, i: s.i, o: s.o, ip, op },
    transposed,
  );
  const out = gpu.output([s.n, s.h, s.w, s.o]);
  const vec4Out = s.o % 4 === 0;
  const epi: Wgsl.Epilogue = { bias: epilogue.bias !== undefined, relu: epilogue.relu ?? false };
  const pipe = gpu.pipeline(
    `qat-conv-${storage}-k${s.k}-tp${tile.tp}-to${tile.to}-u${tile.unroll}-${vec4Out}` +
      `-b${epi.bias}-r${epi.relu}`,
    () => Wgsl.convForward(storage, s.k, tile, vec4Out, epi),
  );
  const xb = cover / tile.tp;
  const ob = op / tile.to;
  const total = s.n * s.h * xb * ob;
  const u = gpu.uniforms([
    s.n,
    s.h,
    s.w,
    xb,
    ob,
    ip / 4,
    s.o,
    s.h + 2 * s.p,
    xp.width,
    wp.width,
    total,
  ]);
  const bindings = [{ buffer: out.buffer }, bind(xp), bind(wp), { buffer: u }];
  if (epilogue.bias) bindings.push({ buffer: gpu.bufferOf(epilogue.bias) });
  gpu.dispatch(pipe, bindings, total);
  gpu.release(xp.resource, wp.resource);
  return out.info;
}

/** The weight gradient `dw[ky,kx,i,o] = Σ x[n,oy+ky−p,ox+kx−p,i]·dy[n,oy,ox,o]`. */
export function filterGradient(
  gpu: Gpu,
  t: Tuning,
  s: ConvShape,
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
): tf.TensorInfo | undefined {
  const tile: Wgsl.FilterTile = {
    ti: channelTile(s.i, t.filterMaxTile),
    to: channelTile(s.o, t.filterMaxTile),
  };
  const ip = up(s.i, tile.ti);
  const op = up(s.o, tile.to);
  const taps = s.k * s.k;
  const xSize: [number, number] = [(s.w + 2 * s.p) * (ip / 4), s.n * (s.h + 2 * s.p)];
  const dSize: [number, number] = [s.w * (op / 4), s.n * s.h];
  const storage = storageFor(t, [xSize, dSize]);
  const rows = s.n * s.h;
  const blocks = taps * (ip / tile.ti) * (op / tile.to);
  const per = Math.ceil(
    rows / Math.min(rows, Math.max(1, Math.ceil(t.filterInvocations / blocks))),
  );
  const slices = Math.ceil(rows / per);
  const partialBytes = slices * taps * ip * op * 4;
  const bound = [s.n * s.h * s.w * s.i * 4, s.n * s.h * s.w * s.o * 4, partialBytes];
  if (!storage || bound.some((bytes) => bytes > t.maxBinding)) return undefined;
  const xp = packActivations(gpu, storage, gpu.bufferOf(x), { ...s, c: s.i }, s.p, s.w, ip);
  const dp = packActivations(gpu, storage, gpu.bufferOf(dy), { ...s, c: s.o }, 0, s.w, op);
  const partial = gpu.scratch(partialBytes);
  // NOTE: the image width is compiled in as the pixel loop's bound. With the bound read from
  // the uniforms, every dispatch of this kernel kept ~0.5 MB of native memory on lavapipe
  // (Mesa 22/23 under Deno 2.9.6; measured with raw WebGPU, not on GL): the training steps of
  // the default job grew the process by MBs per step. Training shapes are few, so is the cost
  // of one pipeline per width.
  const pipe = gpu.pipeline(
    `qat-convdw-${storage}-k${s.k}-ti${tile.ti}-to${tile.to}-w${s.w}`,
    () => Wgsl.convFilterPartial(storage, s.k, tile, s.w),
  );
  const total = blocks * slices;
  const u = gpu.uniforms([
    s.h,
    s.w,
    ip / 4,
    op / 4,
    ip / tile.ti,
    op / tile.to,
    s.h + 2 * s.p,
    xp.width,
    dp.width,
    rows,
    per,
    ip,
    op / 4,
    total,
  ]);
  gpu.dispatch(pipe, [{ buffer: partial }, bind(xp), bind(dp), { buffer: u }], total);
  const out = gpu.output([s.k, s.k, s.i, s.o]);
  const vec4Out = s.o % 4 === 0;
  const reduce = gpu.pipeline(`qat-convdw-reduce-${vec4Out}`, () => Wgsl.convFilterReduce(vec4Out));
  const rTotal = taps * s.i * (op / 4);
  const ru = gpu.uniforms([taps, s.i, s.o, ip, op / 4, slices, rTotal]);
  gpu.dispatch(reduce, [{ buffer: out.buffer }, { buffer: partial }, { buffer: ru }], rTotal);
  gpu.release(xp.resource, dp.resource, partial);
  return out.info;
}
