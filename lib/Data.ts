/**
 * Training and evaluation data: folders of HR photographs, their bicubic LR counterparts, and
 * seeded streams of aligned LR/HR patch batches.
 *
 * SR papers train on DIV2K with LR images made by MATLAB's antialiased bicubic `imresize`
 * (SPEC §7); we make them with {@link Resize.downscale}, the same function evaluation uses.
 * A batch is a pure function of `(dataset, options, index)`: random aligned patches (LR 48×48
 * by default) with horizontal flip, vertical flip and transpose, each with probability 0.5,
 * drawn from `Rng.fold(seed, index)`. So a stream that starts at step k after a resume yields
 * exactly the batches an uninterrupted run would have seen.
 *
 * Where a batch's patches lie ({@link plan}) depends only on the images' LR sizes, never on
 * their pixels: so a {@link Dataset} held in memory and a {@link Source} that reads its images
 * from disk as the batches need them (`Loader.open`, for DIV2K-sized folders) give the same
 * batches for the same images, and training takes either ({@link Training}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data, Effect, Stream } from "effect";
import * as Image from "./Image.ts";
import * as Resize from "./Resize.ts";
import * as Rng from "./Rng.ts";

/** One HR image and its LR counterpart at the dataset's scale. */
export interface Pair {
  readonly file: string;
  readonly hr: Image.Image;
  readonly lr: Image.Image;
}

/** A set of aligned LR/HR images at one scale. */
export interface Dataset {
  readonly name: string;
  readonly scale: number;
  readonly pairs: ReadonlyArray<Pair>;
}

/** A folder could not be used as a dataset. */
export class DatasetError extends Data.TaggedError("DatasetError")<{
  readonly path: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `dataset ${this.path}: ${this.reason}`;
  }
}

const IMAGE_EXT = /\.(png|jpe?g)$/i;

/** The project's embedded images (`data/train`, `data/eval`). */
export const embedded = {
  train: new URL("../data/train/", import.meta.url).pathname,
  eval: new URL("../data/eval/", import.meta.url).pathname,
} as const;

/** Called for a file of a folder that is left out, and why (a dangling symlink, …). */
export type OnSkip = (file: string, reason: string) => void;

/** The default {@link OnSkip}: a `warning:` line on stderr. */
export const warnSkip: OnSkip = (file, reason) =>
  console.error(`warning: ${file}: ${reason}; skipped`);

/** Why the symlink `path` cannot be used as an image file, or undefined when it can. */
async function symlinkProblem(path: string): Promise<string | undefined> {
  try {
    const target = await Deno.stat(path);
    return target.isFile ? undefined : "a symlink to a folder, not to an image file";
  } catch (e) {
    const to = await Deno.readLink(path).catch(() => "?");
    return e instanceof Deno.errors.NotFound
      ? `dangling symlink (its target ${to} does not exist)`
      : `symlink to ${to} cannot be followed: ${(e as Error).message}`;
  }
}

/**
 * The image files of a folder, sorted by name (so datasets are ordered the same everywhere).
 * Symlinks to image files are followed; one that cannot be (dangling, or to a folder) is left
 * out and reported to `onSkip` (default: a warning on stderr).
 */
export const listImages = (
  dir: string,
  onSkip: OnSkip = warnSkip,
): Effect.Effect<string[], DatasetError> =>
  Effect.tryPromise({
    try: async () => {
      const root = dir.replace(/\/$/, "");
      const names: string[] = [];
      const skipped: Array<[string, string]> = [];
      for await (const e of Deno.readDir(dir)) {
        if (!IMAGE_EXT.test(e.name)) continue;
        if (e.isFile) names.push(e.name);
        else if (e.isSymlink) {
          const problem = await symlinkProblem(`${root}/${e.name}`);
          if (problem) skipped.push([e.name, problem]);
          else names.push(e.name);
        }
      }
      for (const [n, why] of skipped.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        onSkip(`${root}/${n}`, why);
      }
      return names.sort().map((n) => `${root}/${n}`);
    },
    catch: (e) => new DatasetError({ path: dir, reason: (e as Error).message }),
  }).pipe(
    Effect.flatMap((files) =>
      files.length > 0
        ? Effect.succeed(files)
        : Effect.fail(new DatasetError({ path: dir, reason: "no PNG or JPEG images" }))
    ),
  );

/**
 * The pair for one HR image: cropped to a multiple of the scale (right/bottom), LR by MATLAB
 * bicubic, or read from `lrFile` (a dataset's own LR image, e.g. DIV2K's `0001x4.png`), which
 * must then be exactly the cropped HR size divided by the scale. Fails with the file name when
 * an image cannot be decoded, is smaller than the scale, or the LR file does not match.
 */
