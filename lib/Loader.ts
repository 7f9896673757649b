/**
 * The streaming training loader: a folder of training images as a `Data.Source`, whose
 * batches are cut from images read as they are needed, with memory bounded by a cache size.
 *
 * Today's in-memory `Data.load` holds every HR image and its LR copy: fine for the embedded
 * photographs, about 7 GB and minutes of bicubic work for DIV2K (800 images of ~2040×1356)
 * before the first step. Here the images' sizes come from their file headers, so opening a
 * folder costs no decoding, and each batch's patches are drawn by `Data.plan` from those sizes
 * exactly as `Data.batch` draws them from images in memory: batch `k` depends only on the
 * listing, the options and `k`, and a resumed run continues with the same batches.
 *
 * Where the pixels come from, per image:
 * - a prepared copy (`Prepare`, `deno task prepare`), when its stamps match the source: each
 *   patch is one read of the rows it covers, nothing is decoded;
 * - otherwise the source file, decoded by a pool of workers (with the dataset's own LR file
 *   where the layout has one, else the MATLAB bicubic), into a cache of at most `cacheMiB`.
 *   Because every future batch is known, the cache drops the image needed again the latest
 *   (Belady's rule) instead of the least recently used one.
 * Batches are assembled `prefetch` ahead of the one training consumes, so reads and decodes
 * run while the model steps. At the end of each stream one `data:` line says how long the
 * consumer waited for batches.
 *
 * Layouts (`Benchmark.layout`): `DIV2K_train_HR` / `DIV2K_valid_HR` (with
 * `DIV2K_*_LR_bicubic/X<s>` beside them when present), `<set>/HR` with `<set>/LR_bicubic/X<s>`,
 * a flat folder of HR images, and a prepared folder itself (its `prepared.json` names the
 * source; the source may even be gone).
 *
 * @module
 */
import { Effect, Stream } from "effect";
import * as z from "zod";
import * as Benchmark from "./Benchmark.ts";
import * as Data from "./Data.ts";
import * as Prepare from "./Prepare.ts";
import * as ImageSize from "./internal/imageSize.ts";
import * as Ppm from "./internal/ppm.ts";
import { JobFailed, Pool } from "./internal/workers.ts";

/** Options of {@link open}. */
export const Options = z.object({
  /** The set's name in messages (default: the folder). */
  name: z.string().optional(),
  /**
   * Most memory for decoded images, in MiB (default 1024, or `QAT_DATA_CACHE_MIB`). Batches
   * being assembled keep their images even beyond it (at most `prefetch` batches' worth).
   */
  cacheMiB: z.number().positive().optional(),
  /** Decoding workers (default: half the cores, 1 to 4, or `QAT_DATA_WORKERS`). */
  workers: z.number().int().positive().optional(),
  /** Batches assembled ahead of the one being consumed (default 4). */
  prefetch: z.number().int().positive().optional(),
}).strict();
export type Options = z.input<typeof Options>;

/** The loader's settings from the environment (`QAT_DATA_CACHE_MIB`, `QAT_DATA_WORKERS`). */
export function fromEnv(env: Readonly<Record<string, string | undefined>> = Deno.env.toObject()) {
  const parse = (name: string, schema: z.ZodType<number>) => {
    const v = env[name];
    if (v === undefined || v === "") return undefined;
    const r = schema.safeParse(Number(v));
    if (!r.success) throw new Error(`${name}=${v}: ${r.error.issues[0].message}`);
    return r.data;
  };
  return {
    cacheMiB: parse("QAT_DATA_CACHE_MIB", z.number().positive()),
    workers: parse("QAT_DATA_WORKERS", z.number().int().positive()),
  };
}

const DEFAULT_CACHE_MIB = 1024;
const DEFAULT_PREFETCH = 4;
const defaultWorkers = () =>
  Math.max(1, Math.min(4, Math.floor((navigator.hardwareConcurrency || 2) / 2)));

/** Where one image's prepared pixels are: a PPM file, its row width and first-pixel offset. */
interface Raw {
  readonly path: string;
  readonly width: number;
  readonly offset: number;
}

/** One image of a streamed set. */
interface Entry {
  readonly file: string;
  /** The dataset's own LR file (decoded instead of the bicubic). */
  readonly lrFile?: string;
  /** The LR size (the HR one, cropped to a multiple of the scale, is `scale` times it). */
  readonly lr: Data.Size;
  /** The prepared copies, when they are current. */
  readonly raw?: { readonly hr: Raw; readonly lr: Raw };
}

