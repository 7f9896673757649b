/**
 * Evaluation of an SR model on a dataset the way SR papers report it (SPEC §8): the model
 * upscales each whole LR image, the output is clamped to [0, 255] and rounded to 8 bits, and
 * PSNR/SSIM are computed on the Y channel with `scale` pixels shaved from every border.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import * as Data from "./Data.ts";
import * as Image from "./Image.ts";
import * as Iqa from "./Iqa.ts";
import * as Nn from "./Nn.ts";
import * as Resize from "./Resize.ts";
import type { Params } from "./Tree.ts";

/** Scores of one image. */
export interface ImageScore {
  readonly file: string;
  readonly psnr: number;
  readonly ssim: number;
}

/** Mean scores over a set, and per image. */
export interface Scores {
  readonly psnr: number;
  readonly ssim: number;
  readonly images: ReadonlyArray<ImageScore>;
}

/** Options of {@link evaluate}. */
export interface Options {
  /** SSIM filtering (default "same", SPEC §8). */
  readonly ssim?: "same" | "valid";
  /** Called after each image (progress). */
  readonly onImage?: (i: number, n: number, s: ImageScore) => void;
  /** Keep each SR output (for `--save`). */
  readonly onOutput?: (file: string, sr: Image.Image) => Effect.Effect<void>;
}

/** The model's SR output for one LR image, as an 8-bit image. */
export const superResolve = (
  model: Nn.AnyLayer,
  params: Params,
  lr: Image.Image,
): Effect.Effect<Image.Image> =>
  Effect.promise(async () => {
    const out = tf.tidy(() => {
      const y = model.apply(params, Data.imageTensor(lr), Nn.context("eval"));
      return tf.squeeze(y, [0]) as tf.Tensor3D;
    });
    try {
      return await Image.fromTensor(out);
    } finally {
      out.dispose();
    }
  });

/** Mean of scores. */
const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** Scores a function from LR image to SR image on a dataset. */
export const scoreWith = (
  ds: Data.Dataset,
  upscale: (lr: Image.Image) => Effect.Effect<Image.Image>,
  opts: Options = {},
): Effect.Effect<Scores> =>
  Effect.gen(function* () {
    const images: ImageScore[] = [];
    for (const [i, pair] of ds.pairs.entries()) {
      const sr = yield* upscale(pair.lr);
      const s = {
        file: pair.file,
        psnr: Iqa.psnr(sr, pair.hr, { shave: ds.scale }),
        ssim: Iqa.ssim(sr, pair.hr, { shave: ds.scale, variant: opts.ssim ?? "same" }),
      };
      images.push(s);
      if (opts.onOutput) yield* opts.onOutput(pair.file, sr);
      opts.onImage?.(i, ds.pairs.length, s);
    }
    return { psnr: mean(images.map((s) => s.psnr)), ssim: mean(images.map((s) => s.ssim)), images };
  });

/** Scores a model on a dataset. */
export const evaluate = (
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Dataset,
  opts: Options = {},
) => scoreWith(ds, (lr) => superResolve(model, params, lr), opts);

/** Scores bicubic upscaling on a dataset (the reference row of SR tables). */
export const bicubic = (ds: Data.Dataset, opts: Options = {}) =>
  scoreWith(ds, (lr) => Effect.sync(() => Resize.bicubicUpscale(lr, ds.scale)), opts);
