/**
 * Image quality as SR papers measure it: PSNR and SSIM on the luma (Y) channel (SPEC §8).
 *
 * - Y = (65.738 R + 129.057 G + 25.064 B)/256 + 16 (ITU-R BT.601, MATLAB's `rgb2ycbcr`), in
 *   float64 from the 8-bit values and not rounded back to 8 bits (as BasicSR does);
 * - `shave` pixels are cut from every border first (by convention the scale factor);
 * - PSNR = −10·log10(mean(((SR − HR)/255)²)), Infinity for identical images;
 * - SSIM (Wang et al. 2004) with L = 255, C1 = (0.01L)², C2 = (0.03L)² and the normalised 11×11
 *   Gaussian window with σ = 1.5. Two variants of the border:
 *   `"valid"` is MATLAB's `ssim_index` (`filter2(window, ·, 'valid')`, mean of the SSIM map,
 *   which skips 5 pixels per border; the PAMS/DDTB tables and scikit-image's
 *   `structural_similarity(gaussian_weights=True, use_sample_covariance=False)` use it);
 *   `"same"` (default) pads the shaved image by 5 pixels with edge replication, so the map
 *   covers every shaved pixel, and averages that map.
 *
 * Everything is float64 over typed arrays; the oracle is `tests/fixtures/make_iqa_fixture.py`.
 *
 * @module
 */
import type { Image } from "./Image.ts";

/** Options for {@link psnr}: pixels shaved per border, and Y (default) or all RGB channels. */
export interface PsnrOptions {
  readonly shave: number;
  readonly channel?: "y" | "rgb";
}

/** Options for {@link ssim}: pixels shaved per border, and the border variant (default "same"). */
export interface SsimOptions {
  readonly shave: number;
  readonly variant?: "same" | "valid";
}

/** SSIM window radius: the 11×11 Gaussian window reaches 5 pixels each way. */
const RADIUS = 5;
const SIGMA = 1.5;
const L = 255;
const C1 = (0.01 * L) ** 2;
const C2 = (0.03 * L) ** 2;

/** The normalised 1-D Gaussian (11 taps, σ = 1.5); its outer product is `fspecial`'s window. */
export const gaussian: Float64Array = (() => {
  const g = new Float64Array(2 * RADIUS + 1);
  let sum = 0;
  for (let i = -RADIUS; i <= RADIUS; i++) {
    g[i + RADIUS] = Math.exp(-(i * i) / (2 * SIGMA * SIGMA));
    sum += g[i + RADIUS];
  }
  return g.map((v) => v / sum);
})();

/** Y (BT.601 luma, 16..235) of every pixel, row-major, in float64. */
export function luma(img: Image): Float64Array {
  const n = img.width * img.height;
  const y = new Float64Array(n);
  const d = img.data;
  for (let i = 0; i < n; i++) {
    y[i] = (65.738 * d[3 * i] + 129.057 * d[3 * i + 1] + 25.064 * d[3 * i + 2]) / 256 + 16;
  }
  return y;
}

/** Throws when the sizes differ or the shave leaves nothing; returns the shaved size. */
function checkPair(sr: Image, hr: Image, shave: number, minSide: number): [number, number] {
  if (sr.width !== hr.width || sr.height !== hr.height) {
    throw new Error(
      `image sizes differ: SR is ${sr.width}x${sr.height}, HR is ${hr.width}x${hr.height}`,
    );
  }
  if (!Number.isInteger(shave) || shave < 0) {
    throw new RangeError(`shave must be a non-negative integer, got ${shave}`);
  }
  const w = sr.width - 2 * shave;
  const h = sr.height - 2 * shave;
  if (w < minSide || h < minSide) {
    throw new RangeError(
      `shaving ${shave} from a ${sr.width}x${sr.height} image leaves ${w}x${h}, ` +
        `less than ${minSide}x${minSide}`,
    );
  }
  return [w, h];
}

/** The interior of a `width`-wide plane with `shave` pixels cut from every border. */
function shavePlane(p: Float64Array, width: number, height: number, shave: number): Float64Array {
  if (shave === 0) return p;
  const w = width - 2 * shave;
  const h = height - 2 * shave;
  const out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    const from = (y + shave) * width + shave;
    out.set(p.subarray(from, from + w), y * w);
  }
  return out;
}