/** What a stream did, for its `data:` line (and the benchmark). */
export interface Stats {
  readonly batches: number;
  /** Seconds the consumer waited for a batch that was not ready yet. */
  readonly waited: number;
  /** Seconds from the stream's start to its end. */
  readonly seconds: number;
  /** Patches read from prepared copies. */
  readonly reads: number;
  /** Images decoded, and patches served from images already decoded. */
  readonly decoded: number;
  readonly hits: number;
  /** The largest memory held by the source's decoded images so far, in bytes. */
  readonly peakBytes: number;
}

const trim = (p: string) => (p.length > 1 ? p.replace(/\/+$/, "") : p);
const baseName = (p: string) => trim(p).split("/").pop() ?? p;
const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const MiB = 2 ** 20;

const same = (a: Prepare.Stamp, b: Prepare.Stamp) => a.bytes === b.bytes && a.mtimeMs === b.mtimeMs;
const sameLr = (
  a: (Prepare.Stamp & { name: string }) | null,
  b: (Prepare.Stamp & { name: string }) | null,
) => (a === null || b === null ? a === b : a.name === b.name && same(a, b));

/** A prepared copy's location, if its file is there whole (size = header + pixels). */
async function rawOf(path: string, size: Data.Size, comment: string): Promise<Raw | undefined> {
  const offset = Ppm.header(size.width, size.height, comment).length;
  const st = await Deno.stat(path).catch(() => undefined);
  return st?.size === offset + size.width * size.height * 3
    ? { path, width: size.width, offset }
    : undefined;
}

/**
 * Opens a training folder at `scale` as a streamed source (see the module doc). Fails when the
 * folder cannot be read or holds no usable image; images that cannot be used (a header that
 * does not read, smaller than the scale, a missing or mismatched LR file, skipped by
 * `prepare`) are reported to `onSkip` and left out.
 */
