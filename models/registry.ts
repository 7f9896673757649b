/**
 * The architectures a recipe can name, with their quantization placement and where their
 * starting weights come from (random init, a pretrained npm package, or an FP32 checkpoint).
 *
 * @module
 */
import { Data, Effect } from "effect";
import * as Baselines from "../lib/Baselines.ts";
import * as Checkpoint from "../lib/Checkpoint.ts";
import type * as Dataset from "../lib/Data.ts";
import type * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Quant from "../lib/Quant.ts";
import type * as Quantizer from "../lib/Quantizer.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import * as Edsr from "./edsr.ts";
import * as Rdn from "./rdn.ts";
import * as Srresnet from "./srresnet.ts";
import * as Swinir from "./swinir.ts";

/** A model ready to quantize: network, starting parameters, placement. */
export interface Built {
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly placement: (
    q: { readonly weight: Quantizer.Any; readonly input: Quantizer.Any },
  ) => ReadonlyArray<Quant.Rule>;
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
): { readonly model: Nn.Layer<3, 3>; readonly placement: Built["placement"] } => {
  const o = m.options as Record<string, number>;
  const bad = Recipe.optionProblems({ arch: m.arch, options: o })[0];
  if (bad) throw new ModelError({ reason: `options.${bad.key}: ${bad.message}` });
  switch (m.arch) {
    case "edsr":
      return { model: Edsr.edsr({ ...o, upscale: m.scale }), placement: Edsr.placement };
    case "rdn":
      return { model: Rdn.rdn({ ...o, upscale: m.scale }), placement: Rdn.placement };
    case "srresnet":
      return {
        model: Srresnet.srresnet({ ...o, upscale: m.scale }),
        placement: Srresnet.placement,
      };
    case "swinir": {
      // Recipe options are numbers: `numLayers` RSTBs of `depth` blocks give `depths`.
      const { numLayers, depth, ...rest } = o;
      const depths = numLayers !== undefined ? Array(numLayers).fill(depth ?? 6) : undefined;
      return {
        model: Swinir.swinir({ ...rest, ...(depths ? { depths } : {}), upscale: m.scale }),
        placement: Swinir.placement,
      };
    }
    case "esrgan-slim":
    case "esrgan-medium":
      return {
        model: Rdn.rdn({ ...Rdn.configs[m.arch], ...o, upscale: m.scale }),
        placement: Rdn.placement,
      };
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
        placement: Rdn.placement,
        source: `pretrained ${name} ×${m.scale}`,
      };
    }
    const { model, placement } = architecture(m);
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
        placement,
        source: `checkpoint ${m.checkpoint}`,
      };
    }
    return { model, params: model.init(seed), placement, source: `random init (seed ${seed})` };
  });

/**
 * The recipe's quantized network: its quantizers placed by the architecture's placement, or
 * the network unchanged for a full-precision (32/32) recipe. DDTB's dynamic layers
 * (`quant.dynamicLayers`, see {@link resolve}) get a gated input quantizer sized to their input.
 */
export function quantize(
  recipe: Recipe.Recipe,
  arch: Pick<Built, "model" | "placement">,
): Nn.Layer<3, 3> {
  const q = Recipe.quantizers(recipe);
  if (!q) return arch.model;
  const rules = arch.placement(q);
  const quant = recipe.quant;
  if (quant.activationRange !== "ddtb" || quant.inputQuantizer) {
    return Quant.quantize(arch.model, rules);
  }
  if (!quant.dynamicLayers) {
    throw new ModelError({
      reason: "recipe.quant.dynamicLayers is not set: DDTB's gated layers are picked from " +
        "the training data by Registry.resolve (deno task train and compare do it)",
    });
  }
  const statics = new Map(Quant.layers(Quant.quantize(arch.model, rules)).map((l) => [l.path, l]));
  const gated: Quant.Rule[] = quant.dynamicLayers.map((path) => {
    const layer = statics.get(path)?.layer;
    if (!layer) {
      throw new ModelError({
        reason:
          `recipe.quant.dynamicLayers: "${path}" is not a quantized layer of ${recipe.model.arch}`,
      });
    }
    const gate = { channels: layer.inChannels as number };
    const input = Baselines.ddtb(quant.abits, { percentile: quant.percentile, gate });
    return { match: path, kinds: [layer.inner.kind], weight: q.weight, input };
  });
  return Quant.quantize(arch.model, [...gated, ...rules]);
}

/**
 * The recipe with everything that is decided from data filled in: for DDTB without
 * `quant.dynamicLayers`, the layers to gate, picked by `Baselines.selectDynamic` on the FP32
 * model (`built`) over the calibration batches. Other recipes come back unchanged.
 */
export const resolve = (
  recipe: Recipe.Recipe,
  built: Pick<Built, "model" | "placement" | "params">,
  train: Dataset.Dataset,
): Effect.Effect<Recipe.Recipe> =>
  Effect.gen(function* () {
    const quant = recipe.quant;
    if (quant.activationRange !== "ddtb" || quant.dynamicLayers || quant.inputQuantizer) {
      return recipe;
    }
    const q = Recipe.quantizers(recipe);
    if (!q) return recipe;
    const statics = Quant.quantize(built.model, built.placement(q));
    const t = recipe.train;
    const dynamicLayers = yield* Baselines.selectDynamic(statics, built.params, train, {
      fraction: quant.dynamicFraction,
      batches: t.calibrationBatches,
      batch: { batch: t.batch, patch: t.patch, seed: t.seed },
    });
    return Recipe.parse({ ...recipe, quant: { ...quant, dynamicLayers } }, "(resolved recipe)");
  });
