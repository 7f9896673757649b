/**
 * Prepared training folders: every HR image of a folder and its MATLAB-bicubic LR copy
 * (SPEC §7, {@link Resize.downscale}) made once, in a form a training run reads patches from
 * without decoding anything.
 *
 * Training cuts small random patches (LR 48×48) from large photographs (DIV2K: 800 of about
 * 2040×1356). From PNG files each patch would cost a whole decode and, without LR files, a
 * whole-image bicubic (together 0.80 s an image in bench/data.ts); BasicSR's
 * scripts/data_preparation/extract_subimages.py cuts the images into 480×480 PNG sub-images for
 * the same reason, but a patch then still costs two decodes (HR and LR sub-image). So the
 * prepared copies are binary PPM files (`internal/ppm.ts`): a patch is one read of the rows it
 * covers, which bench/data.ts measured at 55 ms against 122 ms for the two sub-image decodes in
 * the same loop (a 2-core machine at load 20: both inflated, the ratio is the point). And
 * patches are drawn over whole images exactly as from images in memory, so batches do not
 * change when a folder is prepared (sub-images would change them).
 *
 * A prepared folder (default: `<HR folder>_prepared` beside the HR folder):
 * ```
 * prepared.json          what was made from what (see {@link Manifest})
 * HR/<stem>.ppm          the HR image as decoded (shared by every scale)
 * X<s>/<stem>x<s>.ppm    its LR image at scale s: bicubic of the HR image cropped to a multiple
 *                        of s, or the dataset's own LR file (DIV2K_train_LR_bicubic/X4/0001x4.png)
 * ```
 * Each file's header comment records its sources (name, size, modification time), and files
 * are written atomically (a temporary file renamed), so an interrupted `prepare` continues
 * where it stopped: a file that exists and matches its sources is kept. Images that cannot be
 * used (corrupt, smaller than the scale, without or with a mismatched LR file) are named,
 * skipped and recorded, so that runs leave them out too.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Benchmark from "./Benchmark.ts";
import * as Data from "./Data.ts";
import * as Ppm from "./internal/ppm.ts";
import { Pool } from "./internal/workers.ts";
import type { PrepareJob } from "./internal/image_worker.ts";

/** The manifest's file name in a prepared folder. */
export const MANIFEST = "prepared.json";

const trim = (p: string) => (p.length > 1 ? p.replace(/\/+$/, "") : p);
const baseName = (p: string) => trim(p).split("/").pop() ?? p;
const stemOf = (name: string) => baseName(name).replace(/\.[^.]*$/, "");

/** The prepared folder a run looks for beside an HR folder: `<HR folder>_prepared`. */
export const defaultOut = (hrDir: string): string => `${trim(hrDir)}_prepared`;

/** Where the prepared HR copy of source image `name` is. */
export const hrPath = (out: string, name: string): string => `${out}/HR/${stemOf(name)}.ppm`;

/** Where the prepared LR copy of source image `name` at `scale` is. */
export const lrPath = (out: string, name: string, scale: number): string =>
  `${out}/X${scale}/${stemOf(name)}x${scale}.ppm`;

/** A file's identity for staleness checks: its size and modification time. */
export interface Stamp {
  readonly bytes: number;
  readonly mtimeMs: number;
}

/** The stamp of a file (follows symlinks). */
export const stamp = async (path: string): Promise<Stamp> => {
  const s = await Deno.stat(path);
  return { bytes: s.size, mtimeMs: s.mtime?.getTime() ?? 0 };
};

/** The header comment of a prepared HR copy: its source and the source's stamp. */
export const hrComment = (name: string, s: Stamp): string =>
  `qat-sr HR of ${name} ${s.bytes} ${s.mtimeMs}`;

/** The header comment of a prepared LR copy: scale, HR source and where the LR came from. */
export const lrComment = (
  name: string,
  s: Stamp,
  scale: number,
  own?: { readonly name: string; readonly stamp: Stamp },
): string =>
  `qat-sr X${scale} of ${name} ${s.bytes} ${s.mtimeMs} from ` +
  (own ? `${own.name} ${own.stamp.bytes} ${own.stamp.mtimeMs}` : "bicubic");

const StampSchema = z.object({ bytes: z.number().int().nonnegative(), mtimeMs: z.number() });

/**
 * What a prepared folder holds: the source HR folder; each HR copy's size and its source's
 * stamp; per scale, where the LR images came from (`bicubic` or the LR folder), each prepared
 * image with the stamps it was made from (the HR source, and its own LR file or null) and each
 * skipped one with its reason. A run uses an image's copies only while every stamp still
 * matches its source.
 */
