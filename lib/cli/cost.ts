/**
 * `deno task cost --model <name> [--scale 4] [--bits B | --wbits B --abits B]
 * [--method odm | --recipe <file or name>] [--size 1920x1080] [--json]`
 *
 * Prints the storage and BitOPs of a model and quantization method (Table 6 of the ODM paper),
 * computed by {@link Cost.of} from the model's layers with the method's quantizers (their
 * stored parameters, DDTB's gates, DAQ's run-time statistics), next to its FP32 figures, and a
 * breakdown by part of the model. `--recipe` counts a recipe's own method (yours). `--json`
 * prints one JSON object (`{"storageK", "bitopsT", …}`) and nothing else on stdout.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Backend from "../Backend.ts";
import * as Methods from "../methods/mod.ts";
import * as Cost from "../Cost.ts";
import * as Data from "../Data.ts";
import * as Quant from "../Quant.ts";
import * as Recipe from "../Recipe.ts";
import * as Tree from "../Tree.ts";
import * as Registry from "../../models/registry.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";
import { loadRecipe } from "./train.ts";

const bits = z.coerce.number().int().refine((b) => (b >= 1 && b <= 8) || b === 32, {
  message: "bits must be 1–8 or 32",
});

/**
 * A method that decides from data (DDTB's gated layers) does it here on the FP model
 * (pretrained weights for esrgan-*, else its seeded initialisation) over this many embedded
 * training patches.
 */
const DDTB_SELECTION = { calibrationBatches: 2, batch: 2, patch: 16 };

