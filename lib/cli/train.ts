/**
 * `deno task train [--recipe <file or name>] [--steps N] [--out DIR] [--resume | --force]
 * [--seed N]`
 *
 * Runs a recipe: loads the data and the starting model, quantizes it, calibrates, trains with
 * progress lines, and prints the FP32 / before-QAT / after-QAT table. Writes
 * `<out>/metrics.jsonl`, `<out>/summary.json` and `<out>/checkpoint.bin`.
 * With no arguments it runs `recipes/default.ts` into `runs/default`.
 *
 * Before any data or model is loaded: the recipe is validated, `--out` must be a folder or
 * creatable, and a run already in it is refused unless `--resume` (same recipe, up to the
 * number of steps) or `--force` (its files are removed first); see `Train.prepareOut`. The
 * patch size is checked against the training images as soon as they are loaded.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Backend from "../Backend.ts";
import * as Data from "../Data.ts";
import * as Loader from "../Loader.ts";
import * as Nn from "../Nn.ts";
import * as Quant from "../Quant.ts";
import * as Recipe from "../Recipe.ts";
import * as Checkpoint from "../Checkpoint.ts";
import type * as Method from "../Method.ts";
import * as Run from "../Run.ts";
import * as Train from "../Train.ts";
import * as Registry from "../../models/registry.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  recipe: z.string().default("default"),
  steps: Args.int.optional(),
  seed: z.coerce.number().int().optional(),
  out: z.string().optional(),
  resume: z.literal(true).optional(),
  force: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task train [--recipe <file or name>] [--steps N] [--out DIR] \
[--resume | --force] [--seed N]
  --recipe   a recipe file (.ts exporting a Recipe as default) or a name under recipes/ (default: default)
  --steps    override the recipe's number of steps
  --out      output folder (default: runs/<recipe name>)
  --resume   continue the run in <out> from its checkpoint.bin (same recipe; --steps may grow)
  --force    replace a run already in <out> (its checkpoint, metrics and summary are removed)
  --seed     override the recipe's seed`;

/** Loads a recipe from a file path or a name in `recipes/`, validated. */
export async function loadRecipe(
  spec: string,
): Promise<{ recipe: Recipe.Recipe; source: string; module: string }> {
  const isFile = spec.endsWith(".ts") || spec.includes("/");
  const url = isFile
    ? new URL(spec, `file://${Deno.cwd()}/`)
    : new URL(`../../recipes/${spec}.ts`, import.meta.url);
  let mod: { default?: unknown };
  try {
    mod = await import(url.href);
  } catch (e) {
    if (e instanceof Recipe.RecipeInvalid) {
      throw new Recipe.RecipeInvalid({ source: url.pathname, issues: e.issues });
    }
    throw new Error(
      `cannot load recipe ${isFile ? url.pathname : `"${spec}" (recipes/${spec}.ts)`}: ${
        (e as Error).message
      }`,
    );
  }
  if (mod.default === undefined) throw new Error(`recipe ${url.pathname} has no default export`);
  return {
    recipe: Recipe.parse(mod.default, url.pathname),
    source: url.pathname,
    module: url.href,
  };
}

/** The whole `train` task as an Effect program. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const opts = Args.parse(Options, argv, ["resume", "force", "help"]);
    if (opts.help) {
      console.log(USAGE);
      return undefined;
    }
    if (opts.resume && opts.force) {
      throw new Error(
        "--resume and --force exclude each other: continue the run in --out, or replace it",
      );
    }
    // Validate everything before any work: the recipe, then the output folder.
    const loaded = yield* Effect.promise(() => loadRecipe(opts.recipe));
    const given = Recipe.override(loaded.recipe, { steps: opts.steps, seed: opts.seed });
    const out = opts.out ?? `runs/${given.name}`;
    const resume = opts.resume === true;
    const force = opts.force === true;
    yield* Run.prepareOut(out, { resume, force, recipe: Recipe.toJSON(given, loaded.module) });
    const backend = yield* Backend.Backend;
    console.log(`recipe: ${given.name} (${loaded.source}) → ${out}`);
    const scale = given.model.scale;
    const dir = (
      d: string,
      which: "train" | "eval",
    ) => (d === "embedded" ? Data.embedded[which] : d);
    const progress = (what: string) => (i: number, n: number, f: string) =>
      i === n - 1 || i % 5 === 0
        ? console.log(`  ${what} ${i + 1}/${n} ${f.split("/").pop()}`)
        : undefined;
    const trainDir = dir(given.data.train, "train");
    console.log(`loading training images from ${trainDir}`);
    // [issue 14] Streamed from disk (a prepared folder when there is one), memory bounded.
    const train = yield* Loader.open(trainDir, scale, {
      name: "train",
      log: console.log,
      ...Loader.fromEnv(),
    });
    yield* Train.checkPatch(given.train.patch, train, trainDir);
    const evalAll = yield* Data.load(dir(given.data.eval, "eval"), scale, {
      name: "eval",
      onImage: progress("eval"),
    });
    const evalSet = given.data.evalImages
      ? { ...evalAll, pairs: evalAll.pairs.slice(0, given.data.evalImages) }
      : evalAll;
    const built = yield* Registry.build(given.model, given.train.seed);
    // A resumed run keeps the decisions its method made from data at the start (DDTB's gates).
    const ckpt = `${out}/checkpoint.bin`;
    const saved = resume && (yield* Run.exists(ckpt))
      ? ((yield* Checkpoint.readHeader(ckpt)).recipe as { decisions?: Method.Decisions })
      : undefined;
    const recipe = yield* Registry.resolve(
      saved?.decisions && !given.decisions
        ? Recipe.parse({ ...given, decisions: saved.decisions }, loaded.source)
        : given,
      built,
      train,
    );
    if (recipe.decisions && !given.decisions) {
      console.log(
        `${recipe.method.name} decided from the data: ${JSON.stringify(recipe.decisions)}`,
      );
    }
    const quantized = Registry.quantize(recipe, built);
    console.log(
      `model: ${recipe.model.arch} ×${scale}, ${
        Nn.parameterCount(built.model).toLocaleString("en")
      } parameters, ` +
        `from ${built.source}; W${recipe.quant.wbits}A${recipe.quant.abits}, ${
          Quant.layers(quantized).length
        } quantized layers`,
    );
    console.log(`method: ${recipe.method.label}`);
    const summary = yield* Train.run(
      recipe,
      Recipe.toJSON(recipe, loaded.module),
      { fp32: built.model, params: built.params, quantized },
      { train, eval: evalSet },
      {
        out,
        resume,
        force,
        stages: recipe.hooks.stages,
        stopWhen: recipe.hooks.stopWhen,
        calibrationBatches: Registry.calibrationBatches(recipe),
      },
    );
    console.log("");
    console.log(Train.table(summary, scale));
    console.log(
      // seconds add up over resumes; wallSeconds is this invocation (evaluation included).
      `\n${summary.steps} steps, ${summary.seconds.toFixed(0)} s of training in all (this run ${
        summary.wallSeconds.toFixed(0)
      } s with evaluation) on ${backend.name}; ` +
        `wrote ${out}/summary.json, ${out}/metrics.jsonl, ${out}/checkpoint.bin`,
    );
    return summary;
  });

if (import.meta.main) await Main.run(program(Deno.args));
