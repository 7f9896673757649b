/**
 * Bicubic resizing exactly as MATLAB's `imresize(I, scale, 'bicubic')` does it (SPEC §8).
 *
 * The SR benchmarks' LR images were made with MATLAB's antialiased bicubic `imresize`, so
 * scores are only comparable when LR inputs are made the same way:
 *
 * - cubic kernel with a = −0.5 (Keys); when shrinking (scale < 1) the kernel is stretched to
 *   `h(x) = scale·cubic(scale·x)` and its width grows from 4 to 4/scale (antialiasing);
 * - output pixel x (1-based) samples the input at u = x/scale + 0.5·(1 − 1/scale), from the taps
 *   floor(u − width/2) + 0 … ceil(width) + 1, with weights normalised to sum to 1;
 * - taps beyond the border mirror symmetrically (…, 2, 1, 1, 2, …, n, n, n−1, …);
 * - output size ceil(scale·n); one dimension per pass, the one with the smaller scale first
 *   (rows first when equal, as here, where both dimensions share one scale);
 * - uint8 images are clipped and rounded (half away from zero) after EACH pass, as MATLAB
 *   does on uint8 input; {@link imresizeFloat} keeps full precision instead.
 *
 * Every sum runs tap by tap in a fixed order, so results are bit-for-bit reproducible; the
 * fixture `tests/fixtures/make_resize_fixture.py` is the independent NumPy oracle.
 *
 * @module
 */
import type { Image } from "./Image.ts";

/** Keys' cubic convolution kernel with a = −0.5 (MATLAB's `cubic`). */
export function cubic(x: number): number {
  const a = Math.abs(x);
  const a2 = a * a;
  const a3 = a2 * a;
  if (a <= 1) return 1.5 * a3 - 2.5 * a2 + 1;
  if (a <= 2) return -0.5 * a3 + 2.5 * a2 - 4 * a + 2;
  return 0;
}

/** The taps of one resize pass: output i reads `indices[i·taps + k]` with `weights[i·taps + k]`. */
export interface Contributions {
  readonly outLength: number;
  readonly taps: number;
  /** 0-based source indices, already mirrored into range. */
  readonly indices: Int32Array;
  readonly weights: Float64Array;
}

/** MATLAB's `contributions` for the antialiased bicubic kernel (tap columns all zero dropped). */
export function contributions(inLength: number, outLength: number, scale: number): Contributions {
  const shrink = scale < 1;
  const kernelWidth = shrink ? 4 / scale : 4;
  const p = Math.ceil(kernelWidth) + 2;
  const rawIdx = new Float64Array(outLength * p);
  const rawW = new Float64Array(outLength * p);
  for (let i = 0; i < outLength; i++) {
    const x = i + 1;
    const u = x / scale + 0.5 * (1 - 1 / scale);
    const left = Math.floor(u - kernelWidth / 2);
    let sum = 0;
    for (let k = 0; k < p; k++) {
      const j = left + k;
      const w = shrink ? scale * cubic(scale * (u - j)) : cubic(u - j);
      rawIdx[i * p + k] = j;
      rawW[i * p + k] = w;
      sum += w;
    }
    for (let k = 0; k < p; k++) rawW[i * p + k] = rawW[i * p + k] / sum;
  }
  // Drop tap columns that are zero for every output (MATLAB's `kill`); they add nothing.
  const keep: number[] = [];
  for (let k = 0; k < p; k++) {
    for (let i = 0; i < outLength; i++) {
      if (rawW[i * p + k] !== 0) {
        keep.push(k);
        break;
      }
    }
  }
  const taps = keep.length;
  const indices = new Int32Array(outLength * taps);
  const weights = new Float64Array(outLength * taps);
  const period = 2 * inLength;
  for (let i = 0; i < outLength; i++) {
    for (let t = 0; t < taps; t++) {
      const k = keep[t];
      // Symmetric mirror of the 1-based index j: aux = [1..n, n..1], aux(mod(j − 1, 2n) + 1).
      const m = (((rawIdx[i * p + k] - 1) % period) + period) % period;
      indices[i * taps + t] = m < inLength ? m : period - 1 - m;
      weights[i * taps + t] = rawW[i * p + k];
    }
  }
  return { outLength, taps, indices, weights };
}

/** Output length of MATLAB's imresize for one dimension: ceil(scale·n). */
export function outputLength(n: number, scale: number): number {
  return Math.ceil(scale * n);
}

type Pixels = Float64Array | Uint8Array;

