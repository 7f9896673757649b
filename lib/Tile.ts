/**
 * Super-resolution of images of any size: the LR image is split into overlapping tiles that fit
 * the adapter's limits, each tile is upscaled on its own and the centres are stitched.
 *
 * Why: a tensor is bound to a WebGPU shader whole, and `maxStorageBufferBindingSize` is 128 MiB
 * on lavapipe and GL llvmpipe. The ×4 upsampler of EDSR on a 1024×768 photo makes a
 * `[1, 384, 512, 256]` map (201 MB): before the guard of lib/internal/kernels/limits.ts it came
 * out black, with exit 0 (issue 12).
 *
 * Exactness: an output pixel of a convolutional network depends only on the LR pixels within
 * its receptive field, so a tile whose input extends `reach` pixels past its centre gives the
 * same centre as the whole image (our kernels compute each output pixel in the same order
 * wherever it lies; tests/Tile.test.ts checks bit-equality). {@link footprint} reads the reach
 * from the model: `(k − 1)/2` per k×k conv and the window side per window attention, summed
 * over every layer (an upper bound on any path). Window attention needs tile origins on the
 * window grid, so tiles are aligned to it, and a tile that ends at the image edge pads exactly
 * as the whole image does. Three things make tiling inexact, and are reported:
 *   - an activation quantizer whose range is computed from the tensor itself (per-batch max or
 *     percentile, DAQ's per-image statistics, DDTB's gate: `Quantizer.dynamic`);
 *   - a layer of a kind this module does not know that declares no `meta.reach`;
 *   - a reach too large for the limits (SwinIR-S reaches ~175 LR pixels): the tiles then
 *     overlap as much as fits and the seams may differ slightly ({@link Plan.exact} false).
 * Such models are split only when the image does not fit whole.
 *
 * Sizes: {@link footprint} runs the model on two small inputs and measures, per LR pixel, the
 * largest tensor and the peak memory of a forward pass (`tf.profile`); {@link plan} then picks
 * the fewest tiles whose largest tensor fits 80% of the binding limit and whose peak fits the
 * memory budget ({@link currentLimits}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data, Effect } from "effect";
import * as Image from "./Image.ts";
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import type { Params } from "./Tree.ts";
import * as Env from "./internal/env.ts";

/** What a tile may use: the largest single tensor and the peak memory of one forward pass. */
export interface Limits {
  readonly tensorBytes: number;
  readonly memoryBytes: number;
}

/** Default memory budget of one tile's forward pass (`QAT_TILE_MEMORY_MB` overrides it). */
export const DEFAULT_MEMORY_MB = 2048;

/** The limits of the active backend: 80% of its binding limit, and the memory budget. */
export function currentLimits(): Limits {
  const device = tf.getBackend() === "webgpu"
    ? (tf.backend() as unknown as { device?: GPUDevice }).device
    : undefined;
  const binding = device?.limits.maxStorageBufferBindingSize ?? Number.POSITIVE_INFINITY;
  const mb = Number(Env.get("QAT_TILE_MEMORY_MB") ?? DEFAULT_MEMORY_MB);
  return { tensorBytes: 0.8 * binding, memoryBytes: mb * 2 ** 20 };
}

/** How a model's forward pass scales with the LR image, and whether tiles reproduce it. */
export interface Footprint {
  /** LR pixels past a tile's centre that an output pixel can depend on. */
  readonly reach: number;
  /** Tile origins must be multiples of this (window attention), else 1. */
  readonly align: number;
  /** Why tiles cannot reproduce the whole-image result, if they cannot. */
  readonly inexact?: string;
  /** Bytes of the largest tensor per LR pixel. */
  readonly tensorPerPixel: number;
  /** Peak bytes of a forward pass per LR pixel, and the fixed part. */
  readonly peakPerPixel: number;
  readonly peakFixed: number;
  /** The upscaling factor (output side / input side). */
  readonly scale: number;
}

/** Layers that mix no pixels (their children, if any, are counted on their own). */
const POINTWISE = new Set([
  "relu",
  "gelu",
  "prelu",
  "linear",
  "layerNorm",
  "meanShift",
  "batchNorm",
  "pixelShuffle",
  "upsampleNearest",
  "point",
]);

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** Reach, alignment and exactness from the layer tree (see the module comment). */
export function structure(
  model: Nn.AnyLayer,
): { readonly reach: number; readonly align: number; readonly inexact?: string } {
  let reach = 0;
  let align = 1;
  const reasons: string[] = [];
  Nn.walk(model, (path, layer) => {
    const where = path === "" ? "the model" : `"${path}"`;
    const meta = layer.meta;
    if (typeof meta.reach === "number") reach += meta.reach;
    if (typeof meta.align === "number") align = (align * meta.align) / gcd(align, meta.align);
    if (meta.global === true) reasons.push(`${where} (${layer.kind}) uses whole-image statistics`);
    if (typeof meta.reach === "number") return;
    const kind = Quant.isQuantized(layer) ? String(meta.inner) : layer.kind;
    if (Quant.isQuantized(layer)) {
      const q = layer.spec.input;
      if (q && q.bits < 32 && q.dynamic !== false) {
        reasons.push(`${where} quantizes its input with a range taken from the input (${q.name})`);
      }
    }
    if (kind === "conv2d") reach += ((meta.kernel as number | undefined ?? 3) - 1) / 2;
    else if (kind === "windowAttention") {
      const ws = meta.window as number;
      reach += ws;
      align = (align * ws) / gcd(align, ws);
    } else if (layer.children.length === 0 && !POINTWISE.has(kind)) {
      reasons.push(`${where} is a ${kind} layer that declares no meta.reach`);
    }
  });
  return { reach: Math.ceil(reach), align, ...(reasons.length ? { inexact: reasons[0] } : {}) };
}