export const Manifest = z.object({
  format: z.literal("qat-sr prepared"),
  version: z.literal(1),
  source: z.string().min(1),
  images: z.record(
    z.string(),
    StampSchema.extend({ width: z.number().int().positive(), height: z.number().int().positive() }),
  ),
  scales: z.record(
    z.string().regex(/^[1-9]\d*$/),
    z.object({
      lr: z.string().min(1),
      images: z.record(
        z.string(),
        z.object({ hr: StampSchema, lr: StampSchema.extend({ name: z.string() }).nullable() }),
      ),
      skipped: z.record(z.string(), StampSchema.extend({ reason: z.string() })),
    }),
  ),
});
export type Manifest = z.infer<typeof Manifest>;

/** Reads a prepared folder's manifest: undefined when there is none; invalid → named error. */
export const readManifest = (
  out: string,
): Effect.Effect<Manifest | undefined, Data.DatasetError> =>
  Effect.tryPromise({
    try: async () => {
      const file = `${trim(out)}/${MANIFEST}`;
      let text: string;
      try {
        text = await Deno.readTextFile(file);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
          return undefined;
        }
        throw e;
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new Error(`${file} is not JSON (${(e as Error).message})`);
      }
      const r = Manifest.safeParse(json);
      if (!r.success) {
        throw new Error(`${file} is not a prepared-folder manifest:\n${z.prettifyError(r.error)}`);
      }
      return r.data;
    },
    catch: (e) => new Data.DatasetError({ path: out, reason: (e as Error).message }),
  });

const writeJson = async (path: string, value: unknown) => {
  await Deno.writeTextFile(`${path}.tmp`, JSON.stringify(value, null, 1) + "\n");
  await Deno.rename(`${path}.tmp`, path);
};

/** Options of {@link prepare}. */
export const Options = z.object({
  scale: z.number().int().positive(),
  /** The prepared folder (default: {@link defaultOut} of the HR folder). */
  out: z.string().min(1).optional(),
  /** Workers decoding and resizing in parallel (default: one per core). */
  workers: z.number().int().positive().optional(),
}).strict();

/** Progress of {@link prepare}, after each image. */
export interface Progress {
  readonly done: number;
  readonly total: number;
  readonly file: string;
  /** Images whose files were made in this call (the others were already prepared). */
  readonly made: number;
  readonly seconds: number;
}

/** What {@link prepare} did. */
export interface Result {
  readonly out: string;
  /** The HR folder as found from the argument (`Set5` → `Set5/HR`). */
  readonly hr: string;
  readonly source: string;
  readonly scale: number;
  readonly total: number;
  /** Images made in this call. */
  readonly made: number;
  /** Images already prepared (kept). */
  readonly kept: number;
  /** Images left out, each naming its file. */
  readonly skipped: ReadonlyArray<Benchmark.Problem>;
  readonly seconds: number;
}

/**
 * Prepares the HR folder `dir` (any layout `Benchmark.layout` knows: `DIV2K_train_HR` with an
 * optional `DIV2K_train_LR_bicubic/X<s>` beside it, `<set>/HR` with `LR_bicubic/X<s>`, a flat
 * folder) at one scale into `out`. Fails only when the folder cannot be read or `out` holds
 * another folder's preparation; bad images are skipped and reported.
 */
