/**
 * Evaluation of an SR model on a dataset the way SR papers report it (SPEC §8): the model
 * upscales each whole LR image (in tiles where it does not fit the adapter, lib/Tile.ts, with
 * the same result), the output is clamped to [0, 255] and rounded to 8 bits, and PSNR/SSIM are
 * computed on the Y channel with `scale` pixels shaved from every border.
 *
 * Nothing is reported silently wrong: an image that fails (an adapter error, an image too large
 * for a model that cannot be tiled) is named in `failed` and the rest are scored; an output that
 * is constant or scores far below bicubic ({@link FLAG_BELOW_BICUBIC_DB}) is named in `flagged`,
 * and then the set has no score (`psnr`, `ssim` are NaN, `null` in JSON).
 *
 * @module
 */
import { Cause, Effect, Exit } from "effect";
import type * as Data from "./Data.ts";
import * as Image from "./Image.ts";
import * as Iqa from "./Iqa.ts";
import type * as Nn from "./Nn.ts";
import * as Resize from "./Resize.ts";
import * as Tile from "./Tile.ts";
import type { Params } from "./Tree.ts";

/** Scores of one image. */
export interface ImageScore {
  readonly file: string;
  readonly psnr: number;
  readonly ssim: number;
  /** Why this score is not trusted (constant output, far below bicubic). */
  readonly flag?: string;
}

/** An image that could not be scored, and why (a flagged one keeps its own numbers). */
export interface Problem {
  readonly file: string;
  readonly reason: string;
  readonly psnr?: number;
  readonly ssim?: number;
}

/** Mean scores over a set, and per image. */
export interface Scores {
  /** Mean over the scored images; NaN when any image is flagged. */
  readonly psnr: number;
  readonly ssim: number;
  readonly images: ReadonlyArray<ImageScore>;
  /** Images whose upscaling failed (left out of the means). */
  readonly failed: ReadonlyArray<Problem>;
  /** Images whose output is not a plausible SR result (the set then has no score). */
  readonly flagged: ReadonlyArray<Problem>;
}

/** An SR output this many dB below bicubic on the same image is flagged, not scored. */
export const FLAG_BELOW_BICUBIC_DB = 10;

/** Options of {@link evaluate}. */
export interface Options {
  /** SSIM filtering (default "same", SPEC §8). */
  readonly ssim?: "same" | "valid";
  /** Called after each image (progress). */
  readonly onImage?: (i: number, n: number, s: ImageScore) => void;
  /** Keep each SR output (for `--save`). */
  readonly onOutput?: (file: string, sr: Image.Image) => Effect.Effect<void>;
  /** Called when an image fails (it is left out and the rest is scored). */
  readonly onFailure?: (file: string, reason: string) => void;
  /** Called with each image's tiling plan. */
  readonly onPlan?: (p: Tile.Plan) => void;
  /** The training step of the parameters (see `Tile.Options.step`). */
  readonly step?: number;
}

/**
 * The model's SR output for one LR image, as an 8-bit image, tiled where the image does not fit
 * the adapter (the result equals the whole-image one; see lib/Tile.ts).
 */
export const superResolve = (
  model: Nn.AnyLayer,
  params: Params,
  lr: Image.Image,
  opts: Tile.Options = {},
): Effect.Effect<Image.Image, Tile.TooLarge> => Tile.superResolve(model, params, lr, opts);

/** Mean of scores. */
const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** Bicubic PSNR of each pair, computed once (the reference for flagging). */
const bicubicPsnr = new WeakMap<Data.Pair, number>();

/** Why an SR output is not plausible, if it is not: constant, or far below bicubic. */
export function implausible(sr: Image.Image, pair: Data.Pair, scale: number, psnr: number) {
  let lo = 255, hi = 0;
  for (const v of sr.data) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === hi) return `constant output (every value ${lo})`;
  let ref = bicubicPsnr.get(pair);
  if (ref === undefined) {
    ref = Iqa.psnr(Resize.bicubicUpscale(pair.lr, scale), pair.hr, { shave: scale });
    bicubicPsnr.set(pair, ref);
  }
  if (psnr < ref - FLAG_BELOW_BICUBIC_DB) {
    return `${psnr.toFixed(2)} dB, far below bicubic's ${ref.toFixed(2)} dB`;
  }
  return undefined;
}

const reasonOf = (cause: Cause.Cause<unknown>) => {
  const e = Cause.squash(cause);
  return e instanceof Error ? e.message : String(e);
};

/**
 * Scores a function from LR image to SR image on a dataset. `flag` (default true) checks each
 * output for plausibility ({@link implausible}).
 */
export const scoreWith = <E>(
  ds: Data.Dataset,
  upscale: (lr: Image.Image) => Effect.Effect<Image.Image, E>,
  opts: Options & { readonly flag?: boolean } = {},
): Effect.Effect<Scores> =>
  Effect.gen(function* () {
    const images: ImageScore[] = [];
    const failed: Problem[] = [];
    for (const [i, pair] of ds.pairs.entries()) {
      const exit = yield* Effect.exit(upscale(pair.lr));
      if (Exit.isFailure(exit)) {
        failed.push({ file: pair.file, reason: reasonOf(exit.cause) });
        opts.onFailure?.(pair.file, reasonOf(exit.cause));
        continue;
      }
      const sr = exit.value;
      const psnr = Iqa.psnr(sr, pair.hr, { shave: ds.scale });
      const flag = opts.flag === false ? undefined : implausible(sr, pair, ds.scale, psnr);
      const s: ImageScore = {
        file: pair.file,
        psnr,
        ssim: Iqa.ssim(sr, pair.hr, { shave: ds.scale, variant: opts.ssim ?? "same" }),
        ...(flag ? { flag } : {}),
      };
      images.push(s);
      if (opts.onOutput) yield* opts.onOutput(pair.file, sr);
      opts.onImage?.(i, ds.pairs.length, s);
    }
    const flagged = images.flatMap((s) =>
      s.flag ? [{ file: s.file, reason: s.flag, psnr: s.psnr, ssim: s.ssim }] : []
    );
    const scored = images.length > 0 && flagged.length === 0;
    return {
      psnr: scored ? mean(images.map((s) => s.psnr)) : NaN,
      ssim: scored ? mean(images.map((s) => s.ssim)) : NaN,
      images,
      failed,
      flagged,
    };
  });

/** Scores a model on a dataset. */
export const evaluate = (
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Dataset,
  opts: Options = {},
) =>
  scoreWith(
    ds,
    (lr) => superResolve(model, params, lr, { onPlan: opts.onPlan, step: opts.step }),
    opts,
  );

/** Scores bicubic upscaling on a dataset (the reference row of SR tables). */
export const bicubic = (ds: Data.Dataset, opts: Options = {}) =>
  scoreWith(ds, (lr) => Effect.sync(() => Resize.bicubicUpscale(lr, ds.scale)), {
    ...opts,
    flag: false,
  });

/** One line per failed or flagged image of a set, for logs. */
export function problems(s: Scores): string[] {
  return [
    ...s.failed.map((p) => `${p.file}: failed: ${p.reason}`),
    ...s.flagged.map((p) => `${p.file}: flagged: ${p.reason}`),
  ];
}
