/**
 * `deno task eval [--checkpoint <dir or file>]… [--model <name> --pretrained]… [--data <folder>]…
 * [--scale S] [--ssim same|valid] [--save DIR] [--json]`
 *
 * Evaluates models on benchmark sets the way SR papers do (SPEC §8) and prints a Markdown table
 * in the papers' layout: one row per model (plus the Bicubic reference), PSNR/SSIM on Y per set.
 *
 * - `--checkpoint` rebuilds the model from the recipe stored in the checkpoint (architecture,
 *   scale, quantization scheme) and loads its parameters; a folder means `<dir>/checkpoint.bin`.
 * - `--model esrgan-slim|esrgan-medium --pretrained` evaluates the npm packages' FP32 weights.
 * - `--data` names a Set5 / Set14 / B100 / Urban100 / DIV2K-valid folder (see `Benchmark`);
 *   repeat it for several sets. Default: the embedded evaluation images (`embedded`).
 * - `--scale` defaults to the checkpoint's scale, else 4.
 * - `--save DIR` writes every SR output as `DIR/<model>/<set>/<image>.png`.
 * - `--json` prints `{"rows": [{"model", "sets": {<set>: {"psnr", "ssim"}}}], …}` and nothing
 *   else on stdout; progress and warnings go to stderr.
 *
 * Images that cannot be used (corrupt, smaller than the scale, HR/LR mismatch) are reported as
 * warnings naming the file and left out; the rest of the set is evaluated. Images of any size
 * work (tiled where they do not fit the adapter, lib/Tile.ts). An image whose upscaling fails is
 * named and the rest is scored; an output that is constant or far below bicubic is flagged and
 * its set gets no score (`⚠ flagged` in the table, `null` in JSON). The exit code is 2 when any
 * image failed or was flagged, 0 otherwise.
 *
 * @module
 */
import { Data as EffectData, Effect } from "effect";
import * as z from "zod";
import * as Backend from "../Backend.ts";
import * as Benchmark from "../Benchmark.ts";
import * as Checkpoint from "../Checkpoint.ts";
import * as Evaluate from "../Evaluate.ts";
import * as Image from "../Image.ts";
import type * as Nn from "../Nn.ts";
import * as Pretrained from "../Pretrained.ts";
import * as Recipe from "../Recipe.ts";
import * as Tree from "../Tree.ts";
import type { Params } from "../Tree.ts";
import * as Registry from "../../models/registry.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const many = <T extends z.ZodType>(t: T) =>
  z.union([t, z.array(t)]).optional().transform((v) =>
    v === undefined ? [] : Array.isArray(v) ? v : [v]
  );

