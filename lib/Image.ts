/**
 * An image: 8-bit RGB pixels in row-major HWC order, and the file formats it comes from.
 *
 * Every image in the project, HR ground truth, bicubic LR input and SR output alike, is this one
 * value: `width × height` pixels, three bytes (R, G, B) each, rows top to bottom. PNG (any bit
 * depth and colour type) and baseline/progressive JPEG decode to it; alpha is dropped, grey is
 * replicated, palettes are looked up and 16-bit samples are scaled to 8 bits with rounding.
 * The format is recognised from the file's magic bytes, never from its name. Files that cannot
 * be decoded fail with {@link ImageDecodeError}, which names the file.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data } from "effect";
import { decode as decodePngFile, encode as encodePngFile } from "fast-png";
import jpeg from "jpeg-js";

/** An 8-bit RGB image; `data` is HWC (row-major, R G B per pixel), length `width·height·3`. */
export interface Image {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

/** A file could not be read or decoded as an image (unknown format, corrupt, unsupported). */
export class ImageDecodeError extends Data.TaggedError("ImageDecodeError")<{
  readonly file: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `cannot decode image ${this.file}: ${this.reason}`;
  }
}

/** Makes an image from its parts, checking that `data` has `width·height·3` bytes. */
export function make(width: number, height: number, data: Uint8Array): Image {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 0 || height < 0) {
    throw new RangeError(`image size must be non-negative integers, got ${width}x${height}`);
  }
  if (data.length !== width * height * 3) {
    throw new RangeError(
      `image data of ${width}x${height} needs ${width * height * 3} bytes, got ${data.length}`,
    );
  }
  return { width, height, data };
}

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

const startsWith = (bytes: Uint8Array, magic: readonly number[]): boolean =>
  bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);

/** Decodes PNG or JPEG bytes (format from magic bytes); `name` is used only in errors. */
export function decode(bytes: Uint8Array, name: string): Image {
  const fail = (reason: string): never => {
    throw new ImageDecodeError({ file: name, reason });
  };
  const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e));
  if (startsWith(bytes, PNG_MAGIC)) {
    let png: ReturnType<typeof decodePngFile>;
    try {
      png = decodePngFile(bytes, { checkCrc: true });
    } catch (e) {
      return fail(`corrupt PNG (${describe(e)})`);
    }
    const reason = pngProblem(png);
    if (reason !== undefined) return fail(reason);
    try {
      return make(png.width, png.height, pngToRgb(png));
    } catch (e) {
      return fail(`corrupt PNG (${describe(e)})`);
    }
  }
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) {
    let img: { width: number; height: number; data: Uint8Array };
    try {
      img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false });
    } catch (e) {
      return fail(`corrupt JPEG (${describe(e)})`);
    }
    if (img.width <= 0 || img.height <= 0) return fail("JPEG has no pixels");
    if (img.data.length !== img.width * img.height * 3) return fail("JPEG data is truncated");
    return make(img.width, img.height, img.data);
  }
  return fail("unknown format (neither PNG nor JPEG magic bytes)");
}

type DecodedPng = ReturnType<typeof decodePngFile>;

/** Why a decoded PNG cannot be converted, or undefined when it can. */
function pngProblem(png: DecodedPng): string | undefined {
  const { width, height, depth, channels } = png;
  if (width <= 0 || height <= 0) return "PNG has no pixels";
  if (![1, 2, 3, 4].includes(channels)) return `unsupported PNG channel count ${channels}`;
  if (png.palette !== undefined && channels === 1) {
    if (![1, 2, 4, 8].includes(depth)) return `unsupported palette bit depth ${depth}`;
  } else if (depth < 8 && channels !== 1) {
    return `unsupported PNG bit depth ${depth} with ${channels} channels`;
  } else if (![1, 2, 4, 8, 16].includes(depth)) {
    return `unsupported PNG bit depth ${depth}`;
  }
  const expected = depth < 8 ? Math.ceil((width * depth) / 8) * height : width * height * channels;
  if (png.data.length !== expected) {
    return `PNG data is truncated (${png.data.length} of ${expected} samples)`;
  }
  return undefined;
}

