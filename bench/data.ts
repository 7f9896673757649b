/**
 * The data side of training on a DIV2K-sized folder (issue 14), measured on a synthetic one.
 *
 * DIV2K's training set is 800 photographs of about 2040×1356 (Agustsson & Timofte, NTIRE 2017);
 * loading it the way the embedded photographs are loaded would hold ~7 GB of pixels. This
 * benchmark builds such a folder itself, in a temporary folder deleted at the end, from the
 * embedded photographs (`bench/_synth_worker.ts`: each image mirror-tiled from its own offset,
 * so that every image differs and PNG decoding costs what it costs on photographs; one in ten is
 * portrait, as in DIV2K), then measures, each in a process of its own so that peak RSS
 * (`VmHWM`, /proc/<pid>/status) is that process's alone:
 *
 * 1. data side only (no backend, no model): `--steps` batches of the default recipe's batch,
 *    patch and seed, from the embedded data (today's in-memory `Data.load` and the streaming
 *    `Loader.open`), from the big folder decoded on demand (before it is prepared: the loader's
 *    decode cache, default 1024 MiB, is what bounds memory) and from the prepared folder (a
 *    patch is one read, `Prepare`), with prefetch 1 so that the time per batch is the loader's
 *    whole cost, not hidden behind other work;
 * 2. `deno task prepare` of the big folder (`Prepare.prepare`), timed;
 * 3. real training runs (`lib/cli/train.ts`) of the default recipe cut to `--steps` steps
 *    (logged every step, so the first step's time is visible; one evaluation image) on the
 *    embedded data and on the prepared big folder: peak RSS, time from the process start to
 *    the first step's metrics line, the median step, and the share of the training stream the
 *    step waited for batches (the loader's `data:` line).
 *
 * Then the acceptance: peak RSS of the big run ≤ 2 GiB above the embedded run, time to
 * the first step with a prepared folder ≤ 30 s, the loader's share of a step ≤ 5 %.
 *
 *   deno task bench:data [--images 800] [--width 2040] [--height 1356] [--steps 50]
 *                        [--workers N] [--no-unprepared] [--no-train] [--keep]
 *
 * `--keep` leaves the temporary folder (its path is printed). Disk: ≈ 9.5 GB at the defaults
 * (PNG files 2.4 GB, prepared copies 7.05 GB). Time on the shared 2-core CPU machine: 39 min,
 * 27 of them making (17) and preparing (11) the folder. `--images 16 --no-unprepared
 * --no-train` is a two-minute look at the per-patch costs alone.
 *
 * @module
 */
import { Effect, Stream } from "effect";
import * as z from "zod";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Loader from "../lib/Loader.ts";
import * as Prepare from "../lib/Prepare.ts";
import * as Ppm from "../lib/internal/ppm.ts";
import * as Args from "../lib/cli/Args.ts";
import base from "../recipes/default.ts";

const Options = z.object({
  images: z.coerce.number().int().positive().default(800),
  width: z.coerce.number().int().min(64).default(2040),
  height: z.coerce.number().int().min(64).default(1356),
  steps: z.coerce.number().int().min(2).default(50),
  workers: z.coerce.number().int().positive().optional(),
  "no-unprepared": z.literal(true).optional(),
  "no-train": z.literal(true).optional(),
  keep: z.literal(true).optional(),
  child: z.string().optional(),
}).strict();
const BOOLEANS = ["no-unprepared", "no-train", "keep"];

/** One data-side measurement, run in a child process (`--child <json>`). */
const Child = z.object({
  kind: z.enum(["memory", "stream"]),
  dir: z.string().min(1),
  scale: z.number().int().positive(),
  batch: z.number().int().positive(),
  patch: z.number().int().positive(),
  seed: z.number().int(),
  steps: z.number().int().positive(),
  prefetch: z.number().int().positive().optional(),
}).strict();
type Child = z.infer<typeof Child>;

/** What a child reports (its last stdout line). */
interface ChildResult {
  readonly openS: number;
  readonly firstBatchS: number;
  readonly totalS: number;
  /** Seconds per batch after the first. */
  readonly perBatchS: number;
  readonly hwmMiB: number;
  readonly log: string[];
}