export const pairOf = (
  file: string,
  scale: number,
  lrFile?: string,
): Effect.Effect<Pair, Image.ImageDecodeError> =>
  Effect.tryPromise({
    try: async () => {
      const img = await Image.read(file);
      return { img, own: lrFile === undefined ? undefined : await Image.read(lrFile) };
    },
    catch: (e) =>
      e instanceof Image.ImageDecodeError
        ? e
        : new Image.ImageDecodeError({ file, reason: String(e) }),
  }).pipe(
    Effect.flatMap(({ img, own }) => {
      const fail = (reason: string) => Effect.fail(new Image.ImageDecodeError({ file, reason }));
      if (img.width < scale || img.height < scale) {
        return fail(`image is ${img.width}x${img.height}, smaller than the scale ×${scale}`);
      }
      const hr = Image.modcrop(img, scale);
      if (own && (own.width * scale !== hr.width || own.height * scale !== hr.height)) {
        return fail(lrMismatch(img, scale, lrFile!, own));
      }
      return Effect.sync(() => ({ file, hr, lr: own ?? Resize.downscale(hr, scale) }));
    }),
  );

/** Why an LR file of size `lr` does not belong to an HR image of size `hr` at `scale`. */
export function lrMismatch(hr: Size, scale: number, lrFile: string, lr: Size): string {
  const w = hr.width - (hr.width % scale), h = hr.height - (hr.height % scale);
  return `HR is ${hr.width}x${hr.height} (${w}x${h} cropped to a multiple of ${scale}) but ` +
    `its LR file ${lrFile} is ${lr.width}x${lr.height}; expected ${w / scale}x${h / scale}`;
}

/**
 * Loads every image of a folder (DIV2K layout: a flat folder of HR images, symlinks followed)
 * as a dataset. `onImage` reports progress.
 */
export const load = (
  dir: string,
  scale: number,
  opts: {
    readonly name?: string;
    readonly onImage?: (i: number, n: number, file: string) => void;
    /** Files left out of the folder (see {@link listImages}; default: a warning on stderr). */
    readonly onSkip?: OnSkip;
  } = {},
): Effect.Effect<Dataset, DatasetError | Image.ImageDecodeError> =>
  Effect.gen(function* () {
    const files = yield* listImages(dir, opts.onSkip);
    const pairs: Pair[] = [];
    for (const [i, file] of files.entries()) {
      opts.onImage?.(i, files.length, file);
      pairs.push(yield* pairOf(file, scale));
    }
    return { name: opts.name ?? dir, scale, pairs };
  });

/** Options of patch batches. */
export interface BatchOptions {
  /** Patches per batch. */
  readonly batch: number;
  /** LR patch side (HR side = patch · scale). Default 48. */
  readonly patch: number;
  /** Seed of the stream; batch i uses `Rng.fold(seed, i)`. */
  readonly seed: number;
  /** Random flips and transpose (default true). */
  readonly augment?: boolean;
}

/** A batch as plain arrays, NHWC, values in [0, 255]. */
export interface Batch {
  readonly index: number;
  readonly lr: Float32Array;
  readonly hr: Float32Array;
  readonly lrShape: readonly [number, number, number, number];
  readonly hrShape: readonly [number, number, number, number];
}

/** An image's width and height. */
export interface Size {
  readonly width: number;
  readonly height: number;
}

/**
 * Where one patch of a batch comes from: the image (its index in the dataset), the LR
 * top-left corner (the HR one is `scale` times it) and the augmentation.
 */
export interface Cut {
  readonly image: number;
  readonly x: number;
  readonly y: number;
  readonly hflip: boolean;
  readonly vflip: boolean;
  readonly transpose: boolean;
}

/**
 * The cuts of batch number `index` over images whose LR sizes are `sizes`: a pure function
 * of its arguments. Images with an LR side below the patch are never drawn. `name` is used in
 * the error when no image is large enough.
 */
export function plan(
  name: string,
  sizes: ReadonlyArray<Size>,
  opts: BatchOptions,
  index: number,
): Cut[] {
  const p = opts.patch;
  const usable: number[] = [];
  for (const [i, s] of sizes.entries()) if (s.width >= p && s.height >= p) usable.push(i);
  if (usable.length === 0) {
    throw new RangeError(`dataset ${name}: no image has an LR side ≥ patch ${p}`);
  }
  // The order of the draws is the stream's contract (resumed runs and saved runs rely on it):
  // image, x, y, then hflip, vflip, transpose, the three only when augmenting.
  const rng = Rng.stream(Rng.fold(opts.seed, index));
  const augment = opts.augment ?? true;
  const cuts: Cut[] = [];
  for (let b = 0; b < opts.batch; b++) {
    const image = usable[rng.int(usable.length)];
    const x = rng.int(sizes[image].width - p + 1);
    const y = rng.int(sizes[image].height - p + 1);
    const hflip = augment && rng.next() < 0.5;
    const vflip = augment && rng.next() < 0.5;
    const transpose = augment && rng.next() < 0.5;
    cuts.push({ image, x, y, hflip, vflip, transpose });
  }
  return cuts;
}

/**
 * Pixels to cut patches from: `data` holds rows `top, top+1, …` of an image `width` pixels
 * wide (a whole image has `top` 0; a loader may hold only the rows a patch needs).
 */
export interface Rows {
  readonly width: number;
  readonly data: Uint8Array;
  readonly top?: number;
}

