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
 * bicubic. Fails with the file name when the image cannot be decoded or is smaller than the
 * scale.
 */
export const pairOf = (file: string, scale: number): Effect.Effect<Pair, Image.ImageDecodeError> =>
  Effect.tryPromise({
    try: () => Image.read(file),
    catch: (e) =>
      e instanceof Image.ImageDecodeError
        ? e
        : new Image.ImageDecodeError({ file, reason: String(e) }),
  }).pipe(
    Effect.flatMap((img) =>
      img.width < scale || img.height < scale
        ? Effect.fail(
          new Image.ImageDecodeError({
            file,
            reason: `image is ${img.width}x${img.height}, smaller than the scale ×${scale}`,
          }),
        )
        : Effect.sync(() => {
          const hr = Image.modcrop(img, scale);
          return { file, hr, lr: Resize.downscale(hr, scale) };
        })
    ),
  );

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

/**
 * Copies a `p×p` window at (x, y) of `img` into `out` at `offset`, applying the augmentation:
 * output pixel (i, j) reads source (i', j') with transpose then flips, identically for LR and
 * HR, so the pair stays aligned.
 */
function copyPatch(
  img: Image.Image,
  x: number,
  y: number,
  p: number,
  aug: { readonly hflip: boolean; readonly vflip: boolean; readonly transpose: boolean },
  out: Float32Array,
  offset: number,
): void {
  const w = img.width;
  const d = img.data;
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) {
      let si = aug.transpose ? j : i;
      let sj = aug.transpose ? i : j;
      if (aug.vflip) si = p - 1 - si;
      if (aug.hflip) sj = p - 1 - sj;
      const src = ((y + si) * w + (x + sj)) * 3;
      const dst = offset + (i * p + j) * 3;
      out[dst] = d[src];
      out[dst + 1] = d[src + 1];
      out[dst + 2] = d[src + 2];
    }
  }
}

/** Batch number `index` of a dataset: a pure function of its arguments. */
export function batch(ds: Dataset, opts: BatchOptions, index: number): Batch {
  const p = opts.patch;
  const s = ds.scale;
  const hp = p * s;
  const usable = ds.pairs.filter((q) => q.lr.width >= p && q.lr.height >= p);
  if (usable.length === 0) {
    throw new RangeError(`dataset ${ds.name}: no image has an LR side ≥ patch ${p}`);
  }
  const lr = new Float32Array(opts.batch * p * p * 3);
  const hr = new Float32Array(opts.batch * hp * hp * 3);
  const rng = Rng.stream(Rng.fold(opts.seed, index));
  for (let b = 0; b < opts.batch; b++) {
    const pair = usable[rng.int(usable.length)];
    const x = rng.int(pair.lr.width - p + 1);
    const y = rng.int(pair.lr.height - p + 1);
    const augment = opts.augment ?? true;
    const aug = {
      hflip: augment && rng.next() < 0.5,
      vflip: augment && rng.next() < 0.5,
      transpose: augment && rng.next() < 0.5,
    };
    copyPatch(pair.lr, x, y, p, aug, lr, b * p * p * 3);
    copyPatch(pair.hr, x * s, y * s, hp, aug, hr, b * hp * hp * 3);
  }
  return { index, lr, hr, lrShape: [opts.batch, p, p, 3], hrShape: [opts.batch, hp, hp, 3] };
}

/** Batches `start, start+1, …, end−1` as an Effect stream. */
export const stream = (
  ds: Dataset,
  opts: BatchOptions,
  start: number,
  end: number,
): Stream.Stream<Batch> =>
  end <= start
    ? Stream.empty
    : Stream.range(start, end - 1, 1).pipe(Stream.map((i) => batch(ds, opts, i)));

/** A batch as tensors (the caller disposes them). */
export const tensors = (b: Batch): { lr: tf.Tensor4D; hr: tf.Tensor4D } => ({
  lr: tf.tensor4d(b.lr, [...b.lrShape]),
  hr: tf.tensor4d(b.hr, [...b.hrShape]),
});

/** An LR image as a `[1, h, w, 3]` tensor in [0, 255]. */
export const imageTensor = (img: Image.Image): tf.Tensor4D =>
  tf.tensor4d(Float32Array.from(img.data), [1, img.height, img.width, 3]);