/**
 * Peak signal-to-noise ratio in dB of `sr` against `hr` (Infinity when they are equal).
 *
 * @example
 * ```ts
 * import { psnr } from "./Iqa.ts";
 * const a = { width: 2, height: 1, data: Uint8Array.of(0, 0, 0, 255, 255, 255) };
 * psnr(a, a, { shave: 0 }); // Infinity
 * ```
 */
export function psnr(sr: Image, hr: Image, opts: PsnrOptions): number {
  const [w, h] = checkPair(sr, hr, opts.shave, 1);
  const s = opts.shave;
  let sum = 0;
  if ((opts.channel ?? "y") === "y") {
    const a = shavePlane(luma(sr), sr.width, sr.height, s);
    const b = shavePlane(luma(hr), hr.width, hr.height, s);
    for (let i = 0; i < a.length; i++) {
      const d = (a[i] - b[i]) / 255;
      sum += d * d;
    }
  } else {
    for (let y = s; y < s + h; y++) {
      for (let i = (y * sr.width + s) * 3, end = i + w * 3; i < end; i++) {
        const d = (sr.data[i] - hr.data[i]) / 255;
        sum += d * d;
      }
    }
  }
  const mse = sum / (w * h * (opts.channel === "rgb" ? 3 : 1));
  return mse === 0 ? Infinity : -10 * Math.log10(mse);
}

/** Pads a plane by `r` pixels on every side, replicating the edge pixels. */
function padReplicate(p: Float64Array, w: number, h: number, r: number): Float64Array {
  const pw = w + 2 * r;
  const out = new Float64Array(pw * (h + 2 * r));
  for (let y = 0; y < h + 2 * r; y++) {
    const sy = Math.min(h - 1, Math.max(0, y - r));
    for (let x = 0; x < pw; x++) out[y * pw + x] = p[sy * w + Math.min(w - 1, Math.max(0, x - r))];
  }
  return out;
}

/** `filter2(window, p, 'valid')` with the separable Gaussian window: (h−10)×(w−10) values. */
function filterValid(p: Float64Array, w: number, h: number): Float64Array {
  const k = 2 * RADIUS + 1;
  const ow = w - k + 1;
  const oh = h - k + 1;
  const rows = new Float64Array(h * ow);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < ow; x++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += gaussian[t] * p[y * w + x + t];
      rows[y * ow + x] = acc;
    }
  }
  const out = new Float64Array(oh * ow);
  for (let y = 0; y < oh; y++) {
    for (let t = 0; t < k; t++) {
      const g = gaussian[t];
      const src = (y + t) * ow;
      for (let x = 0; x < ow; x++) out[y * ow + x] += g * rows[src + x];
    }
  }
  return out;
}

/** Structural similarity of `sr` to `hr` on Y, the mean of the SSIM map (see module doc). */
export function ssim(sr: Image, hr: Image, opts: SsimOptions): number {
  const variant = opts.variant ?? "same";
  const [w0, h0] = checkPair(sr, hr, opts.shave, variant === "valid" ? 2 * RADIUS + 1 : 1);
  let a = shavePlane(luma(sr), sr.width, sr.height, opts.shave);
  let b = shavePlane(luma(hr), hr.width, hr.height, opts.shave);
  let w = w0;
  let h = h0;
  if (variant === "same") {
    a = padReplicate(a, w, h, RADIUS);
    b = padReplicate(b, w, h, RADIUS);
    w += 2 * RADIUS;
    h += 2 * RADIUS;
  }
  const n = w * h;
  const aa = new Float64Array(n);
  const bb = new Float64Array(n);
  const ab = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    aa[i] = a[i] * a[i];
    bb[i] = b[i] * b[i];
    ab[i] = a[i] * b[i];
  }
  const mu1 = filterValid(a, w, h);
  const mu2 = filterValid(b, w, h);
  const s11 = filterValid(aa, w, h);
  const s22 = filterValid(bb, w, h);
  const s12 = filterValid(ab, w, h);
  let sum = 0;
  for (let i = 0; i < mu1.length; i++) {
    const m1 = mu1[i];
    const m2 = mu2[i];
    const v1 = s11[i] - m1 * m1;
    const v2 = s22[i] - m2 * m2;
    const cov = s12[i] - m1 * m2;
    sum += ((2 * m1 * m2 + C1) * (2 * cov + C2)) / ((m1 * m1 + m2 * m2 + C1) * (v1 + v2 + C2));
  }
  return sum / mu1.length;
}
