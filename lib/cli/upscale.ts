/**
 * `deno task upscale <image or folder> --model <run folder | checkpoint | model.qsr.safetensors>
 * --out <file or folder> [--tile N] [--engine auto|int|float] [--json]`
 *
 * Super-resolves PNG or JPEG images of any size with a trained model (lib/Upscale.ts) and
 * writes PNGs: a file to `--out` (a file name, or a folder that gets `<name>.png`), a folder's
 * images to the `--out` folder. Large images run in overlapping tiles that reproduce the
 * whole-image output (lib/Tile.ts); `--tile N` caps a tile at N² LR pixels to bound memory.
 * A progress bar shows the tiles of each image on a terminal, plain lines otherwise. A file
 * that cannot be decoded (corrupt, not an image) or upscaled is named and the rest still run;
 * the exit code is 2 when any failed, 1 when nothing could start (bad options, model).
 *
 * @module
 */
import { Cause, Effect, Exit } from "effect";
import * as z from "zod";
import * as Engine from "../Engine.ts";
import * as Image from "../Image.ts";
import * as Tree from "../Tree.ts";
import * as Upscale from "../Upscale.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  model: z.string().min(1),
  out: z.string().min(1),
  tile: z.coerce.number().int().min(16).optional(),
  engine: z.enum(Engine.KINDS).optional(),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task upscale <image or folder> --model <run folder | checkpoint.bin | \