/** Unpacks sub-byte samples (1, 2 or 4 bits, rows padded to whole bytes) into one per pixel. */
function unpackBits(data: ArrayLike<number>, width: number, height: number, depth: number) {
  const out = new Uint8Array(width * height);
  const rowBytes = Math.ceil((width * depth) / 8);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const bit = x * depth;
      const byte = data[y * rowBytes + (bit >> 3)];
      out[y * width + x] = (byte >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

/** Converts any decoded PNG to 8-bit RGB: palette lookup, grey replicated, alpha dropped. */
function pngToRgb(png: DecodedPng): Uint8Array {
  const { width, height, depth, channels, palette } = png;
  const n = width * height;
  const out = new Uint8Array(n * 3);
  if (palette !== undefined && channels === 1) {
    const index = depth < 8 ? unpackBits(png.data, width, height, depth) : png.data;
    for (let i = 0; i < n; i++) {
      const colour = palette[index[i]];
      if (colour === undefined) {
        throw new RangeError(`palette index ${index[i]} out of range (${palette.length})`);
      }
      out[3 * i] = colour[0];
      out[3 * i + 1] = colour[1];
      out[3 * i + 2] = colour[2];
    }
    return out;
  }
  let samples: ArrayLike<number> = png.data;
  if (depth < 8) {
    // Grey at 1, 2 or 4 bits: scale the full range onto 0..255 (exact: 255 / (2^d − 1) is whole).
    const unpacked = unpackBits(png.data, width, height, depth);
    const gain = 255 / ((1 << depth) - 1);
    for (let i = 0; i < n; i++) unpacked[i] *= gain;
    samples = unpacked;
  } else if (depth === 16) {
    // 16 → 8 bits: v·255/65535 = v/257, rounded to nearest.
    const scaled = new Uint8Array(png.data.length);
    for (let i = 0; i < png.data.length; i++) scaled[i] = Math.round(png.data[i] / 257);
    samples = scaled;
  }
  const colour = channels >= 3;
  for (let i = 0; i < n; i++) {
    const s = i * channels;
    out[3 * i] = samples[s];
    out[3 * i + 1] = samples[colour ? s + 1 : s];
    out[3 * i + 2] = samples[colour ? s + 2 : s];
  }
  return out;
}

/** Reads and decodes an image file; read and decode failures reject with ImageDecodeError. */
export async function read(path: string): Promise<Image> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new ImageDecodeError({
      file: path,
      reason: `cannot read file (${e instanceof Error ? e.message : String(e)})`,
    });
  }
  return decode(bytes, path);
}

/** Encodes an image as an 8-bit RGB PNG. */
export function encodePng(img: Image): Uint8Array {
  return encodePngFile({
    width: img.width,
    height: img.height,
    data: img.data,
    depth: 8,
    channels: 3,
  });
}

/** Writes an image as PNG atomically (to `path + ".tmp"`, then renamed over `path`). */
export async function write(path: string, img: Image): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeFile(tmp, encodePng(img));
  await Deno.rename(tmp, path);
}

/** The image as a float32 tensor of shape [height, width, 3] with values in [0, 255]. */
export function toTensor(img: Image): tf.Tensor3D {
  return tf.tensor3d(Float32Array.from(img.data), [img.height, img.width, 3], "float32");
}

/**
 * Reads a [height, width, 3] tensor back as an image: values are clamped to [0, 255] and
 * rounded half up (`Math.round`), which on non-negative values is MATLAB's `im2uint8` rounding
 * (half away from zero). NaN becomes 0. The tensor is not disposed.
 */
export async function fromTensor(t: tf.Tensor3D): Promise<Image> {
  const [height, width, channels] = t.shape;
  if (t.rank !== 3 || channels !== 3) {
    throw new RangeError(`fromTensor needs a [h, w, 3] tensor, got [${t.shape.join(", ")}]`);
  }
  const values = await t.data<"float32">();
  const data = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    data[i] = v > 0 ? (v < 255 ? Math.round(v) : 255) : 0;
  }
  return make(width, height, data);
}

/** The `w × h` region whose top-left pixel is (`x`, `y`); it must lie inside the image. */
export function crop(img: Image, x: number, y: number, w: number, h: number): Image {
  const whole = [x, y, w, h].every(Number.isInteger);
  if (!whole || x < 0 || y < 0 || w < 0 || h < 0 || x + w > img.width || y + h > img.height) {
    throw new RangeError(
      `crop ${w}x${h} at (${x}, ${y}) does not fit in a ${img.width}x${img.height} image`,
    );
  }
  const data = new Uint8Array(w * h * 3);
  for (let row = 0; row < h; row++) {
    const from = ((y + row) * img.width + x) * 3;
    data.set(img.data.subarray(from, from + w * 3), row * w * 3);
  }
  return { width: w, height: h, data };
}

/** Drops right columns and bottom rows so that both sides are multiples of `scale`. */
export function modcrop(img: Image, scale: number): Image {
  if (!Number.isInteger(scale) || scale < 1) {
    throw new RangeError(`modcrop scale must be a positive integer, got ${scale}`);
  }
  const w = img.width - (img.width % scale);
  const h = img.height - (img.height % scale);
  return w === img.width && h === img.height ? img : crop(img, 0, 0, w, h);
}