/** The largest tensor and peak memory of one forward pass on an `h × w` input. */
async function measure(model: Nn.AnyLayer, params: Params, h: number, w: number) {
  const x = tf.randomUniform([1, h, w, 3], 0, 255, "float32", 7);
  const before = tf.memory().numBytes;
  // NOTE: tfjs prints a one-time notice when an adapter has no timestamp queries; silence it.
  const warn = console.warn;
  console.warn = () => {};
  let info: Awaited<ReturnType<typeof tf.profile>>;
  try {
    info = await tf.profile(() => model.apply(params, x, Nn.context("eval")));
  } finally {
    console.warn = warn;
  }
  let largest = 0;
  for (const k of info.kernels) {
    for (const s of k.outputShapes) {
      largest = Math.max(largest, 4 * (s as number[]).reduce((a, b) => a * b, 1));
    }
  }
  const out = info.result as tf.Tensor;
  const scale = out.shape[1]! / h;
  tf.dispose([x, out]);
  return { largest, peak: info.peakBytes - before, scale };
}

const footprints = new WeakMap<Nn.AnyLayer, Footprint>();

/** The footprint of a model (measured once per model value). */
export async function footprint(model: Nn.AnyLayer, params: Params): Promise<Footprint> {
  const known = footprints.get(model);
  if (known) return known;
  const s = structure(model);
  const side = Math.ceil(16 / s.align) * s.align;
  const a = await measure(model, params, side, side);
  const b = await measure(model, params, 2 * side, 2 * side);
  const [pa, pb] = [side * side, 4 * side * side];
  const peakPerPixel = Math.max(1, (b.peak - a.peak) / (pb - pa));
  const fp: Footprint = {
    ...s,
    tensorPerPixel: b.largest / pb,
    peakPerPixel,
    peakFixed: Math.max(0, a.peak - peakPerPixel * pa),
    scale: b.scale,
  };
  footprints.set(model, fp);
  return fp;
}

/** One tile: the LR region run through the model, and the part of it that is kept. */
export interface Tile {
  /** Input region (LR pixels). */
  readonly x: number;
  readonly y: number;
  readonly w: number;
  readonly h: number;
  /** Kept region (LR pixels), inside the input region. */
  readonly keepX: number;
  readonly keepY: number;
  readonly keepW: number;
  readonly keepH: number;
}

/** How an image is split. */
export interface Plan {
  readonly tiles: ReadonlyArray<Tile>;
  /** Overlap used on each side (LR pixels). */
  readonly halo: number;
  /** True when the stitched result equals the whole-image one. */
  readonly exact: boolean;
  /** Why it may differ (absent when exact). */
  readonly note?: string;
}

/** The image cannot be processed within the limits without changing the result. */
export class TooLarge extends Data.TaggedError("TooLarge")<{
  readonly width: number;
  readonly height: number;
  readonly reason: string;
}> {
  override get message(): string {
    return `a ${this.width}×${this.height} input does not fit the adapter's limits: ${this.reason}`;
  }
}

const up = (v: number, m: number) => Math.ceil(v / m) * m;

/** Whether an `h × w` input region fits the limits. */
const fits = (fp: Footprint, limits: Limits, h: number, w: number) =>
  fp.tensorPerPixel * h * w <= limits.tensorBytes &&
  fp.peakFixed + fp.peakPerPixel * h * w <= limits.memoryBytes;

/** Tiles along one side: cores of `core` pixels (the last one shorter) with `halo` around. */
function splitSide(n: number, core: number, halo: number) {
  const out: Array<{ start: number; size: number; keep: number; keepSize: number }> = [];
  for (let c = 0; c < n; c += core) {
    const start = Math.max(0, c - halo);
    const end = Math.min(n, c + core + halo);
    out.push({ start, size: end - start, keep: c - start, keepSize: Math.min(core, n - c) });
  }
  return out;
}

/**
 * Splits an `height × width` LR image into the fewest tiles that fit `limits`, each with `reach`
 * pixels of overlap (rounded up to the alignment), or the whole image when it fits.
 */
