/**
 * Benchmark sets as the SR papers evaluate on them (SPEC §8): Set5, Set14, B100, Urban100 and
 * DIV2K-valid, in the folder layouts they are distributed in, as {@link Data.Dataset} values
 * that `Evaluate.evaluate` scores.
 *
 * Layouts (`s` is the scale):
 * - `<set>/HR/*.png`, optionally with `<set>/LR_bicubic/X<s>/` (EDSR-PyTorch's `benchmark/`
 *   folders: `Set5/HR/baby.png` with `Set5/LR_bicubic/X4/babyx4.png`);
 * - `<name>_HR/*.png` with an optional sibling `<name>_LR_bicubic/X<s>/` (DIV2K:
 *   `DIV2K_valid_HR/0801.png` with `DIV2K_valid_LR_bicubic/X4/0801x4.png`);
 * - any flat folder of HR images.
 *
 * An LR file matches an HR file by name: `<stem>x<s>.<ext>` or `<stem>.<ext>`. Without an LR
 * folder the LR image is the MATLAB-bicubic downscale of the HR image cropped to a multiple of
 * the scale ({@link Data.pairOf}); with one, the HR image is cropped the same way and must be
 * exactly `s` times the LR file.
 *
 * Grey images (several in Set14 and B100) decode as RGB with three equal channels
 * (`Image.decode`), which is what the papers' MATLAB and BasicSR scripts feed the networks;
 * PSNR/SSIM on Y are then the grey values' PSNR/SSIM.
 *
 * One bad image does not sink a set: a file that cannot be decoded, is smaller than the scale,
 * has no LR counterpart or a mismatched one, or is a dangling symlink, is left out and reported
 * in {@link Benchmark.problems}, naming the file; every other image is still evaluated.
 * Symlinks to image files are followed.
 *
 * @module
 */
import { Effect } from "effect";
import * as Data from "./Data.ts";
import * as Image from "./Image.ts";

/** A file left out of a set, and why. */
export interface Problem {
  readonly file: string;
  readonly reason: string;
}

/** An evaluation set: a dataset plus where it came from and what was left out. */
export interface Benchmark extends Data.Dataset {
  /** The HR folder. */
  readonly hr: string;
  /** The LR folder, or undefined when LR images are made by bicubic downscaling. */
  readonly lr?: string;
  /** Images left out (corrupt, too small, mismatched), each naming its file. */
  readonly problems: ReadonlyArray<Problem>;
}

/** Where a set's HR and LR images are. */
export interface Layout {
  readonly name: string;
  readonly hr: string;
  readonly lr?: string;
}

/** The argument that names the project's embedded evaluation images. */
export const EMBEDDED = "embedded";

const trim = (p: string) => (p.length > 1 ? p.replace(/\/+$/, "") : p);
const base = (p: string) => trim(p).split("/").pop() ?? p;
const parent = (p: string) => {
  const t = trim(p);
  const i = t.lastIndexOf("/");
  return i > 0 ? t.slice(0, i) : i === 0 ? "/" : ".";
};
const join = (a: string, b: string) => (a.endsWith("/") ? `${a}${b}` : `${a}/${b}`);

const isDir = (p: string): Promise<boolean> => Deno.stat(p).then((s) => s.isDirectory, () => false);

/** The first of `candidates` that is a directory. */
async function firstDir(candidates: ReadonlyArray<string>): Promise<string | undefined> {
  for (const c of candidates) if (await isDir(c)) return c;
  return undefined;
}

/**
 * Finds the HR and LR folders of a set (see the module doc). `embedded` names the project's
 * own evaluation images (`Data.embedded.eval`). Fails when `dir` is not a folder.
 */
export const layout = (dir: string, scale: number): Effect.Effect<Layout, Data.DatasetError> =>
  Effect.tryPromise({
    try: async (): Promise<Layout> => {
      if (dir === EMBEDDED) return { name: EMBEDDED, hr: trim(Data.embedded.eval) };
      const root = trim(dir);
      if (!(await isDir(root))) throw new Error("not a folder");
      const x = `X${scale}`;
      const hrSub = await firstDir([join(root, "HR")]);
      if (hrSub) {
        // <set>/HR with <set>/LR_bicubic/X<s>.
        const lr = await firstDir([
          join(root, `LR_bicubic/${x}`),
          join(root, `LR_bicubic/${x.toLowerCase()}`),
        ]);
        return { name: base(root), hr: hrSub, lr };
      }
      const name = base(root);
      if (name === "HR") {
        // The HR folder itself was given: <set>/HR.
        const set = parent(root);
        const lr = await firstDir([join(set, `LR_bicubic/${x}`)]);
        return { name: base(set), hr: root, lr };
      }
      const div2k = /^(.*)_HR$/.exec(name);
      if (div2k) {
        // DIV2K: <name>_HR with the sibling <name>_LR_bicubic/X<s>.
        const lr = await firstDir([
          join(parent(root), `${div2k[1]}_LR_bicubic/${x}`),
          join(root, `LR_bicubic/${x}`),
        ]);
        return { name: div2k[1], hr: root, lr };
      }
      const lr = await firstDir([join(root, `LR_bicubic/${x}`)]);
      return { name, hr: root, lr };
    },
    catch: (e) => new Data.DatasetError({ path: dir, reason: (e as Error).message }),
  });