const Options = z.object({
  model: z.enum(["edsr", "rdn", "srresnet", "swinir", "esrgan-slim", "esrgan-medium"]).optional(),
  scale: z.enum(["2", "3", "4"]).transform(Number).optional(),
  bits: bits.optional(),
  wbits: bits.optional(),
  abits: bits.optional(),
  method: z.enum(Methods.NAMES).default("odm"),
  recipe: z.string().optional(),
  size: z.string().regex(/^[1-9][0-9]*x[1-9][0-9]*$/, "expected WIDTHxHEIGHT, e.g. 1920x1080")
    .default("1920x1080"),
  bias: z.enum(["fp", "layer", "none"]).default("fp"),
  concat: z.literal(true).optional(),
  "mean-shift": z.literal(true).optional(),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict().refine((o) => o.model !== undefined || o.recipe !== undefined, {
  path: ["model"],
  message: "give --model (or --recipe, whose model is then used)",
});

/** Options without a value. */
const FLAGS = ["json", "help", "concat", "mean-shift"];

const USAGE =
  `usage: deno task cost --model <edsr|rdn|esrgan-slim|esrgan-medium> [--scale 4] [--bits B]
                       [--wbits B] [--abits B] [--method odm | --recipe R] [--size 1920x1080]
                       [--json]
  --model       architecture (rdn: config B; esrgan-*: the @upscalerjs networks; default:
                the recipe's)
  --scale       2, 3 or 4 (default: the recipe's, else 4)
  --bits        weight and activation bits (1–8, 32 = FP; default: the recipe's, else 32)
  --wbits/--abits  override --bits for weights / activations
  --method      ${Methods.NAMES.join(" | ")}: the method whose quantizers are counted (their
                parameters, gates and run-time arithmetic; default odm; ddtb picks its gated
                layers on a few embedded training patches first)
  --recipe      count this recipe (a file, or a name under recipes/): its method, and its
                model, scale and bits unless given
  --size        output size WIDTHxHEIGHT (default 1920x1080, as Table 6)
  --bias        bias adds at fp (default) | layer bits | none
  --concat      count concatenations (one op per element); --mean-shift count mean-shift adds
  --json        print {"storageK", "bitopsT", …} only`;

const fmtInt = (n: number) => Math.round(n).toLocaleString("en");

/** The recipe with its method's decisions made (see {@link DDTB_SELECTION}). */
const resolve = (recipe: Recipe.Recipe) =>
  Effect.gen(function* () {
    if (!recipe.method.decide || Recipe.isFullPrecision(recipe)) return recipe;
    const built = yield* Registry.build(recipe.model, recipe.train.seed);
    const train = yield* Data.load(Data.embedded.train, recipe.model.scale, { name: "train" });
    const resolved = yield* Registry.resolve(recipe, built, train);
    Tree.dispose(built.params);
    return resolved;
  });

/** The whole `cost` task as an Effect program; returns what `--json` prints. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const opts = Args.parse(Options, argv, FLAGS);
    if (opts.help) {
      console.log(USAGE);
      return undefined;
    }
    yield* Backend.Backend;
    const base = opts.recipe
      ? (yield* Effect.promise(() => loadRecipe(opts.recipe!))).recipe
      : undefined;
    const arch_ = opts.model ?? base!.model.arch;
    // A recipe's model options hold for its own architecture only.
    const options = base && base.model.arch === arch_ && !base.model.pretrained
      ? base.model.options
      : {};
    const scale = (opts.scale ?? base?.model.scale ?? 4) as 2 | 3 | 4;
    const wbits = opts.wbits ?? opts.bits ?? base?.quant.wbits ?? 32;
    const abits = opts.abits ?? opts.bits ?? base?.quant.abits ?? 32;
    const [width, height] = opts.size.split("x").map(Number);
    const arch = Registry.architecture({ arch: arch_, scale, options });
    const model = arch.model;
    const method = base?.method ?? Methods.byName(opts.method)!;
    const given = Recipe.parse({
      name: "cost",
      model: {
        arch: arch_,
        scale,
        options,
        pretrained: arch_.startsWith("esrgan") && !Object.keys(options).length,
      },
      method,
      quant: { wbits, abits, ...(base ? { percentile: base.quant.percentile } : {}) },
      train: { steps: 0, ...DDTB_SELECTION },
    });
    const recipe = yield* resolve(given);
    const quantized = Registry.quantize(recipe, arch);
    const costOpts: Cost.Options = {
      outputHeight: height,
      outputWidth: width,
      scale,
      bias: opts.bias,
      concat: opts.concat === true,
      meanShift: opts["mean-shift"] === true,
    };
    const fp = Cost.of(model, costOpts);
    const c = Cost.of(quantized, costOpts);
    const layers = Quant.layers(quantized).length;
    const result = {
      model: arch_,
      scale,
      size: { width, height },
      wbits,
      abits,
      method: method.name,
      storageK: c.storageK,
      bitopsT: c.bitopsT,
      flops: c.flops,
      macs: c.macs,
      params: c.params,
      quantizedLayers: layers,
      ...(recipe.decisions ? { decisions: recipe.decisions } : {}),
      fp32: { storageK: fp.storageK, bitopsT: fp.bitopsT },
      parts: Cost.byPart(c),
      unmodelled: c.unmodelled,
    };
    if (opts.json) {
      console.log(JSON.stringify(result));
      return result;
    }
    const row = (label: string, r: Cost.Result) =>
      `| ${label} | ${fmtInt(r.params)} | ${r.storageK.toFixed(1)} | ${r.bitopsT.toFixed(1)} |`;
    const lines = [
      `| ${arch_} ×${scale}, ${width}×${height} output | params | storage (K) | BitOPs (T) |`,
      "|---|---|---|---|",
      row("FP32", fp),
      ...(quantized !== model
        ? [row(`W${wbits}A${abits} (${method.name}, ${layers} quantized layers)`, c)]
        : []),
      "",
      `| part | storage (K) | BitOPs (T) |`,
      "|---|---|---|",
      ...result.parts.map((p) =>
        `| ${p.part === "" ? "(root)" : p.part} | ${p.storageK.toFixed(1)} | ${
          p.bitopsT.toFixed(2)
        } |`
      ),
    ];
    console.log(lines.join("\n"));
    if (recipe.decisions) {
      console.log(`\n${method.name} decided: ${JSON.stringify(recipe.decisions)}`);
    }
    if (c.unmodelled.length > 0) {
      console.error(`warning: no FLOP model for [${c.unmodelled.join(", ")}] (counted as 0)`);
    }
    return result;
  });

if (import.meta.main) {
  // Invalid options are reported by the program itself (Args.parse); here they mean "not ddtb".
  const ddtb = (() => {
    try {
      const parsed = Options.safeParse(Args.split(Deno.args, FLAGS));
      return parsed.success && (parsed.data.method === "ddtb" || parsed.data.recipe !== undefined);
    } catch {
      return false;
    }
  })();
  // Counting needs no GPU; DDTB's layer choice runs the model, which WebGPU does faster.
  await Main.run(program(Deno.args), { prefer: ddtb ? undefined : "cpu", log: false });
}