const signed = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(0)}`;
const root = new URL("../", import.meta.url).pathname;

/** Peak resident memory of a process in MiB (`VmHWM`), undefined once it is gone. */
function hwm(pid: number | "self"): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(
      Deno.readTextFileSync(`/proc/${pid}/status`),
    );
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)];
};

async function child(spec: Child): Promise<void> {
  const log: string[] = [];
  const t0 = performance.now();
  const opts = { batch: spec.batch, patch: spec.patch, seed: spec.seed };
  const src: Data.Training = spec.kind === "memory"
    ? await Effect.runPromise(Data.load(spec.dir, spec.scale))
    : await Effect.runPromise(
      Loader.open(spec.dir, spec.scale, {
        prefetch: spec.prefetch,
        log: (l) => log.push(l),
      }),
    );
  const opened = performance.now();
  let first: number | undefined;
  await Effect.runPromise(
    Stream.runForEach(
      Data.stream(src, opts, 0, spec.steps),
      () => Effect.sync(() => (first ??= performance.now())),
    ),
  );
  const end = performance.now();
  const result: ChildResult = {
    openS: (opened - t0) / 1000,
    firstBatchS: (first! - t0) / 1000,
    totalS: (end - t0) / 1000,
    perBatchS: (end - first!) / 1000 / Math.max(1, spec.steps - 1),
    hwmMiB: hwm("self") ?? NaN,
    log,
  };
  console.log(JSON.stringify(result));
}

/** Runs a data-side measurement in a fresh process. */
async function measure(spec: Child): Promise<ChildResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--child",
      JSON.stringify(spec),
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (out.code !== 0) {
    throw new Error(
      `data-side child (${spec.kind} ${spec.dir}) exited ${out.code}:\n${text}\n` +
        new TextDecoder().decode(out.stderr),
    );
  }
  return JSON.parse(text.split("\n").pop()!);
}

/** Makes `n` synthetic DIV2K-sized photographs as `dir/0001.png …`, in parallel workers. */
async function synthesize(
  dir: string,
  o: z.infer<typeof Options>,
  workers: number,
) {
  await Deno.mkdir(dir, { recursive: true });
  const photos = (await Array.fromAsync(Deno.readDir(Data.embedded.train)))
    .filter((e) => /\.(png|jpe?g)$/i.test(e.name))
    .map((e) => `${Data.embedded.train}${e.name}`)
    .sort();
  const script = new URL("./_synth_worker.ts", import.meta.url).href;
  let next = 0, done = 0;
  const started = performance.now();
  const one = (w: Worker): Promise<void> => {
    const k = next++;
    if (k >= o.images) return Promise.resolve();
    const portrait = k % 10 === 9; // DIV2K holds portrait photographs too
    const job = {
      photo: photos[k % photos.length],
      out: `${dir}/${String(k + 1).padStart(4, "0")}.png`,
      width: portrait ? o.height : o.width,
      height: portrait ? o.width : o.height,
      key: k,
    };
    return new Promise<void>((resolve, reject) => {
      w.onmessage = (e: MessageEvent<{ ok: boolean; reason?: string }>) =>
        e.data.ok ? resolve() : reject(new Error(`${job.out}: ${e.data.reason}`));
      w.onerror = (e) => reject(new Error(`${job.out}: ${e.message}`));
      w.postMessage(job);
    }).then(() => {
      done++;
      if (
        done % Math.max(1, Math.floor(o.images / 10)) === 0 || done === o.images
      ) {
        const s = (performance.now() - started) / 1000;
        console.log(`  made ${done}/${o.images} images (${s.toFixed(0)} s)`);
      }
      return one(w);
    });
  };
  const pool = Array.from(
    { length: workers },
    () => new Worker(script, { type: "module" }),
  );
  try {
    await Promise.all(pool.map(one));
  } finally {
    for (const w of pool) w.terminate();
  }
  return (performance.now() - started) / 1000;
}

/** What a training run showed. */
interface RunResult {
  readonly firstStepS: number;
  readonly peakMiB: number;
  readonly medianStepS: number;
  /** The training stream's `data:` line. */
  readonly dataLine: string;
  readonly waitedPct: number;
}

/** A training run of the default recipe cut to `steps` on `train`, watched from outside. */
async function train(
  tmp: string,
  tag: string,
  trainDir: string,
  steps: number,
) {
  const recipe = `${tmp}/recipe-${tag}.ts`;
  await Deno.writeTextFile(
    recipe,
    `import * as Recipe from "${new URL("../lib/Recipe.ts", import.meta.url).href}";\n` +
      `import base from "${new URL("../recipes/default.ts", import.meta.url).href}";\n` +
      `export default Recipe.make({ ...base, name: "bench-data-${tag}", train: { ...base.train, ` +
      `steps: ${steps}, logEvery: 1, checkpointEvery: ${steps} }, data: { ...base.data, ` +
      `train: ${JSON.stringify(trainDir)}, evalImages: 1 } });\n`,
  );
  const out = `${tmp}/run-${tag}`;
  const started = performance.now();
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/train.ts", "--recipe", recipe, "--out", out],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const text = (s: ReadableStream<Uint8Array>) => new Response(s).text();
  const [stdout, stderr] = [text(proc.stdout), text(proc.stderr)];
  let peak = 0, firstStep: number | undefined, exited = false;
  const status = proc.status.then((s) => {
    exited = true;
    return s;
  });
  while (!exited) {
    peak = Math.max(peak, hwm(proc.pid) ?? 0);
    if (firstStep === undefined) {
      const m = await Deno.readTextFile(`${out}/metrics.jsonl`).catch(() => "");
      if (m.trim() !== "") firstStep = (performance.now() - started) / 1000;
    }
    await Promise.race([status, new Promise((r) => setTimeout(r, 100))]);
  }
  const s = await status;
  const log = (await stdout) + (await stderr);
  if (!s.success) {
    throw new Error(`training run ${tag} failed (exit ${s.code}):\n${log}`);
  }
  const secs = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split(
    "\n",
  )
    .map((l) => (JSON.parse(l) as { seconds: number }).seconds);
  const dataLines = log.split("\n").filter((l) => l.startsWith("data: "));
  const dataLine = dataLines.at(-1) ?? "(no data: line)";
  const pct = /\(([\d.]+)%\)/.exec(dataLine);
  return {
    firstStepS: firstStep ?? NaN,
    peakMiB: peak,
    // Steps 2…n: the first one compiles the shaders.
    medianStepS: median(secs.slice(1).map((x, i) => x - secs[i])),
    dataLine,
    waitedPct: pct ? Number(pct[1]) : NaN,
  } satisfies RunResult;
}

/**
 * The alternative to whole-image copies, measured: BasicSR's `extract_subimages.py`
 * (scripts/data_preparation) cuts DIV2K into 480×480 PNG sub-images (LR 120×120 at ×4), and a
 * patch then costs decoding one HR and one LR sub-image; from the prepared PPM copies it costs
 * reading the rows it covers. Mean milliseconds per patch over `n` prepared images.
 */
async function subimagesVsPpm(
  out: string,
  tmp: string,
  scale: number,
  patch: number,
  n: number,
) {
  const dir = `${tmp}/subimages`;
  await Deno.mkdir(dir, { recursive: true });
  const names = (await Array.fromAsync(Deno.readDir(`${out}/HR`)))
    .map((e) => e.name).filter((x) => x.endsWith(".ppm")).sort().slice(0, n);
  const crop = 480, hp = patch * scale;
  let decodeMs = 0, readMs = 0;
  for (const [k, name] of names.entries()) {
    const stem = name.replace(/\.ppm$/, "");
    const hrPath = `${out}/HR/${name}`,
      lrPath = `${out}/X${scale}/${stem}x${scale}.ppm`;
    const h = (await Ppm.readHeader(hrPath))!,
      l = (await Ppm.readHeader(lrPath))!;
    const hr = Image.make(
      h.width,
      h.height,
      await Ppm.readRows(hrPath, h, 0, h.height),
    );
    const lr = Image.make(
      l.width,
      l.height,
      await Ppm.readRows(lrPath, l, 0, l.height),
    );
    const hs = `${dir}/${stem}_s001.png`,
      ls = `${dir}/${stem}x${scale}_s001.png`;
    await Image.write(hs, Image.crop(hr, 0, 0, crop, crop));
    await Image.write(ls, Image.crop(lr, 0, 0, crop / scale, crop / scale));
    let t0 = performance.now();
    await Image.read(hs);
    await Image.read(ls);
    decodeMs += performance.now() - t0;
    const y = (k * 97) % (l.height - patch);
    t0 = performance.now();
    await Ppm.readRows(hrPath, h, y * scale, hp);
    await Ppm.readRows(lrPath, l, y, patch);
    readMs += performance.now() - t0;
  }
  return { subimageMs: decodeMs / names.length, ppmMs: readMs / names.length };
}

const du = async (dir: string) => {
  const out = await new Deno.Command("du", {
    args: ["-sb", dir],
    stdout: "piped",
  }).output();
  return Number(new TextDecoder().decode(out.stdout).split(/\s/)[0]) / 1e9;
};

async function main(o: z.infer<typeof Options>) {
  const scale = base.model.scale;
  const t = base.train;
  const workers = o.workers ?? navigator.hardwareConcurrency;
  const spec = {
    scale,
    batch: t.batch,
    patch: t.patch,
    seed: t.seed,
    steps: o.steps,
  };
  console.log(
    `default recipe: ×${scale}, batch ${t.batch}, patch ${t.patch}; ${o.steps} batches/steps; ` +
      `${o.images} images of ${o.width}×${o.height}`,
  );
  const tmp = await Deno.makeTempDir({ prefix: "qat-bench-data-" });
  const cleanup = () => {
    if (!o.keep) Deno.removeSync(tmp, { recursive: true });
  };
  const onSignal = () => {
    console.error(
      o.keep ? `\ninterrupted; kept ${tmp}` : `\ninterrupted; removing ${tmp}`,
    );
    cleanup();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    // DIV2K's own folder name, so that the layout is the one a user has.
    const hrDir = `${tmp}/DIV2K_train_HR`;
    console.log(`making the folder ${hrDir} (${workers} workers)`);
    const synthS = await synthesize(hrDir, o, workers);
    console.log(`  ${synthS.toFixed(0)} s, ${(await du(hrDir)).toFixed(2)} GB`);

    const rows: Array<[string, ChildResult]> = [];
    const row = async (label: string, s: Child) => {
      const r = await measure(s);
      rows.push([label, r]);
      console.log(
        `  ${label}: peak RSS ${r.hwmMiB.toFixed(0)} MiB, open ${r.openS.toFixed(2)} s, ` +
          `first batch ${r.firstBatchS.toFixed(2)} s, ${(1 / r.perBatchS).toFixed(1)} batches/s ` +
          `(${(1000 * r.perBatchS).toFixed(1)} ms each)`,
      );
      for (const l of r.log) console.log(`    ${l}`);
      return r;
    };
    console.log("data side only (one process each, prefetch 1):");
    const memEmb = await row("embedded, in memory (Data.load)", {
      ...spec,
      kind: "memory",
      dir: Data.embedded.train,
    });
    const strEmb = await row("embedded, streamed (Loader.open)", {
      ...spec,
      kind: "stream",
      dir: Data.embedded.train,
      prefetch: 1,
    });
    const unprep = o["no-unprepared"] ? undefined : await row(
      `${o.images} images, decoded on demand`,
      { ...spec, kind: "stream", dir: hrDir, prefetch: 1 },
    );

    console.log(`deno task prepare ${hrDir} --scale ${scale}`);
    let last = -1;
    const prep = await Effect.runPromise(
      Prepare.prepare(hrDir, { scale, workers }, {
        onProgress: (p) => {
          const tenth = Math.floor((10 * p.done) / p.total);
          if (tenth > last) {
            last = tenth;
            console.log(`  ${p.done}/${p.total} (${p.seconds.toFixed(0)} s)`);
          }
        },
      }),
    );
    console.log(
      `  prepared ${prep.total - prep.skipped.length} images in ${prep.seconds.toFixed(0)} s ` +
        `(${(prep.seconds / Math.max(1, prep.made)).toFixed(2)} s each), ` +
        `${(await du(prep.out)).toFixed(2)} GB in ${prep.out}`,
    );
    const prepared = await row(`${o.images} images, prepared`, {
      ...spec,
      kind: "stream",
      dir: hrDir,
      prefetch: 1,
    });

    const sub = await subimagesVsPpm(prep.out, tmp, scale, t.patch, 16);
    console.log(
      `  one patch from 480×480 PNG sub-images (BasicSR, HR + LR decoded): ${
        sub.subimageMs.toFixed(1)
      } ms; from the prepared copies (rows read): ${sub.ppmMs.toFixed(2)} ms`,
    );

    let runEmb: RunResult | undefined, runBig: RunResult | undefined;
    if (!o["no-train"]) {
      console.log(
        `training runs (lib/cli/train.ts, default recipe, ${o.steps} steps):`,
      );
      for (
        const [tag, dir] of [["embedded", "embedded"], [
          "prepared",
          hrDir,
        ]] as const
      ) {
        const r = await train(tmp, tag, dir, o.steps);
        console.log(
          `  ${tag}: peak RSS ${r.peakMiB.toFixed(0)} MiB, first step ${
            r.firstStepS.toFixed(1)
          } s after start, median step ${r.medianStepS.toFixed(3)} s\n    ${r.dataLine}`,
        );
        if (tag === "embedded") runEmb = r;
        else runBig = r;
      }
    }

    // The acceptance of issue 14.
    const check = (ok: boolean) => (ok ? "PASS" : "FAIL");
    console.log("\nacceptance:");
    const dataDelta = (r: ChildResult) => r.hwmMiB - memEmb.hwmMiB;
    if (runEmb && runBig) {
      const d = runBig.peakMiB - runEmb.peakMiB;
      console.log(
        `  peak RSS, ${o.steps}-step run: ${runBig.peakMiB.toFixed(0)} MiB vs ${
          runEmb.peakMiB.toFixed(0)
        } MiB embedded: ${signed(d)} MiB (≤ +2048) ${check(d <= 2048)}`,
      );
    }
    for (
      const [label, r] of [["prepared", prepared], [
        "decoded on demand",
        unprep,
      ]] as const
    ) {
      if (!r) continue;
      console.log(
        `  peak RSS, data side, ${label}: ${signed(dataDelta(r))} MiB vs the embedded ` +
          `data in memory (${signed(r.hwmMiB - strEmb.hwmMiB)} vs it streamed) ${
            check(dataDelta(r) <= 2048)
          }`,
      );
    }
    if (runBig) {
      // The rest of the wait (backend, model, evaluation, calibration) is the embedded run's
      // too: on a slow CPU it alone can pass 30 s, so the data's part is judged as well.
      const part = prepared.firstBatchS;
      console.log(
        `  time to the first step, prepared folder: ${runBig.firstStepS.toFixed(1)} s ` +
          `${check(runBig.firstStepS <= 30)} (the embedded run: ${
            runEmb!.firstStepS.toFixed(1)
          } s); the loader's part: open ${prepared.openS.toFixed(2)} s + first batch ${
            (prepared.firstBatchS - prepared.openS).toFixed(2)
          } s ${check(part <= 30)}`,
      );
      const serial = (100 * prepared.perBatchS) / runBig.medianStepS;
      console.log(
        `  loader's share of a step (batch ${t.batch}): waited ${
          runBig.waitedPct.toFixed(1)
        }% of the training stream; unhidden, a batch costs ${
          (1000 * prepared.perBatchS).toFixed(1)
        } ms = ${serial.toFixed(2)}% of the ${runBig.medianStepS.toFixed(3)} s step ${
          check(runBig.waitedPct <= 5)
        }`,
      );
    } else {
      console.log(
        `  time to the first batch, prepared folder: ${prepared.firstBatchS.toFixed(2)} s; ` +
          `a batch costs ${(1000 * prepared.perBatchS).toFixed(1)} ms (no training run: ` +
          "--no-train)",
      );
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    if (o.keep) console.log(`kept ${tmp}`);
    cleanup();
  }
}

if (import.meta.main) {
  const o = Args.parse(Options, Deno.args, BOOLEANS);
  if (o.child !== undefined) {
    const r = Child.safeParse(JSON.parse(o.child));
    if (!r.success) throw new Error(`--child: ${z.prettifyError(r.error)}`);
    await child(r.data);
  } else {
    await main(o);
  }
}