model.qsr.safetensors> --out <file or folder> [--tile N] [--engine auto|int|float] [--json]
  <image>   a PNG or JPEG file, or a folder of them (every file in it is tried)
  --model   a training run (or import/export) folder, checkpoint or packed file
  --out     output PNG file, or folder (created) for <name>.png
  --tile    cap each tile at N×N LR pixels (area), to bound memory (default: the adapter's limits)
  --engine  quantized convs on the integer kernels (int), the fake-quant float path (float), or
            integer where it is faster: 2- and 3-bit layers (auto, the default; lib/Engine.ts)
  --json    print {"images": [...], "failed": [...]} on stdout`;

/** One processed image. */
export interface Done {
  readonly file: string;
  readonly out: string;
  readonly width: number;
  readonly height: number;
  readonly tiles: number;
  readonly seconds: number;
}

/** What the task returns (and prints with `--json`). */
export interface Report {
  readonly model: string;
  readonly images: ReadonlyArray<Done>;
  readonly failed: ReadonlyArray<{ readonly file: string; readonly reason: string }>;
}

const stem = (f: string) => (f.split("/").pop() ?? f).replace(/\.[^.]+$/, "");
const isDir = (p: string) => Deno.stat(p).then((s) => s.isDirectory, () => false);

/** The (input, output) pairs of a run. */
async function jobs(input: string, out: string): Promise<Array<{ file: string; out: string }>> {
  if (await isDir(input)) {
    const files: string[] = [];
    for await (const e of Deno.readDir(input)) {
      if (e.name.startsWith(".")) continue;
      const p = `${input.replace(/\/+$/, "")}/${e.name}`;
      const s = await Deno.stat(p).catch(() => undefined);
      if (s?.isFile) files.push(p);
    }
    files.sort();
    await Deno.mkdir(out, { recursive: true });
    return files.map((f) => ({ file: f, out: `${out.replace(/\/+$/, "")}/${stem(f)}.png` }));
  }
  if (await isDir(out)) {
    return [{ file: input, out: `${out.replace(/\/+$/, "")}/${stem(input)}.png` }];
  }
  const dir = out.slice(0, out.lastIndexOf("/"));
  if (dir) await Deno.mkdir(dir, { recursive: true });
  return [{ file: input, out }];
}

const reasonOf = (cause: Cause.Cause<unknown>) => {
  const e = Cause.squash(cause);
  return e instanceof Error ? e.message : String(e);
};

/** A one-line progress bar on a terminal (stderr), nothing otherwise. */
function bar(enabled: boolean) {
  const enc = new TextEncoder();
  let shown = false;
  return {
    update(label: string, done: number, total: number) {
      if (!enabled) return;
      const width = 24;
      const full = Math.round((done / Math.max(1, total)) * width);
      const line = `\r${label} [${"#".repeat(full)}${
        "-".repeat(width - full)
      }] ${done}/${total} tiles`;
      Deno.stderr.writeSync(enc.encode(line + "\x1b[K"));
      shown = true;
    },
    clear() {
      if (enabled && shown) Deno.stderr.writeSync(enc.encode("\r\x1b[K"));
      shown = false;
    },
  };
}

/** The whole `upscale` task as an Effect program. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const input = argv.length > 0 && !argv[0].startsWith("--") ? argv[0] : undefined;
    const rest = input === undefined ? argv : argv.slice(1);
    if (rest.includes("--help") || input === undefined) {
      console.log(USAGE);
      if (input === undefined && !rest.includes("--help")) {
        return yield* Effect.fail(new Error("no input image or folder given"));
      }
      return undefined;
    }
    const opts = Args.parse(Options, rest, ["json", "help"]);
    const log = (s: string) => (opts.json ? console.error(s) : console.log(s));
    const exists = yield* Effect.promise(() => Deno.stat(input).then(() => true, () => false));
    if (!exists) return yield* Effect.fail(new Error(`${input}: no such file or folder`));
    const m = yield* Effect.tryPromise({
      try: () => Upscale.load(opts.model),
      catch: (e) => e as Error,
    });
    const r = m.recipe;
    log(
      `model: ${r.model.arch} ×${m.scale}, W${r.quant.wbits}A${r.quant.abits}, from ${m.source}` +
        (opts.tile ? `; tiles of at most ${opts.tile}×${opts.tile} LR pixels` : ""),
    );
    const engine = yield* Effect.promise(() => Engine.prepare(m, { kind: opts.engine ?? "auto" }));
    log(`engine: ${Engine.describe(engine)}`);
    const list = yield* Effect.promise(() => jobs(input, opts.out));
    const progress = bar(Deno.stderr.isTerminal() && !opts.json);
    const images: Done[] = [];
    const failed: Array<{ file: string; reason: string }> = [];
    try {
      for (const [i, job] of list.entries()) {
        const label = `[${i + 1}/${list.length}] ${job.file.split("/").pop()}`;
        const started = performance.now();
        const read = yield* Effect.exit(
          Effect.tryPromise({ try: () => Image.read(job.file), catch: (e) => e as Error }),
        );
        if (Exit.isFailure(read)) {
          failed.push({ file: job.file, reason: reasonOf(read.cause) });
          log(`${label}: failed: ${reasonOf(read.cause)}`);
          continue;
        }
        const img = read.value;
        let tiles = 1;
        let lastLine = -1;
        const sr = yield* Effect.exit(
          Upscale.upscale({ model: engine.model, params: m.params }, img, {
            tile: opts.tile,
            onTileRaised: (asked, used) => {
              if (i === 0) {
                console.error(
                  `warning: --tile ${asked} is below what this model's receptive field needs ` +
                    `for tiles to reproduce the whole image: using ${used}`,
                );
              }
            },
            onPlan: (p) => {
              tiles = p.tiles.length;
              if (p.tiles.length > 1 && !p.exact) {
                console.error(`warning: ${job.file}: tiles may differ at seams: ${p.note}`);
              }
            },
            onTile: (done, total) => {
              progress.update(label, done, total);
              // Without a terminal, a line at every tenth of a many-tile image.
              const tenth = Math.floor((done * 10) / total);
              if (!Deno.stderr.isTerminal() && total >= 10 && tenth > lastLine && done < total) {
                lastLine = tenth;
                console.error(`${label}: ${done}/${total} tiles`);
              }
            },
          }),
        );
        progress.clear();
        if (Exit.isFailure(sr)) {
          failed.push({ file: job.file, reason: reasonOf(sr.cause) });
          log(`${label}: failed: ${reasonOf(sr.cause)}`);
          continue;
        }
        const w = yield* Effect.exit(
          Effect.tryPromise({
            try: () => Image.write(job.out, sr.value),
            catch: (e) => e as Error,
          }),
        );
        if (Exit.isFailure(w)) {
          failed.push({ file: job.file, reason: `cannot write ${job.out}: ${reasonOf(w.cause)}` });
          log(`${label}: failed: cannot write ${job.out}: ${reasonOf(w.cause)}`);
          continue;
        }
        const seconds = (performance.now() - started) / 1000;
        images.push({
          file: job.file,
          out: job.out,
          width: img.width,
          height: img.height,
          tiles,
          seconds,
        });
        log(
          `${label}: ${img.width}×${img.height} → ${sr.value.width}×${sr.value.height}` +
            `${tiles > 1 ? ` in ${tiles} tiles` : ""}, ${seconds.toFixed(1)} s → ${job.out}`,
        );
      }
    } finally {
      engine.dispose();
      Tree.dispose(m.params);
    }
    const report: Report = { model: m.source, images, failed };
    if (opts.json) console.log(JSON.stringify(report));
    else {
      console.log(`upscaled ${images.length} of ${list.length} image(s)`);
      if (failed.length > 0) {
        console.log(`${failed.length} failed:`);
        for (const f of failed) console.log(`  ${f.file}: ${f.reason}`);
      }
    }
    return report;
  });

/** 2 when some image failed, else 0. */
export const exitCode = (r: Report | undefined): number => (r && r.failed.length > 0 ? 2 : 0);

if (import.meta.main) {
  await Main.run(program(Deno.args), { log: !Deno.args.includes("--json") }, { exitCode });
}