/**
 * Copies a `p×p` window at (x, y) of `img` into `out` at `offset`, applying the augmentation:
 * output pixel (i, j) reads source (i', j') with transpose then flips, identically for LR and
 * HR, so the pair stays aligned.
 */
function copyPatch(
  img: Rows,
  x: number,
  y: number,
  p: number,
  aug: { readonly hflip: boolean; readonly vflip: boolean; readonly transpose: boolean },
  out: Float32Array,
  offset: number,
): void {
  const w = img.width;
  const d = img.data;
  const top = img.top ?? 0;
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) {
      let si = aug.transpose ? j : i;
      let sj = aug.transpose ? i : j;
      if (aug.vflip) si = p - 1 - si;
      if (aug.hflip) sj = p - 1 - sj;
      const src = ((y - top + si) * w + (x + sj)) * 3;
      const dst = offset + (i * p + j) * 3;
      out[dst] = d[src];
      out[dst + 1] = d[src + 1];
      out[dst + 2] = d[src + 2];
    }
  }
}

/** An empty batch (zeros) of the options' shape at `scale`, to {@link put} patches into. */
export function allocate(
  opts: Pick<BatchOptions, "batch" | "patch">,
  scale: number,
  index: number,
): Batch {
  const p = opts.patch, hp = p * scale;
  return {
    index,
    lr: new Float32Array(opts.batch * p * p * 3),
    hr: new Float32Array(opts.batch * hp * hp * 3),
    lrShape: [opts.batch, p, p, 3],
    hrShape: [opts.batch, hp, hp, 3],
  };
}

/**
 * Writes patch `n` of batch `b` from its cut: the LR window at (x, y) of `lr`, the HR window
 * at (x·s, y·s) of `hr`, augmented alike. `lr` and `hr` may hold only the rows the windows
 * cover (their `top`).
 */
export function put(b: Batch, n: number, cut: Cut, lr: Rows, hr: Rows): void {
  const p = b.lrShape[1], hp = b.hrShape[1], s = hp / p;
  copyPatch(lr, cut.x, cut.y, p, cut, b.lr, n * p * p * 3);
  copyPatch(hr, cut.x * s, cut.y * s, hp, cut, b.hr, n * hp * hp * 3);
}

/** Batch number `index` of a dataset: a pure function of its arguments. */
export function batch(ds: Dataset, opts: BatchOptions, index: number): Batch {
  const cuts = plan(ds.name, ds.pairs.map((q) => q.lr), opts, index);
  const b = allocate(opts, ds.scale, index);
  for (const [n, c] of cuts.entries()) put(b, n, c, ds.pairs[c.image].lr, ds.pairs[c.image].hr);
  return b;
}

/**
 * A training set whose images stay on disk: its batches are cut as they are needed, from
 * images read on demand (`Loader.open` makes one). For the same images and options its batch
 * `k` equals {@link batch} of the same images in memory.
 */
export interface Source {
  readonly name: string;
  readonly scale: number;
  /** The HR files, in the order of {@link Cut.image}. */
  readonly files: ReadonlyArray<string>;
  /** Each image's LR size (the HR one is `scale` times it). */
  readonly sizes: ReadonlyArray<Size>;
  /** Batches `start … end − 1`; fails naming the file when an image cannot be read. */
  readonly batches: (
    opts: BatchOptions,
    start: number,
    end: number,
  ) => Stream.Stream<Batch, DatasetError>;
}

/** What training draws batches from: images in memory or a {@link Source} on disk. */
export type Training = Dataset | Source;

/** Whether a training set is a {@link Source} (streamed from disk). */
export const isSource = (t: Training): t is Source => "batches" in t;

/** The LR size of each image of a training set, in order. */
export const lrSizes = (t: Training): ReadonlyArray<Size> =>
  isSource(t) ? t.sizes : t.pairs.map((p) => p.lr);

/** The number of images of a training set. */
export const count = (t: Training): number => (isSource(t) ? t.files.length : t.pairs.length);

/**
 * Batches `start, start+1, …, end−1` as an Effect stream. From a {@link Source}, an image that
 * cannot be read mid-run ends the stream with a defect naming it (a training run stops there;
 * its last checkpoint is kept); use `Source.batches` to handle it as a failure instead.
 */
export const stream = (
  ds: Training,
  opts: BatchOptions,
  start: number,
  end: number,
): Stream.Stream<Batch> =>
  end <= start
    ? Stream.empty
    : isSource(ds)
    ? Stream.orDie(ds.batches(opts, start, end))
    : Stream.range(start, end - 1, 1).pipe(Stream.map((i) => batch(ds, opts, i)));

/** A batch as tensors (the caller disposes them). */
export const tensors = (b: Batch): { lr: tf.Tensor4D; hr: tf.Tensor4D } => ({
  lr: tf.tensor4d(b.lr, [...b.lrShape]),
  hr: tf.tensor4d(b.hr, [...b.hrShape]),
});

/** An LR image as a `[1, h, w, 3]` tensor in [0, 255]. */
export const imageTensor = (img: Image.Image): tf.Tensor4D =>
  tf.tensor4d(Float32Array.from(img.data), [1, img.height, img.width, 3]);