const Options = z.object({
  checkpoint: many(z.string()),
  model: many(z.enum(["esrgan-slim", "esrgan-medium", "edsr", "rdn"])),
  pretrained: z.literal(true).optional(),
  data: many(z.string()),
  scale: z.enum(["2", "3", "4"]).transform(Number).optional(),
  ssim: z.enum(["same", "valid"]).default("same"),
  save: z.string().optional(),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task eval [--checkpoint <dir or checkpoint.bin>]… \
[--model <esrgan-slim|esrgan-medium> --pretrained]…
                       [--data <folder>]… [--scale S] [--ssim same|valid] [--save DIR] [--json]
  --checkpoint  a training run's folder or checkpoint file (model rebuilt from its recipe)
  --model       a pretrained network (with --pretrained; only the esrgan packages ship weights)
  --data        an evaluation set folder (Set5/HR, Set5 with LR_bicubic/X4, DIV2K_valid_HR, or a
                flat folder of HR images); repeatable; default: the embedded images
  --scale       2, 3 or 4 (default: the checkpoint's, else 4)
  --ssim        SSIM border: same (default) or valid (MATLAB ssim_index)
  --save        write the SR images to DIR/<model>/<set>/<image>.png
  --json        print the results as JSON on stdout (progress on stderr)`;

/** Options that cannot work together. */
export class EvalOptionsInvalid extends EffectData.TaggedError("EvalOptionsInvalid")<{
  readonly reason: string;
}> {
  override get message(): string {
    return this.reason;
  }
}

/** One row of the table. */
export interface Row {
  readonly model: string;
  /** Weight / activation bits ("–" for Bicubic). */
  readonly wbits: number | null;
  readonly abits: number | null;
  readonly sets: Record<string, SetScore>;
}

/** One model's result on one set. */
export interface SetScore {
  /** Means over the scored images; NaN (null in JSON) when an output was flagged. */
  readonly psnr: number;
  readonly ssim: number;
  readonly images: number;
  readonly failed: ReadonlyArray<Evaluate.Problem>;
  readonly flagged: ReadonlyArray<Evaluate.Problem>;
}

const setScore = (s: Evaluate.Scores): SetScore => ({
  psnr: s.psnr,
  ssim: s.ssim,
  images: s.images.length,
  failed: s.failed,
  flagged: s.flagged,
});

/** What `--json` prints. */
export interface Report {
  readonly scale: number;
  readonly ssim: "same" | "valid";
  readonly rows: ReadonlyArray<Row>;
  readonly warnings: ReadonlyArray<{ readonly set: string; readonly file: string; reason: string }>;
}

/** A model ready to evaluate. */
interface Candidate {
  readonly label: string;
  readonly wbits: number;
  readonly abits: number;
  readonly load: () => Effect.Effect<
    { readonly model: Nn.AnyLayer; readonly params: Params; readonly step?: number },
    unknown
  >;
}

/** A checkpoint file: a folder means `<dir>/checkpoint.bin`. */
const checkpointFile = (p: string): Promise<string> =>
  Deno.stat(p).then(
    (s) => (s.isDirectory ? `${p.replace(/\/+$/, "")}/checkpoint.bin` : p),
    () => p,
  );

/** The model of a checkpoint, rebuilt from its recipe, with the checkpoint's parameters. */
const fromCheckpoint = (file: string, c: Checkpoint.Contents, recipe: Recipe.Recipe) =>
  Effect.gen(function* () {
    // Only the architecture: the parameters come from the checkpoint.
    const built = Registry.architecture(recipe.model);
    const model = Registry.quantize(recipe, built);
    const init = Tree.flatten(model.init(recipe.train.seed));
    const mismatch = Checkpoint.check(file, c.params, init);
    for (const t of init.values()) t.dispose();
    if (mismatch) return yield* Effect.fail(mismatch);
    return { model: model as Nn.AnyLayer, params: Tree.unflatten(c.params), step: c.step };
  });

const fmtScore = (s: SetScore | undefined) =>
  !s
    ? "–"
    : s.flagged.length > 0
    ? `⚠ flagged (${s.flagged.length} of ${s.images})`
    : s.images === 0
    ? "⚠ failed"
    : `${s.psnr.toFixed(2)} / ${s.ssim.toFixed(4)}${
      s.failed.length ? ` (${s.failed.length} failed)` : ""
    }`;

/** The Markdown table of a report (the papers' layout: PSNR / SSIM per set). */
export function table(r: Report, sets: ReadonlyArray<string>): string {
  const bits = (row: Row) => (row.wbits === null ? "–" : `${row.wbits}/${row.abits}`);
  return [
    `| Method (×${r.scale}) | W/A | ${sets.join(" | ")} |`,
    `|---|---|${sets.map(() => "---").join("|")}|`,
    ...r.rows.map((row) =>
      `| ${row.model} | ${bits(row)} | ${sets.map((s) => fmtScore(row.sets[s])).join(" | ")} |`
    ),
  ].join("\n");
}

const safeName = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, "_");
const fileStem = (f: string) => (f.split("/").pop() ?? f).replace(/\.[^.]+$/, "");

/** The whole `eval` task as an Effect program; returns the report. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const opts = Args.parse(Options, argv, ["pretrained", "json", "help"]);
    if (opts.help) {
      console.log(USAGE);
      return undefined;
    }
    const json = opts.json === true;
    const log = (line: string) => (json ? console.error(line) : console.log(line));
    const fail = (reason: string) => Effect.fail(new EvalOptionsInvalid({ reason }));
    for (const m of opts.model) {
      if (m === "edsr" || m === "rdn") {
        return yield* fail(
          `no pretrained weights ship for --model ${m}; evaluate a trained ${m} with --checkpoint`,
        );
      }
    }
    if (opts.model.length > 0 && !opts.pretrained) {
      return yield* fail(
        `--model ${opts.model[0]} needs --pretrained (random weights are not worth evaluating)`,
      );
    }
    if (opts.pretrained && opts.model.length === 0) {
      return yield* fail("--pretrained needs --model esrgan-slim or esrgan-medium");
    }

    // Checkpoints first: they fix the scale.
    const checkpoints: Array<{ file: string; c: Checkpoint.Contents; recipe: Recipe.Recipe }> = [];
    for (const p of opts.checkpoint) {
      const file = yield* Effect.promise(() => checkpointFile(p));
      const c = yield* Checkpoint.read(file);
      for (const t of c.opt.values()) t.dispose();
      // The stored recipe: a built-in method by name, one of yours from its recipe module.
      const recipe = yield* Effect.tryPromise({
        try: () => Recipe.fromJSON(c.recipe, `${file} (stored recipe)`),
        catch: (e) => e as Recipe.RecipeInvalid | Recipe.MethodUnavailable,
      });
      checkpoints.push({ file, c, recipe });
    }
    const scale = opts.scale ?? checkpoints[0]?.recipe.model.scale ?? 4;
    for (const { file, recipe } of checkpoints) {
      if (recipe.model.scale !== scale) {
        return yield* fail(
          `checkpoint ${file} is a ×${recipe.model.scale} model, but the scale is ×${scale}`,
        );
      }
    }

    const backend = yield* Backend.Backend;
    if (json) console.error(`backend: ${backend.name} (${backend.adapter})`);

    // The sets.
    const warnings: Array<{ set: string; file: string; reason: string }> = [];
    const sets: Benchmark.Benchmark[] = [];
    for (const d of opts.data.length > 0 ? opts.data : [Benchmark.EMBEDDED]) {
      const found = yield* Benchmark.layout(d, scale);
      let name = found.name;
      for (let k = 2; sets.some((s) => s.name === name); k++) name = `${found.name}#${k}`;
      log(
        `loading ${name}: HR ${found.hr}, LR ${found.lr ?? `bicubic ×${scale} of the HR images`}`,
      );
      const set = yield* Benchmark.load(d, scale, {
        name,
        onImage: (i, n, f) =>
          n > 10 && i % 10 === 0 ? log(`  ${name} ${i + 1}/${n} ${f.split("/").pop()}`) : undefined,
        onProblem: (p) => console.error(`warning: ${name}: ${Benchmark.describe(p)}; left out`),
      });
      for (const p of set.problems) warnings.push({ set: name, ...p });
      log(
        `  ${set.pairs.length} images${
          set.problems.length ? `, ${set.problems.length} left out` : ""
        }`,
      );
      sets.push(set);
    }

    // The models.
    const candidates: Candidate[] = [];
    const labels = new Set<string>();
    const unique = (label: string, detail: string) => {
      const l = labels.has(label) ? `${label} (${detail})` : label;
      labels.add(l);
      return l;
    };
    for (const { file, c, recipe } of checkpoints) {
      candidates.push({
        label: unique(recipe.name, file),
        wbits: recipe.quant.wbits,
        abits: recipe.quant.abits,
        load: () => fromCheckpoint(file, c, recipe),
      });
    }
    for (const m of opts.model) {
      const name = m as Pretrained.Name;
      candidates.push({
        label: unique(`${name} (pretrained)`, String(candidates.length)),
        wbits: 32,
        abits: 32,
        load: () =>
          Effect.tryPromise({
            try: () => Pretrained.load(name, scale as Pretrained.Scale),
            catch: (e) => e,
          }),
      });
    }

    const rows: Row[] = [];
    const progress =
      (label: string, set: string) => (i: number, n: number, s: Evaluate.ImageScore) =>
        log(
          `  ${label} | ${set} ${i + 1}/${n} ${s.file.split("/").pop()}: ` +
            `${s.psnr.toFixed(2)} dB, SSIM ${s.ssim.toFixed(4)}`,
        );
    const bicubic: Row = { model: "Bicubic", wbits: null, abits: null, sets: {} };
    for (const set of sets) {
      const s = yield* Evaluate.bicubic(set, {
        ssim: opts.ssim,
        onImage: progress("Bicubic", set.name),
      });
      bicubic.sets[set.name] = setScore(s);
    }
    rows.push(bicubic);
    for (const cand of candidates) {
      log(`evaluating ${cand.label}`);
      const { model, params, step } = yield* cand.load();
      const row: Row = { model: cand.label, wbits: cand.wbits, abits: cand.abits, sets: {} };
      try {
        for (const set of sets) {
          const dir = opts.save ? `${opts.save}/${safeName(cand.label)}/${safeName(set.name)}` : "";
          if (opts.save) yield* Effect.promise(() => Deno.mkdir(dir, { recursive: true }));
          const s = yield* Evaluate.evaluate(model, params, set, {
            ssim: opts.ssim,
            step: step ?? 0, // the checkpoint's training step (DDTB's gates are used past stage 1)
            onImage: progress(cand.label, set.name),
            onFailure: (file, reason) =>
              console.error(`warning: ${cand.label} | ${set.name}: ${file}: ${reason}; left out`),
            onPlan: (p) => {
              if (p.tiles.length > 1 && !p.exact) {
                console.error(`warning: ${cand.label}: tiles may differ at seams: ${p.note}`);
              }
            },
            onOutput: opts.save
              ? (file, sr) => Effect.promise(() => Image.write(`${dir}/${fileStem(file)}.png`, sr))
              : undefined,
          });
          row.sets[set.name] = setScore(s);
          for (const line of Evaluate.problems(s)) log(`  ${cand.label} | ${set.name}: ${line}`);
        }
      } finally {
        Tree.dispose(params);
      }
      rows.push(row);
    }

    const report: Report = { scale, ssim: opts.ssim, rows, warnings };
    if (json) {
      console.log(JSON.stringify(report));
      return report;
    }
    console.log("");
    console.log(
      `PSNR (dB) / SSIM on Y, ${scale} pixels shaved, SSIM "${opts.ssim}"; ` +
        sets.map((s) => `${s.name}: ${s.pairs.length} images`).join(", "),
    );
    console.log("");
    console.log(table(report, sets.map((s) => s.name)));
    if (warnings.length > 0) {
      console.log(`\n${warnings.length} image(s) left out:`);
      for (const w of warnings) console.log(`  ${w.set}: ${w.file}: ${w.reason}`);
    }
    const bad = rows.flatMap((row) =>
      Object.entries(row.sets).flatMap(([set, v]) =>
        [
          ...v.failed.map((p) => ["failed", p] as const),
          ...v.flagged.map((p) => ["flagged", p] as const),
        ]
          .map(([what, p]) => `  ${row.model} | ${set}: ${p.file}: ${what}: ${p.reason}`)
      )
    );
    if (bad.length > 0) console.log(`\n${bad.length} image(s) not scored:\n${bad.join("\n")}`);
    if (opts.save) console.log(`\nSR images written to ${opts.save}/`);
    return report;
  });

/** 2 when some image failed or was flagged (the table says which), else 0. */
export const exitCode = (r: Report | undefined): number =>
  r?.rows.some((row) =>
      Object.values(row.sets).some((s) => s.failed.length > 0 || s.flagged.length > 0)
    )
    ? 2
    : 0;

if (import.meta.main) {
  await Main.run(program(Deno.args), { log: !Deno.args.includes("--json") }, { exitCode });
}