export const prepare = (
  dir: string,
  options: z.input<typeof Options>,
  hooks: {
    readonly onProgress?: (p: Progress) => void;
    readonly onSkip?: (p: Benchmark.Problem) => void;
  } = {},
): Effect.Effect<Result, Data.DatasetError> =>
  Effect.gen(function* () {
    const started = performance.now();
    const parsed = Options.safeParse(options);
    if (!parsed.success) {
      return yield* Effect.fail(
        new Data.DatasetError({
          path: dir,
          reason: `prepare options: ${z.prettifyError(parsed.error)}`,
        }),
      );
    }
    const { scale } = parsed.data;
    const fail = (path: string, reason: string) =>
      Effect.fail(new Data.DatasetError({ path, reason }));
    if ((yield* readManifest(dir)) !== undefined) {
      return yield* fail(dir, "this is a prepared folder: prepare its source HR folder instead");
    }
    const layout = yield* Benchmark.layout(dir, scale);
    const io = <A>(path: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: f,
        catch: (e) => new Data.DatasetError({ path, reason: (e as Error).message }),
      });
    const source = yield* io(layout.hr, () => Deno.realPath(layout.hr));
    const lrDir = layout.lr ? yield* io(layout.lr, () => Deno.realPath(layout.lr!)) : undefined;
    const out = trim(parsed.data.out ?? defaultOut(layout.hr));
    const old = yield* readManifest(out);
    if (old && old.source !== source) {
      return yield* fail(
        out,
        `it holds the preparation of ${old.source}, not of ${source}: give another --out`,
      );
    }
    for (const sub of ["HR", `X${scale}`]) {
      yield* io(`${out}/${sub}`, () => Deno.mkdir(`${out}/${sub}`, { recursive: true }));
    }

    const skipped: Benchmark.Problem[] = [];
    const skippedStamps: Record<string, Stamp & { reason: string }> = {};
    const skip = (file: string, reason: string, s?: Stamp) => {
      skipped.push({ file, reason });
      if (s) skippedStamps[baseName(file)] = { ...s, reason };
      hooks.onSkip?.({ file, reason });
    };
    const files = yield* Data.listImages(layout.hr, (f, why) => skip(f, why));
    const lrFiles = layout.lr ? yield* Data.listImages(layout.lr, (f, why) => skip(f, why)) : [];

    // Decide per image what is missing; files that exist and match their sources are kept.
    const images: Manifest["images"] = {};
    const prepared: Manifest["scales"][string]["images"] = {};
    const jobs: Array<
      {
        file: string;
        name: string;
        stamp: Stamp;
        lr: (Stamp & { name: string }) | null;
        job: PrepareJob;
      }
    > = [];
    const stems = new Map<string, string>();
    let kept = 0;
    for (const file of files) {
      const name = baseName(file);
      const st = stemOf(name);
      if (stems.has(st)) {
        skip(file, `same name stem as ${stems.get(st)}: their prepared files would collide`);
        continue;
      }
      stems.set(st, name);
      const s = yield* io(file, () => stamp(file));
      let own: { name: string; stamp: Stamp } | undefined;
      let lrFile: string | undefined;
      if (layout.lr) {
        lrFile = Benchmark.matchLr(file, lrFiles, scale);
        if (!lrFile) {
          skip(file, `no LR image ${st}x${scale}.png or ${st}.png in ${layout.lr}`, s);
          continue;
        }
        own = { name: baseName(lrFile), stamp: yield* io(lrFile, () => stamp(lrFile!)) };
      }
      const hrOut = hrPath(out, name), lrOut = lrPath(out, name, scale);
      const hrC = hrComment(name, s), lrC = lrComment(name, s, scale, own);
      const hrHead = yield* io(hrOut, () => Ppm.readHeader(hrOut));
      const lrHead = yield* io(lrOut, () => Ppm.readHeader(lrOut));
      const hrOk = hrHead?.comment === hrC;
      const lrOk = lrHead?.comment === lrC;
      if (hrOk && lrOk) {
        kept++;
        images[name] = { ...s, width: hrHead!.width, height: hrHead!.height };
        prepared[name] = { hr: s, lr: own ? { name: own.name, ...own.stamp } : null };
        continue;
      }
      jobs.push({
        file,
        name,
        stamp: s,
        lr: own ? { name: own.name, ...own.stamp } : null,
        job: {
          kind: "prepare",
          file,
          lrFile,
          scale,
          hrFrom: hrOk ? hrOut : undefined,
          hr: hrOk ? undefined : { path: hrOut, comment: hrC },
          lr: lrOk ? undefined : { path: lrOut, comment: lrC },
        },
      });
    }

    // The work, in parallel; a worker's failure skips its image, naming it.
    const total = files.length;
    let done = kept, made = 0, stopping = false;
    const size = Math.max(
      1,
      Math.min(parsed.data.workers ?? navigator.hardwareConcurrency, jobs.length),
    );
    if (jobs.length > 0) {
      yield* Effect.acquireUseRelease(
        Effect.sync(() => new Pool(size)),
        (pool) =>
          Effect.promise(() =>
            Promise.all(jobs.map(async (j) => {
              try {
                const r = await pool.run<{ width: number; height: number }>(j.job);
                images[j.name] = { ...j.stamp, ...r };
                prepared[j.name] = { hr: j.stamp, lr: j.lr };
                made++;
              } catch (e) {
                if (stopping) return; // interrupted: the pool's close rejected the rest
                skip(j.file, (e as Error).message, j.stamp);
              }
              done++;
              hooks.onProgress?.({
                done,
                total,
                file: j.file,
                made,
                seconds: (performance.now() - started) / 1000,
              });
            }))
          ),
        (pool) =>
          Effect.sync(() => {
            stopping = true;
            pool.close();
          }),
      );
    }

    // The manifest: this scale replaced, other scales kept (their images' HR entries too).
    const manifest: Manifest = {
      format: "qat-sr prepared",
      version: 1,
      source,
      images: { ...(old?.images ?? {}), ...images },
      scales: {
        ...(old?.scales ?? {}),
        [String(scale)]: { lr: lrDir ?? "bicubic", images: prepared, skipped: skippedStamps },
      },
    };
    yield* io(`${out}/${MANIFEST}`, () => writeJson(`${out}/${MANIFEST}`, manifest));
    return {
      out,
      hr: layout.hr,
      source,
      scale,
      total,
      made,
      kept,
      skipped,
      seconds: (performance.now() - started) / 1000,
    };
  });
