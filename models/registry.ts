/**
 * The architectures a recipe can name, where their starting weights come from (random init, a
 * pretrained npm package, or an FP32 checkpoint), and a recipe's quantized network: the
 * recipe's method places its quantizers (`Method.scheme`) on the architecture's family.
 *
 * @module
 */
import { Data, Effect } from "effect";
import * as Checkpoint from "../lib/Checkpoint.ts";
import type * as Dataset from "../lib/Data.ts";
import * as Method from "../lib/Method.ts";
import type * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import * as Edsr from "./edsr.ts";
import * as Rdn from "./rdn.ts";
import * as Srresnet from "./srresnet.ts";
import * as Swinir from "./swinir.ts";

/** A model ready to quantize: network, starting parameters, architecture family. */
export interface Built {
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly family: Method.Family;
  /** Where the parameters came from, for logs. */
  readonly source: string;
}

/** The model of a recipe could not be built. */
export class ModelError extends Data.TaggedError("ModelError")<{ readonly reason: string }> {
  override get message(): string {
    return `model: ${this.reason}`;
  }
}

/** The numeric options of a model's `Options` type: what a recipe's `model.options` can set. */
type NumericOption<O> = Exclude<
  { [K in keyof O]-?: NonNullable<O[K]> extends number ? K : never }[keyof O],
  "upscale"
>;

/**
 * The option names each architecture takes ({@link Recipe.modelOptions}), checked by the
 * compiler against the models' own `Options` types: a name that is not a numeric option of
 * its model does not compile.
 */
export const options: {
  readonly [A in "edsr" | "srresnet" | "rdn" | "esrgan-slim" | "esrgan-medium" | "swinir"]:
    ReadonlyArray<
      A extends "edsr" ? NumericOption<Edsr.Options>
        : A extends "srresnet" ? NumericOption<Srresnet.Options>
        : A extends "swinir" ? NumericOption<Swinir.Options> | "numLayers" | "depth"
        : NumericOption<Rdn.Options>
    >;
} = Recipe.modelOptions;

/**
 * The network and its quantization placement for a recipe's model (no parameters are made).
 * Throws {@link ModelError} for an option the architecture does not take.
 */
export const architecture = (
  m: Pick<Recipe.Recipe["model"], "arch" | "scale" | "options">,
): { readonly model: Nn.Layer<3, 3>; readonly family: Method.Family } => {
  const o = m.options as Record<string, number>;
  const bad = Recipe.optionProblems({ arch: m.arch, options: o })[0];
  if (bad) throw new ModelError({ reason: `options.${bad.key}: ${bad.message}` });
  const family = Method.familyOf(m.arch);
  switch (m.arch) {
    case "edsr":
      return { model: Edsr.edsr({ ...o, upscale: m.scale }), family };
    case "rdn":
      return { model: Rdn.rdn({ ...o, upscale: m.scale }), family };
    case "srresnet":
      return { model: Srresnet.srresnet({ ...o, upscale: m.scale }), family };
    case "swinir": {
      // Recipe options are numbers: `numLayers` RSTBs of `depth` blocks give `depths`.
      const { numLayers, depth, ...rest } = o;
      const depths = numLayers !== undefined ? Array(numLayers).fill(depth ?? 6) : undefined;
      return {
        model: Swinir.swinir({ ...rest, ...(depths ? { depths } : {}), upscale: m.scale }),
        family,
      };
    }
    case "esrgan-slim":
    case "esrgan-medium":
      return { model: Rdn.rdn({ ...Rdn.configs[m.arch], ...o, upscale: m.scale }), family };
  }
};