export const open = (
  dir: string,
  scale: number,
  options: Options & {
    readonly log?: (line: string) => void;
    readonly onSkip?: Data.OnSkip;
    /** Receives each stream's {@link Stats} when it ends. */
    readonly onStats?: (s: Stats) => void;
  } = {},
): Effect.Effect<Data.Source, Data.DatasetError> =>
  Effect.gen(function* () {
    const { log, onSkip = Data.warnSkip, onStats, ...rest } = options;
    const fail = (reason: string) => Effect.fail(new Data.DatasetError({ path: dir, reason }));
    const parsed = Options.safeParse(rest);
    if (!parsed.success) return yield* fail(`loader options: ${z.prettifyError(parsed.error)}`);
    if (!(Number.isInteger(scale) && scale >= 1)) {
      return yield* fail(`scale must be a positive integer, got ${scale}`);
    }
    const io = <A>(path: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: f,
        catch: (e) => new Data.DatasetError({ path, reason: (e as Error).message }),
      });

    // The HR folder, its LR folder and the prepared folder, if any.
    let hrDir: string, lrDir: string | undefined, out: string | undefined;
    let manifest = yield* Prepare.readManifest(dir);
    if (manifest) {
      out = trim(dir);
      hrDir = manifest.source;
      const lr = manifest.scales[String(scale)]?.lr;
      lrDir = lr && lr !== "bicubic" ? lr : undefined;
      if (!manifest.scales[String(scale)]) {
        return yield* fail(
          `this prepared folder has no ×${scale} images (it has ×${
            Object.keys(manifest.scales).join(", ×") || "none"
          }): run deno task prepare ${hrDir} --scale ${scale} --out ${out}`,
        );
      }
    } else {
      const layout = yield* Benchmark.layout(dir, scale);
      hrDir = layout.hr;
      lrDir = layout.lr;
      const candidate = Prepare.defaultOut(layout.hr);
      const m = yield* Prepare.readManifest(candidate);
      const real = yield* io(layout.hr, () => Deno.realPath(layout.hr));
      if (m && m.source === real) {
        manifest = m;
        out = candidate;
      }
    }
    const section = manifest?.scales[String(scale)];
    const sourceHere = yield* io(hrDir, () => exists(hrDir));
    if (!sourceHere && !manifest) return yield* fail("not a folder");

    const files = sourceHere
      ? yield* Data.listImages(hrDir, onSkip)
      : Object.keys(section?.images ?? {}).sort().map((n) => `${trim(hrDir)}/${n}`);
    const lrFiles = lrDir && (yield* io(lrDir, () => exists(lrDir!)))
      ? yield* Data.listImages(lrDir, onSkip)
      : [];
    const entries: Entry[] = [];
    let skipped = 0;
    const skip = (file: string, reason: string) => {
      skipped++;
      onSkip(file, reason);
    };
    for (const file of files) {
      const name = baseName(file);
      const stamp = sourceHere
        ? yield* io(file, () => Prepare.stamp(file))
        : manifest!.images[name];
      const lrFile = lrDir ? Benchmark.matchLr(file, lrFiles, scale) : undefined;
      const lrStamp = lrFile
        ? { name: baseName(lrFile), ...(yield* io(lrFile, () => Prepare.stamp(lrFile))) }
        : null;
      // Prepared: every stamp the copies were made from still matches.
      const hrInfo = manifest?.images[name];
      const done = section?.images[name];
      const current = out && hrInfo && done && same(stamp, hrInfo) && same(stamp, done.hr) &&
        (sourceHere ? sameLr(lrStamp, done.lr) : true);
      if (current) {
        const hr = { width: hrInfo.width, height: hrInfo.height };
        const lr = { width: Math.floor(hr.width / scale), height: Math.floor(hr.height / scale) };
        const own = done.lr ? { name: done.lr.name, stamp: done.lr } : undefined;
        const hrRaw = yield* io(
          out!,
          () => rawOf(Prepare.hrPath(out!, name), hr, Prepare.hrComment(name, stamp)),
        );
        const lrRaw = yield* io(out!, () =>
          rawOf(
            Prepare.lrPath(out!, name, scale),
            lr,
            Prepare.lrComment(name, stamp, scale, own),
          ));
        if (hrRaw && lrRaw && lr.width >= 1 && lr.height >= 1) {
          entries.push({ file, lrFile, lr, raw: { hr: hrRaw, lr: lrRaw } });
          continue;
        }
      }
      const gone = section?.skipped[name];
      if (gone && same(stamp, gone)) {
        skip(file, `${gone.reason} (found by deno task prepare)`);
        continue;
      }
      if (!sourceHere) {
        skip(file, `not prepared in ${out}, and its source folder ${hrDir} is gone`);
        continue;
      }
      // Not prepared: the sizes from the headers, checked as `Data.pairOf` will check them.
      const size = yield* Effect.result(io(file, () => ImageSize.read(file)));
      if (size._tag === "Failure") {
        skip(file, size.failure.reason);
        continue;
      }
      const hr = size.success;
      if (hr.width < scale || hr.height < scale) {
        skip(file, `image is ${hr.width}x${hr.height}, smaller than the scale ×${scale}`);
        continue;
      }
      const lr = { width: Math.floor(hr.width / scale), height: Math.floor(hr.height / scale) };
      if (lrDir) {
        if (!lrFile) {
          const st = name.replace(/\.[^.]*$/, "");
          skip(file, `no LR image ${st}x${scale}.png or ${st}.png in ${lrDir}`);
          continue;
        }
        const own = yield* Effect.result(io(lrFile, () => ImageSize.read(lrFile)));
        if (own._tag === "Failure") {
          skip(file, `its LR file ${lrFile}: ${own.failure.reason}`);
          continue;
        }
        if (own.success.width !== lr.width || own.success.height !== lr.height) {
          skip(file, Data.lrMismatch(hr, scale, lrFile, own.success));
          continue;
        }
      }
      entries.push({ file, lrFile, lr });
    }
    if (entries.length === 0) {
      return yield* fail(`no usable image${skipped ? ` (${skipped} skipped)` : ""}`);
    }

    const settings = {
      cacheBytes: (parsed.data.cacheMiB ?? DEFAULT_CACHE_MIB) * MiB,
      workers: parsed.data.workers ?? defaultWorkers(),
      prefetch: parsed.data.prefetch ?? DEFAULT_PREFETCH,
    };
    const raw = entries.filter((e) => e.raw).length;
    const decode = entries.length - raw;
    if (log) {
      const pairBytes = entries.reduce(
        (n, e) => (e.raw ? n : n + e.lr.width * e.lr.height * 3 * (1 + scale * scale)),
        0,
      );
      log(
        `training images: ${entries.length} in ${trim(hrDir)}` +
          (raw ? `, ${raw} prepared in ${out}` : "") +
          (decode
            ? `, ${decode} decoded on demand (${settings.workers} worker${
              settings.workers > 1 ? "s" : ""
            }, cache ${Math.round(settings.cacheBytes / MiB)} MiB)`
            : "") +
          (skipped ? `, ${skipped} skipped` : ""),
      );
      if (decode && pairBytes > settings.cacheBytes) {
        log(
          `  these images (${Math.round(pairBytes / MiB)} MiB decoded) do not fit the cache: ` +
            `each is decoded again and again; \`deno task prepare ${
              trim(hrDir)
            } --scale ${scale}\`` +
            " makes their patches a read each",
        );
      }
    }
    const name = parsed.data.name ?? trim(dir);
    const cache = new Cache(settings.cacheBytes);
    return {
      name,
      scale,
      files: entries.map((e) => e.file),
      sizes: entries.map((e) => e.lr),
      batches: (opts, start, end) =>
        Stream.fromAsyncIterable(
          {
            [Symbol.asyncIterator]: () =>
              iterate(entries, name, scale, settings, cache, opts, start, end, (s) => {
                onStats?.(s);
                log?.(describe(s));
              }),
          },
          (e) =>
            e instanceof Data.DatasetError
              ? e
              : new Data.DatasetError({ path: name, reason: (e as Error).message }),
        ),
    } satisfies Data.Source;
  });