const toUint8 = (v: number): number => (v > 0 ? (v < 255 ? Math.round(v) : 255) : 0);

/** One pass along the rows (height) of an HWC array; `round` gives MATLAB's uint8 result. */
function resizeRows(
  src: ArrayLike<number>,
  w: number,
  c: number,
  con: Contributions,
  round: boolean,
): Pixels {
  const stride = w * c;
  const out = round
    ? new Uint8Array(con.outLength * stride)
    : new Float64Array(con.outLength * stride);
  const acc = new Float64Array(stride);
  for (let i = 0; i < con.outLength; i++) {
    acc.fill(0);
    for (let t = 0; t < con.taps; t++) {
      const wt = con.weights[i * con.taps + t];
      const base = con.indices[i * con.taps + t] * stride;
      for (let j = 0; j < stride; j++) acc[j] += wt * src[base + j];
    }
    const o = i * stride;
    if (round) { for (let j = 0; j < stride; j++) out[o + j] = toUint8(acc[j]); }
    else out.set(acc, o);
  }
  return out;
}

/** One pass along the columns (width) of an HWC array; `round` gives MATLAB's uint8 result. */
function resizeCols(
  src: ArrayLike<number>,
  h: number,
  w: number,
  c: number,
  con: Contributions,
  round: boolean,
): Pixels {
  const ow = con.outLength;
  const out = round ? new Uint8Array(h * ow * c) : new Float64Array(h * ow * c);
  const { taps, indices, weights } = con;
  for (let y = 0; y < h; y++) {
    const row = y * w * c;
    for (let x = 0; x < ow; x++) {
      const o = (y * ow + x) * c;
      for (let ch = 0; ch < c; ch++) {
        let acc = 0;
        for (let t = 0; t < taps; t++) {
          acc += weights[x * taps + t] * src[row + indices[x * taps + t] * c + ch];
        }
        out[o + ch] = round ? toUint8(acc) : acc;
      }
    }
  }
  return out;
}

function checkScale(scale: number, h: number, w: number): void {
  if (!(scale > 0) || !Number.isFinite(scale)) {
    throw new RangeError(`resize scale must be a positive finite number, got ${scale}`);
  }
  if (h < 1 || w < 1) throw new RangeError(`cannot resize an empty ${w}x${h} image`);
}

/** Both passes, rows first (MATLAB's order for equal scales). */
function resize(
  src: ArrayLike<number>,
  h: number,
  w: number,
  c: number,
  scale: number,
  round: boolean,
): { data: Pixels; h: number; w: number } {
  checkScale(scale, h, w);
  const oh = outputLength(h, scale);
  const ow = outputLength(w, scale);
  const rows = resizeRows(src, w, c, contributions(h, oh, scale), round);
  const data = resizeCols(rows, oh, w, c, contributions(w, ow, scale), round);
  return { data, h: oh, w: ow };
}

/**
 * MATLAB `imresize(img, scale, 'bicubic')` on a uint8 RGB image, rounding after each pass.
 *
 * @example
 * ```ts
 * import { imresize } from "./Resize.ts";
 * const img = { width: 4, height: 4, data: new Uint8Array(48).fill(7) };
 * const lr = imresize(img, 0.5); // 2x2, still all 7
 * ```
 */
export function imresize(img: Image, scale: number): Image {
  const { data, h, w } = resize(img.data, img.height, img.width, 3, scale, true);
  return { width: w, height: h, data: data as Uint8Array };
}

/** MATLAB `imresize` on a float HWC array with `c` channels (no rounding or clipping). */
export function imresizeFloat(
  data: Float32Array,
  h: number,
  w: number,
  c: number,
  scale: number,
): { data: Float32Array; h: number; w: number } {
  if (data.length !== h * w * c) {
    throw new RangeError(
      `imresizeFloat: ${h}x${w}x${c} needs ${h * w * c} values, got ${data.length}`,
    );
  }
  const out = resize(data, h, w, c, scale, false);
  return { data: Float32Array.from(out.data), h: out.h, w: out.w };
}

/** The benchmarks' LR image: `imresize(img, 1/factor)` (antialiased bicubic, uint8). */
export function downscale(img: Image, factor: number): Image {
  return imresize(img, 1 / factor);
}

/** Bicubic upscaling `imresize(img, factor)`, the "Bicubic" reference row of SR tables. */
export function bicubicUpscale(img: Image, factor: number): Image {
  return imresize(img, factor);
}
