/**
 * The worker that decodes and prepares training images off the main thread, so that PNG
 * decoding and the MATLAB bicubic (≈0.8 s of CPU for one 2040×1356 photograph) overlap with
 * training instead of stalling it. Jobs (see {@link Job}) come from `workers.ts`'s pool; each
 * reply carries its job's `id`, pixels are transferred, not copied.
 *
 * @module
 */
import { Cause, Effect, Exit } from "effect";
import * as Data from "../Data.ts";
import * as Image from "../Image.ts";
import * as Resize from "../Resize.ts";
import * as Ppm from "./ppm.ts";

/** Decode one HR image (and its own LR file) into a pair, as `Data.pairOf` does. */
export interface PairJob {
  readonly kind: "pair";
  readonly file: string;
  readonly lrFile?: string;
  readonly scale: number;
}

/**
 * Make the prepared files of one image: `hr` (the whole HR image as read, so that every
 * scale shares it) and `lr` (at `scale`: bicubic of the HR image cropped to a multiple of the
 * scale, or the dataset's own `lrFile`), each only when given. The HR pixels come from
 * `hrFrom` (an HR file already prepared, faster than decoding) or the source `file`.
 */
export interface PrepareJob {
  readonly kind: "prepare";
  readonly file: string;
  readonly lrFile?: string;
  readonly scale: number;
  readonly hrFrom?: string;
  readonly hr?: { readonly path: string; readonly comment: string };
  readonly lr?: { readonly path: string; readonly comment: string };
}

export type Job = PairJob | PrepareJob;

/** A reply: the job's result, or why it failed (the reason names the file where it can). */
export type Reply =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly id: number; readonly ok: false; readonly reason: string };

/** Pixels that own their buffer whole, so that it can be transferred. */
const own = (img: Image.Image): Image.Image =>
  img.data.byteOffset === 0 && img.data.byteLength === img.data.buffer.byteLength
    ? img
    : { ...img, data: img.data.slice() };

const reasonOf = (e: unknown) =>
  e instanceof Image.ImageDecodeError ? e.reason : e instanceof Error ? e.message : String(e);

async function readPpm(path: string): Promise<Image.Image> {
  const h = await Ppm.readHeader(path);
  if (!h) throw new Error(`${path} is not a whole PPM file`);
  return Image.make(h.width, h.height, await Ppm.readRows(path, h, 0, h.height));
}

async function prepare(job: PrepareJob): Promise<{ width: number; height: number }> {
  const img = job.hrFrom ? await readPpm(job.hrFrom) : await Image.read(job.file);
  if (job.hr) await Ppm.write(job.hr.path, img, job.hr.comment);
  if (job.lr) {
    const s = job.scale;
    if (img.width < s || img.height < s) {
      throw new Error(`image is ${img.width}x${img.height}, smaller than the scale ×${s}`);
    }
    const hr = Image.modcrop(img, s);
    let lr: Image.Image;
    if (job.lrFile) {
      lr = await Image.read(job.lrFile);
      if (lr.width * s !== hr.width || lr.height * s !== hr.height) {
        throw new Error(Data.lrMismatch(img, s, job.lrFile, lr));
      }
    } else lr = Resize.downscale(hr, s);
    await Ppm.write(job.lr.path, lr, job.lr.comment);
  }
  return { width: img.width, height: img.height };
}

const post = (reply: Reply, transfer: Transferable[] = []) =>
  (self as unknown as Worker).postMessage(reply, transfer);

self.onmessage = async (e: MessageEvent<{ id: number; job: Job }>) => {
  const { id, job } = e.data;
  try {
    if (job.kind === "pair") {
      const exit = await Effect.runPromiseExit(Data.pairOf(job.file, job.scale, job.lrFile));
      if (Exit.isFailure(exit)) {
        return post({ id, ok: false, reason: reasonOf(Cause.squash(exit.cause)) });
      }
      const hr = own(exit.value.hr), lr = own(exit.value.lr);
      post({ id, ok: true, result: { hr, lr } }, [hr.data.buffer, lr.data.buffer]);
    } else {
      post({ id, ok: true, result: await prepare(job) });
    }
  } catch (err) {
    post({ id, ok: false, reason: reasonOf(err) });
  }
};