export function plan(
  height: number,
  width: number,
  fp: Footprint,
  limits: Limits,
): Plan | TooLarge {
  const whole: Plan = {
    tiles: [{ x: 0, y: 0, w: width, h: height, keepX: 0, keepY: 0, keepW: width, keepH: height }],
    halo: 0,
    exact: true,
  };
  if (fits(fp, limits, height, width)) return whole;
  const a = fp.align;
  const largest = (halo: number) => {
    // The largest aligned square core whose tile (core + 2·halo) fits.
    let core = 0;
    for (let c = a; fits(fp, limits, c + 2 * halo, c + 2 * halo); c += a) core = c;
    return core;
  };
  let halo = up(fp.reach, a);
  let core = largest(halo);
  let note: string | undefined = fp.inexact;
  if (core < Math.max(a, 8)) {
    // The receptive field does not fit: overlap as much as leaves a useful core.
    const minCore = Math.max(a, 16);
    halo = 0;
    while (fits(fp, limits, minCore + 2 * (halo + a), minCore + 2 * (halo + a))) halo += a;
    core = largest(halo);
    if (core === 0) {
      return new TooLarge({
        width,
        height,
        reason: `even a ${minCore}×${minCore} tile needs more than the limits ` +
          `(${fp.tensorPerPixel.toFixed(0)} B per pixel in its largest tensor)`,
      });
    }
    note ??= `the model reaches ${fp.reach} pixels, the tiles overlap by ${halo}`;
  }
  // Fewest tiles: spread the image over equal aligned cores no larger than `core`.
  const coreH = Math.min(up(Math.ceil(height / Math.ceil(height / core)), a), up(height, a));
  const coreW = Math.min(up(Math.ceil(width / Math.ceil(width / core)), a), up(width, a));
  const tiles: Tile[] = [];
  for (const r of splitSide(height, coreH, halo)) {
    for (const c of splitSide(width, coreW, halo)) {
      tiles.push({
        x: c.start,
        y: r.start,
        w: c.size,
        h: r.size,
        keepX: c.keep,
        keepY: r.keep,
        keepW: c.keepSize,
        keepH: r.keepSize,
      });
    }
  }
  return note ? { tiles, halo, exact: false, note } : { tiles, halo, exact: true };
}

/** Options of {@link superResolve}. */
export interface Options {
  /** Limits to plan with (default {@link currentLimits}). */
  readonly limits?: Limits;
  /** Called with the plan before the tiles run (e.g. to warn when it is not exact). */
  readonly onPlan?: (p: Plan) => void;
  /**
   * The training step the parameters come from (a method may behave by stage: DDTB's gates are
   * used only past their first stage); default 0.
   */
  readonly step?: number;
}

/** The image region as a `[1, h, w, 3]` float tensor in [0, 255]. */
function regionTensor(img: Image.Image, t: Tile): tf.Tensor4D {
  const data = new Float32Array(t.w * t.h * 3);
  for (let row = 0; row < t.h; row++) {
    const from = ((t.y + row) * img.width + t.x) * 3;
    const src = img.data.subarray(from, from + t.w * 3);
    for (let i = 0; i < src.length; i++) data[row * t.w * 3 + i] = src[i];
  }
  return tf.tensor4d(data, [1, t.h, t.w, 3]);
}

/**
 * The model's 8-bit SR output for an LR image of any size: clamped to [0, 255] and rounded
 * (SPEC §8), tile by tile where the whole image does not fit.
 */
export const superResolve = (
  model: Nn.AnyLayer,
  params: Params,
  lr: Image.Image,
  opts: Options = {},
): Effect.Effect<Image.Image, TooLarge> =>
  Effect.gen(function* () {
    const fp = yield* Effect.promise(() => footprint(model, params));
    const p = plan(lr.height, lr.width, fp, opts.limits ?? currentLimits());
    if (p instanceof TooLarge) return yield* Effect.fail(p);
    if (p.tiles.length > 1 && fp.inexact) {
      return yield* Effect.fail(
        new TooLarge({
          width: lr.width,
          height: lr.height,
          reason: `it must be split into ${p.tiles.length} tiles, and ${fp.inexact}, ` +
            "so tiles would not give the whole-image result",
        }),
      );
    }
    opts.onPlan?.(p);
    const s = fp.scale;
    const out = new Uint8Array(lr.width * s * lr.height * s * 3);
    for (const t of p.tiles) {
      const y = tf.tidy(() => {
        const ctx = Nn.context("eval", { step: opts.step ?? 0 });
        const full = model.apply(params, regionTensor(lr, t), ctx);
        const kept = tf.slice(full, [0, t.keepY * s, t.keepX * s, 0], [
          1,
          t.keepH * s,
          t.keepW * s,
          3,
        ]);
        return tf.squeeze(kept, [0]) as tf.Tensor3D;
      });
      const img = yield* Effect.promise(async () => {
        try {
          return await Image.fromTensor(y);
        } finally {
          y.dispose();
        }
      });
      const rowBytes = img.width * 3;
      for (let row = 0; row < img.height; row++) {
        const dst = (((t.y + t.keepY) * s + row) * lr.width * s + (t.x + t.keepX) * s) * 3;
        out.set(img.data.subarray(row * rowBytes, (row + 1) * rowBytes), dst);
      }
    }
    return Image.make(lr.width * s, lr.height * s, out);
  });