/** The `data:` line of a stream. */
export function describe(s: Stats): string {
  const pct = s.seconds > 0 ? (100 * s.waited) / s.seconds : 0;
  return `data: ${s.batches} batches in ${s.seconds.toFixed(1)} s, waited ${
    s.waited.toFixed(2)
  } s for them (${pct.toFixed(1)}%)` +
    (s.reads ? `; ${s.reads} patches read from prepared copies` : "") +
    (s.decoded
      ? `; ${s.decoded} images decoded, ${s.hits} patches from decoded ones, cache peak ${
        Math.round(s.peakBytes / MiB)
      } MiB`
      : "");
}

/** A decoded image in the cache; `pins` counts batches being assembled from it. */
interface Slot {
  readonly promise: Promise<Data.Pair>;
  pair?: Data.Pair;
  pins: number;
}

const pairBytes = (p: Data.Pair) => p.hr.data.byteLength + p.lr.data.byteLength;

/**
 * The decoded images of one source, shared by its streams (calibration's batches then
 * training's reuse them): at most `capacity` bytes, except for images pinned by batches being
 * assembled. The stream running says which images it needs next ({@link Cache.future}).
 */
class Cache {
  readonly slots = new Map<number, Slot>();
  held = 0;
  peak = 0;
  /** For each of `images`, the first batch index it is needed at (absent: not soon). */
  future: (images: Set<number>) => Map<number, number> = () => new Map();
  constructor(readonly capacity: number) {}

  /** Evicts unpinned images, the one needed again latest first (Belady), until it fits. */
  evict(): void {
    while (this.held > this.capacity) {
      const candidates = [...this.slots].filter(([, s]) => s.pins === 0 && s.pair);
      if (candidates.length === 0) return; // all in use by batches being assembled
      const next = this.future(new Set(candidates.map(([i]) => i)));
      let victim = candidates[0][0], far = -1;
      for (const [i] of candidates) {
        const at = next.get(i) ?? Infinity;
        if (at > far) [victim, far] = [i, at];
      }
      this.held -= pairBytes(this.slots.get(victim)!.pair!);
      this.slots.delete(victim);
    }
  }

  /** Adds a decoded image (already in `slots`), then evicts what no longer fits. */
  filled(slot: Slot, pair: Data.Pair): void {
    slot.pair = pair;
    this.held += pairBytes(pair);
    this.peak = Math.max(this.peak, this.held);
    this.evict();
  }

  release(image: number): void {
    const s = this.slots.get(image);
    if (s) s.pins--;
    this.evict();
  }
}

