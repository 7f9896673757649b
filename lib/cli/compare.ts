/**
 * `deno task compare [--methods odm,lsq,max,pams,daq,ddtb,recipe | --ablation]
 *   [--model esrgan-slim] [--scale 4] [--bits 4] [--steps N] [--out DIR] [--data DIR]
 *   [--train-data DIR] [--eval-data DIR] [--eval-images N] [--ssim valid|same]
 *   [--recipe <file or name>] [--json]`
 *
 * Trains every method (lib/methods/; `recipe` is the base recipe's own method, e.g. one of your
 * own) from one base recipe (default `recipes/default.ts`: pretrained esrgan-slim ×4) with the
 * same seed, data order and steps, each through `Train.run` into `<out>/<method>/`, and prints
 * one Markdown table in the layout of the ODM paper's tables: method, W/A, PSNR/SSIM on the eval
 * set (SSIM as the papers' tables: MATLAB `ssim_index`, `valid`), storage (K) and BitOPs (T)
 * for a 1920×1080 output (`Cost.of`, which charges each method's quantizers: their parameters,
 * DDTB's gates, DAQ's run-time statistics). Writes `<out>/compare.json` and `<out>/compare.md`.
 * `--ablation` runs Table 7 (a)–(e) and the global-cosine row (f) instead. An interrupted
 * comparison resumes: methods whose `summary.json` exists are read, not run again, and a
 * half-done one continues from its checkpoint. `--json` prints only `{"rows": [...]}` on stdout
 * (progress goes to stderr).
 *
 * @module
 */
import { Cause, Effect } from "effect";
import * as z from "zod";
import * as Backend from "../Backend.ts";
import type * as Method from "../Method.ts";
import * as Methods from "../methods/mod.ts";
import * as Cost from "../Cost.ts";
import * as Data from "../Data.ts";
import * as Loader from "../Loader.ts";
import * as Recipe from "../Recipe.ts";
import * as Report from "../Report.ts";
import * as Train from "../Train.ts";
import * as Tree from "../Tree.ts";
import * as Registry from "../../models/registry.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";
import { loadRecipe } from "./train.ts";