/** Builds the recipe's FP32 model with its starting parameters. */
export const build = (
  m: Recipe.Recipe["model"],
  seed: number,
): Effect.Effect<Built, ModelError | Checkpoint.CheckpointError> =>
  Effect.gen(function* () {
    if (m.pretrained) {
      if (m.arch !== "esrgan-slim" && m.arch !== "esrgan-medium") {
        return yield* Effect.fail(
          new ModelError({
            reason: `no pretrained weights ship for "${m.arch}"; use model.checkpoint`,
          }),
        );
      }
      const name = m.arch;
      const loaded = yield* Effect.tryPromise({
        try: () => Pretrained.load(name, m.scale),
        catch: (e) => new ModelError({ reason: (e as Error).message }),
      });
      return {
        model: loaded.model,
        params: loaded.params,
        family: "rdn",
        source: `pretrained ${name} ×${m.scale}`,
      };
    }
    const { model, family } = architecture(m);
    if (m.checkpoint) {
      const c = yield* Checkpoint.read(m.checkpoint);
      for (const t of c.opt.values()) t.dispose();
      const init = Tree.flatten(model.init(seed));
      const params = new Map([...init.keys()].map((p) => [p, c.params.get(p)] as const));
      const missing = [...params].find(([, t]) => !t);
      Tree.dispose(Tree.unflatten(init));
      if (missing) {
        return yield* Effect.fail(
          new ModelError({ reason: `checkpoint ${m.checkpoint} has no "${missing[0]}"` }),
        );
      }
      for (const [p, t] of c.params) if (!init.has(p)) t.dispose();
      return {
        model,
        params: Tree.unflatten(params as Map<string, import("@tensorflow/tfjs").Tensor>),
        family,
        source: `checkpoint ${m.checkpoint}`,
      };
    }
    return { model, params: model.init(seed), family, source: `random init (seed ${seed})` };
  });

/** The scheme inputs of a recipe on an architecture. */
export const schemeInput = (
  recipe: Recipe.Recipe,
  arch: Pick<Built, "model" | "family">,
): Method.SchemeInput => ({
  family: arch.family,
  model: arch.model,
  wbits: recipe.quant.wbits,
  abits: recipe.quant.abits,
  percentile: recipe.quant.percentile,
  decisions: recipe.decisions ?? {},
  steps: recipe.train.steps,
});

/**
 * The recipe's quantized network: its method's quantizers placed on the architecture
 * (`Method.scheme`), or the network unchanged for a full-precision (32/32) recipe. A method that
 * decides from data (DDTB's gated layers) needs its decisions first ({@link resolve}).
 */
export function quantize(
  recipe: Recipe.Recipe,
  arch: Pick<Built, "model" | "family">,
): Nn.Layer<3, 3> {
  if (Recipe.isFullPrecision(recipe)) return arch.model;
  if (recipe.method.decide && !recipe.decisions) {
    throw new ModelError({
      reason: `method ${recipe.method.name} decides from the training data first ` +
        "(Registry.resolve; deno task train and compare do it): recipe.decisions is not set",
    });
  }
  return Quant.quantize(arch.model, recipe.method.scheme(schemeInput(recipe, arch)));
}

/**
 * The recipe with its method's decisions made from data (`Method.decide` on the FP32 model
 * over the calibration batches) and recorded in `recipe.decisions`; a recipe whose method makes
 * none, or that has them already, comes back unchanged.
 */
export const resolve = (
  recipe: Recipe.Recipe,
  built: Pick<Built, "model" | "family" | "params">,
  train: Dataset.Training,
): Effect.Effect<Recipe.Recipe> =>
  Effect.gen(function* () {
    const decide = recipe.method.decide;
    if (!decide || recipe.decisions || Recipe.isFullPrecision(recipe)) return recipe;
    const t = recipe.train;
    const decisions = yield* decide({
      family: built.family,
      model: built.model,
      params: built.params,
      wbits: recipe.quant.wbits,
      abits: recipe.quant.abits,
      percentile: recipe.quant.percentile,
      steps: t.steps,
      train,
      batches: t.calibrationBatches,
      batch: { batch: t.batch, patch: t.patch, seed: t.seed },
    });
    return Recipe.parse({ ...recipe, decisions }, "(resolved recipe)");
  });

/** Calibration batches of a recipe's method (its own count, else the recipe's). */
export const calibrationBatches = (recipe: Recipe.Recipe): number =>
  recipe.method.calibrationBatches?.(recipe.train.calibrationBatches) ??
    recipe.train.calibrationBatches;