/** The batches `start … end − 1`, `prefetch` assembled ahead; `done` gets the stats at the end. */
async function* iterate(
  entries: ReadonlyArray<Entry>,
  name: string,
  scale: number,
  settings: { readonly cacheBytes: number; readonly workers: number; readonly prefetch: number },
  cache: Cache,
  opts: Data.BatchOptions,
  start: number,
  end: number,
  done: (s: Stats) => void,
): AsyncGenerator<Data.Batch> {
  const began = performance.now();
  const sizes = entries.map((e) => e.lr);
  const plans = new Map<number, Data.Cut[]>();
  const planOf = (k: number) => {
    let p = plans.get(k);
    if (!p) plans.set(k, p = Data.plan(name, sizes, opts, k));
    return p;
  };
  // Batches being assembled pin their images; keep that within the cache where possible.
  const worstBatch = opts.batch *
    Math.max(0, ...entries.filter((e) => !e.raw).map((e) => e.lr.width * e.lr.height * 3)) *
    (1 + scale * scale);
  const depth = Math.max(
    1,
    Math.min(
      settings.prefetch,
      worstBatch > 0 ? Math.floor(settings.cacheBytes / worstBatch) : settings.prefetch,
    ),
  );
  let pool: Pool | undefined;
  let decoded = 0, hits = 0, reads = 0, waited = 0, count = 0;
  let launched = start; // batches before it are assembled or being assembled
  cache.future = (wanted) => {
    // Far enough to rank the candidates; beyond it "not needed soon" ties at Infinity.
    const next = new Map<number, number>();
    for (let k = launched; k < Math.min(end, launched + 4096) && wanted.size > 0; k++) {
      for (const c of planOf(k)) if (wanted.delete(c.image)) next.set(c.image, k);
    }
    return next;
  };

  const acquire = (image: number): Promise<Data.Pair> => {
    const hit = cache.slots.get(image);
    if (hit) {
      hit.pins++;
      hits++;
      return hit.promise;
    }
    const e = entries[image];
    pool ??= new Pool(settings.workers);
    const slot: Slot = {
      pins: 1,
      promise: pool.run<Data.Pair>({ kind: "pair", file: e.file, lrFile: e.lrFile, scale }).then(
        (p) => {
          const pair = { file: e.file, hr: p.hr, lr: p.lr };
          decoded++;
          cache.filled(slot, pair);
          return pair;
        },
        (err) => {
          cache.slots.delete(image);
          throw new Data.DatasetError({
            path: e.file,
            reason: (err instanceof JobFailed ? err.message : String(err)) +
              "; `deno task prepare` names and skips such files",
          });
        },
      ),
    };
    cache.slots.set(image, slot);
    return slot.promise;
  };
  const release = (image: number) => cache.release(image);

  const rows = async (r: Raw, y: number, n: number, file: string): Promise<Data.Rows> => {
    try {
      return { width: r.width, data: await Ppm.readRows(r.path, r, y, n), top: y };
    } catch (e) {
      throw new Data.DatasetError({
        path: file,
        reason: `its prepared copy ${r.path}: ${(e as Error).message}`,
      });
    }
  };

  const assemble = async (k: number): Promise<Data.Batch> => {
    const cuts = planOf(k);
    const b = Data.allocate(opts, scale, k);
    const p = opts.patch, hp = p * scale;
    // Pin the decoded images first (synchronously), so that no eviction drops them meanwhile.
    const pairs = cuts.map((c) => (entries[c.image].raw ? undefined : acquire(c.image)));
    try {
      await Promise.all(cuts.map(async (c, n) => {
        const e = entries[c.image];
        if (e.raw) {
          const [lr, hr] = await Promise.all([
            rows(e.raw.lr, c.y, p, e.file),
            rows(e.raw.hr, c.y * scale, hp, e.file),
          ]);
          reads++;
          Data.put(b, n, c, lr, hr);
        } else {
          const pair = await pairs[n]!;
          Data.put(b, n, c, pair.lr, pair.hr);
        }
      }));
    } finally {
      for (const [n, c] of cuts.entries()) if (pairs[n]) release(c.image);
      plans.delete(k);
    }
    return b;
  };

  const inflight = new Map<number, Promise<Data.Batch>>();
  try {
    for (let k = start; k < end; k++) {
      for (; launched < Math.min(end, k + depth); launched++) {
        const promise = assemble(launched);
        promise.catch(() => {}); // awaited in its turn; a failure ahead must not go unhandled
        inflight.set(launched, promise);
      }
      const t0 = performance.now();
      const b = await inflight.get(k)!;
      inflight.delete(k);
      waited += performance.now() - t0;
      count++;
      yield b;
    }
  } finally {
    pool?.close();
    done({
      batches: count,
      waited: waited / 1000,
      seconds: (performance.now() - began) / 1000,
      reads,
      decoded,
      hits,
      peakBytes: cache.peak,
    });
  }
}