const IMAGE_EXT = /\.(png|jpe?g)$/i;
const stem = (file: string) => base(file).replace(IMAGE_EXT, "");

/** The LR file for an HR file: `<stem>x<s>.*` first, then `<stem>.*` (case-insensitive). */
export function matchLr(
  hrFile: string,
  lrFiles: ReadonlyArray<string>,
  scale: number,
): string | undefined {
  const s = stem(hrFile).toLowerCase();
  const byStem = new Map(lrFiles.map((f) => [stem(f).toLowerCase(), f] as const));
  return byStem.get(`${s}x${scale}`) ?? byStem.get(s);
}

const reasonOf = (e: unknown): string =>
  e instanceof Image.ImageDecodeError ? e.reason : e instanceof Error ? e.message : String(e);

/** The pair of an HR file and a given LR file: HR cropped to a multiple of s, sizes checked. */
const pairWithLr = (
  hrFile: string,
  lrFile: string,
  scale: number,
): Effect.Effect<Data.Pair, Problem> =>
  Effect.tryPromise({
    try: async () => {
      const hr = await Image.read(hrFile);
      let lr: Image.Image;
      try {
        lr = await Image.read(lrFile);
      } catch (e) {
        throw new Error(`its LR file ${lrFile}: ${reasonOf(e)}`);
      }
      if (hr.width < scale || hr.height < scale) {
        throw new Error(`image is ${hr.width}x${hr.height}, smaller than the scale ×${scale}`);
      }
      const cropped = Image.modcrop(hr, scale);
      if (cropped.width !== lr.width * scale || cropped.height !== lr.height * scale) {
        throw new Error(
          `HR is ${hr.width}x${hr.height} (${cropped.width}x${cropped.height} cropped to a ` +
            `multiple of ${scale}) but its LR file ${lrFile} is ${lr.width}x${lr.height}; ` +
            `expected ${cropped.width / scale}x${cropped.height / scale}`,
        );
      }
      return { file: hrFile, hr: cropped, lr };
    },
    catch: (e) => ({ file: hrFile, reason: reasonOf(e) }),
  });

/** Options of {@link load}. */
export interface LoadOptions {
  /** The set's name in tables (default: from the folder, see {@link layout}). */
  readonly name?: string;
  /** An explicit LR folder (default: found by {@link layout}). */
  readonly lr?: string;
  /** Progress: called before each image is read. */
  readonly onImage?: (i: number, n: number, file: string) => void;
  /** Called for each image left out (to print a warning as it happens). */
  readonly onProblem?: (p: Problem) => void;
}

/**
 * Loads an evaluation set at `scale` from a folder (any layout of the module doc) or
 * `embedded`. Bad images are left out and listed in `problems`; the load fails only when the
 * folder cannot be read or no image at all is usable.
 *
 * @example
 * ```ts ignore
 * const set5 = await Effect.runPromise(Benchmark.load("benchmark/Set5", 4));
 * const scores = await Effect.runPromise(Evaluate.evaluate(model, params, set5));
 * ```
 */
export const load = (
  dir: string,
  scale: number,
  opts: LoadOptions = {},
): Effect.Effect<Benchmark, Data.DatasetError> =>
  Effect.gen(function* () {
    if (!(Number.isInteger(scale) && scale >= 1)) {
      return yield* Effect.fail(
        new Data.DatasetError({ path: dir, reason: `scale must be a positive integer` }),
      );
    }
    const found = yield* layout(dir, scale);
    const lrDir = opts.lr ?? found.lr;
    const pairs: Data.Pair[] = [];
    const problems: Problem[] = [];
    // Symlinks are followed; one that cannot be (dangling, to a folder) is a problem too.
    const skip = (file: string, reason: string) => {
      problems.push({ file, reason });
      opts.onProblem?.({ file, reason });
    };
    const files = yield* Data.listImages(found.hr, skip);
    const lrFiles = lrDir ? yield* Data.listImages(lrDir, skip) : [];
    for (const [i, file] of files.entries()) {
      opts.onImage?.(i, files.length, file);
      let pair: Effect.Effect<Data.Pair, Problem>;
      if (lrDir) {
        const lrFile = matchLr(file, lrFiles, scale);
        pair = lrFile ? pairWithLr(file, lrFile, scale) : Effect.fail({
          file,
          reason: `no LR image ${stem(file)}x${scale}.png or ${stem(file)}.png in ${lrDir}`,
        });
      } else {
        pair = Data.pairOf(file, scale).pipe(
          Effect.mapError((e) => ({ file, reason: e.reason })),
        );
      }
      const r = yield* Effect.result(pair);
      if (r._tag === "Success") pairs.push(r.success);
      else {
        problems.push(r.failure);
        opts.onProblem?.(r.failure);
      }
    }
    if (pairs.length === 0) {
      return yield* Effect.fail(
        new Data.DatasetError({
          path: dir,
          reason: `no usable image:\n${problems.map((p) => `  ${p.file}: ${p.reason}`).join("\n")}`,
        }),
      );
    }
    return { name: opts.name ?? found.name, scale, pairs, hr: found.hr, lr: lrDir, problems };
  });

/** The project's embedded evaluation images (`data/eval`) as the set "embedded". */
export const embedded = (scale: number, opts: LoadOptions = {}) => load(EMBEDDED, scale, opts);

/** A problem as one line: `<file>: <reason>`. */
export const describe = (p: Problem): string => `${p.file}: ${p.reason}`;