const Options = z.object({
  recipe: z.string().default("default"),
  model: z.enum(["edsr", "rdn", "srresnet", "swinir", "esrgan-slim", "esrgan-medium"]).optional(),
  scale: z.coerce.number().pipe(z.union([z.literal(2), z.literal(3), z.literal(4)])).optional(),
  bits: z.coerce.number().int().min(1).max(8).optional(),
  steps: Args.int.optional(),
  methods: z.string().default("odm,lsq,max,pams,daq,ddtb"),
  ablation: z.literal(true).optional(),
  out: z.string().default("runs/compare"),
  data: z.string().optional(),
  "train-data": z.string().optional(),
  "eval-data": z.string().optional(),
  "eval-images": z.coerce.number().int().positive().optional(),
  ssim: z.enum(["valid", "same"]).default("valid"),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task compare [options]
  --recipe       base recipe file or name under recipes/ (default: default)
  --model        architecture (default: the recipe's; esrgan-* are pretrained)
  --scale        2, 3 or 4 (default: the recipe's)
  --bits         weight and activation bits (default: the recipe's)
  --steps        training steps per method (default: the recipe's)
  --methods      comma list of ${Object.keys(Methods.comparison).join(",")}, and recipe
                 (the base recipe's own method) (default: all built-in ones)
  --ablation     run Table 7 (a)–(e) and (f), ODM with one global cosine, instead of --methods
  --out          output folder (default: runs/compare); each method in <out>/<method>/
  --data         folder of HR images for training and evaluation (default: the recipe's)
  --train-data   folder of HR training images (overrides --data)
  --eval-data    folder of HR evaluation images (overrides --data)
  --eval-images  evaluate on the first N images only
  --ssim         SSIM border: valid (default, MATLAB ssim_index as the papers) or same
  --json         print only {"rows": [...]} on stdout`;

/** One row of the comparison. */
export interface Row {
  readonly method: string;
  readonly label: string;
  readonly wbits: number;
  readonly abits: number;
  /** NaN (`null` in JSON) when an output was flagged; `flagged` says why. */
  readonly psnr: number;
  readonly ssim: number;
  readonly storageK: number;
  readonly bitopsT: number;
  readonly flagged?: string;
}

const flagOf = (s: Train.Score): { flagged?: string } =>
  s.flagged?.length ? { flagged: `${s.flagged[0].file}: ${s.flagged[0].reason}` } : {};

const score = (x: number | null, digits: number) =>
  typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";

/** The Markdown table, in the paper's layout. */
export function table(rows: ReadonlyArray<Row>, scale: number, evalName: string): string {
  return [
    `| method | W/A | PSNR (dB) ×${scale} ${evalName} | SSIM | storage (K) | BitOPs (T) |`,
    "|---|---|---|---|---|---|",
    ...rows.map((r) =>
      `| ${r.method}: ${r.label.replaceAll("|", "\\|")} | ${r.wbits}/${r.abits} | ${
        r.flagged ? "⚠ flagged" : score(r.psnr, 2)
      } | ${score(r.ssim, 4)} | ${r.storageK.toFixed(3)} | ${r.bitopsT.toFixed(2)} |`
    ),
  ].join("\n");
}

const exists = (f: string) =>
  Deno.stat(f).then(() => true, (e) => {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  });

/** The whole `compare` task as an Effect program; returns the rows. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const opts = Args.parse(Options, argv, ["ablation", "json", "help"]);
    if (opts.help) {
      console.log(USAGE);
      return [];
    }
    const say = opts.json ? (l: string) => console.error(l) : (l: string) => console.log(l);
    // The base recipe with the command-line overrides, validated before any work.
    const loaded = yield* Effect.promise(() => loadRecipe(opts.recipe));
    const b = loaded.recipe;
    const table_: Readonly<Record<string, Method.Method>> = opts.ablation
      ? Methods.ablation
      : { ...Methods.comparison, recipe: b.method };
    const keys = opts.ablation
      ? Object.keys(Methods.ablation)
      : opts.methods.split(",").map((m) => m.trim()).filter((m) => m !== "");
    const unknown = keys.filter((k) => !(k in table_));
    if (unknown.length > 0 || keys.length === 0) {
      throw new Error(
        `unknown method(s) ${unknown.join(", ")}; choose from ${Object.keys(table_).join(",")}`,
      );
    }
    const model = opts.model
      ? {
        ...b.model,
        arch: opts.model,
        pretrained: opts.model.startsWith("esrgan"),
        options: opts.model === b.model.arch ? b.model.options : {},
      }
      : b.model;
    const base = Recipe.parse({
      ...b,
      model: { ...model, scale: opts.scale ?? model.scale },
      quant: { ...b.quant, wbits: opts.bits ?? b.quant.wbits, abits: opts.bits ?? b.quant.abits },
      train: { ...b.train, steps: opts.steps ?? b.train.steps },
      data: {
        ...b.data,
        ...(opts.data ? { train: opts.data, eval: opts.data } : {}),
        ...(opts["train-data"] ? { train: opts["train-data"] } : {}),
        ...(opts["eval-data"] ? { eval: opts["eval-data"] } : {}),
        ...(opts["eval-images"] ? { evalImages: opts["eval-images"] } : {}),
      },
    }, "(compare base)");
    // Every method on the base recipe: same model, bits, schedule, data and seed.
    const recipes = keys.map((k) =>
      [
        k,
        Recipe.parse({
          ...base,
          name: `${base.name}-${k}`,
          method: table_[k],
          decisions: undefined,
        }, `(compare ${k})`),
      ] as const
    );
    const scale = base.model.scale;
    yield* Backend.Backend;
    yield* Effect.promise(() => Deno.mkdir(opts.out, { recursive: true }));

    // Same data for every method (Data.stream orders batches by the shared seed).
    const dir = (
      d: string,
      which: "train" | "eval",
    ) => (d === "embedded" ? Data.embedded[which] : d);
    const trainDir = dir(base.data.train, "train");
    // [issue 14] Streamed from disk (a prepared folder when there is one), memory bounded.
    const train = yield* Loader.open(trainDir, scale, {
      name: "train",
      log: say,
      ...Loader.fromEnv(),
    });
    yield* Train.checkPatch(base.train.patch, train, trainDir);
    const evalAll = yield* Data.load(dir(base.data.eval, "eval"), scale, { name: "eval" });
    const evalSet = base.data.evalImages
      ? { ...evalAll, pairs: evalAll.pairs.slice(0, base.data.evalImages) }
      : evalAll;
    const cost = { outputHeight: 1080, outputWidth: 1920, scale };

    const rows: Row[] = [];
    let fp32Row: Row | undefined;
    for (const [key, given] of recipes) {
      const out = `${opts.out}/${key}`;
      const built = yield* Registry.build(given.model, given.train.seed);
      const recipe = yield* Registry.resolve(given, built, train);
      const quantized = Registry.quantize(recipe, built);
      let summary: Train.Summary;
      if (yield* Effect.promise(() => exists(`${out}/summary.json`))) {
        say(`${key}: done before, reading ${out}/summary.json`);
        summary = JSON.parse(yield* Effect.promise(() => Deno.readTextFile(`${out}/summary.json`)));
        Tree.dispose(built.params);
      } else {
        say(`${key}: ${table_[key].label} → ${out}`);
        summary = yield* Train.run(
          recipe,
          Recipe.toJSON(recipe, key === "recipe" ? loaded.module : undefined),
          { fp32: built.model, params: built.params, quantized },
          { train, eval: evalSet },
          {
            out,
            resume: true,
            log: (l) => say(`  [${key}] ${l}`),
            ssim: opts.ssim,
            calibrationBatches: Registry.calibrationBatches(recipe),
          },
        );
      }
      const c = Cost.of(quantized, cost);
      fp32Row ??= {
        method: "fp32",
        label: "full precision",
        wbits: 32,
        abits: 32,
        psnr: summary.fp32.psnr,
        ssim: summary.fp32.ssim,
        storageK: Cost.of(built.model, cost).storageK,
        bitopsT: Cost.of(built.model, cost).bitopsT,
        ...flagOf(summary.fp32),
      };
      rows.push({
        method: key,
        label: table_[key].label,
        wbits: recipe.quant.wbits,
        abits: recipe.quant.abits,
        psnr: summary.qat.psnr,
        ssim: summary.qat.ssim,
        storageK: c.storageK,
        bitopsT: c.bitopsT,
        ...flagOf(summary.qat),
      });
    }
    const all = fp32Row ? [fp32Row, ...rows] : rows;
    const evalName = base.data.eval === "embedded" ? "embedded" : base.data.eval.split("/")
      .filter((s) => s).pop() ?? "eval";
    const md = table(all, scale, evalName);
    const header =
      `${base.model.arch} ×${scale}, ${base.train.steps} steps, seed ${base.train.seed}, ` +
      `eval ${evalSet.pairs.length} images, SSIM "${opts.ssim}"`;
    yield* Effect.promise(async () => {
      await Deno.writeTextFile(
        `${opts.out}/compare.json`,
        JSON.stringify({ setup: header, rows: all }, null, 2) + "\n",
      );
      await Deno.writeTextFile(`${opts.out}/compare.md`, `${header}\n\n${md}\n`);
    });
    // The page (table, curves, Fig. 4 crops, Fig. 5 for an ablation): the tables above are on
    // disk already, so a failure here is reported and the task still succeeds.
    yield* Report.writeCompare(opts.out, { log: say }).pipe(
      Effect.catchCause((cause) =>
        Effect.sync(() => say(`report: not written (${Cause.pretty(cause).split("\n")[0]})`))
      ),
    );
    if (opts.json) {
      console.log(JSON.stringify({
        rows: all.map((r) => ({
          method: r.method,
          psnr: r.psnr,
          ssim: r.ssim,
          storageK: r.storageK,
          bitopsT: r.bitopsT,
          ...(r.flagged ? { flagged: r.flagged } : {}),
        })),
      }));
    } else {
      console.log(`\n${header}\n\n${md}\n\nwrote ${opts.out}/compare.json, ${opts.out}/compare.md`);
    }
    return all;
  });

if (import.meta.main) {
  await Main.run(program(Deno.args), { log: !Deno.args.includes("--json") });
}
