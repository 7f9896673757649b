/**
 * Recipes: a whole experiment as one typed, validated value — model, scale, bit-widths, the
 * quantization method (a `Method` value, or the name of a built-in one), the mismatch
 * regulariser's settings, training schedule, data and seed. A recipe file exports one with
 * `export default Recipe.make({ … })`.
 *
 * Defaults are the ODM paper's settings (SPEC §1–§7). Validation (zod) happens before any work
 * and names the offending field: `recipe.train.batch: Too small: expected number to be >0`.
 *
 * In a checkpoint a recipe is stored as JSON ({@link toJSON}): a built-in method by name and
 * options, a method of your own by the recipe module that defines it (`method.module`), which
 * {@link fromJSON} imports again. Recipes of the earlier format (`quant.weightRange`,
 * `quant.activationRange`, `distill`) are read as the method they describe.
 *
 * @module
 */
import { Data } from "effect";
import * as z from "zod";
import type * as Method from "./Method.ts";
import type * as Train from "./Train.ts";
import * as Methods from "./methods/mod.ts";

const bits = z.union([z.number().int().min(1).max(8), z.literal(32)]);
const positiveInt = z.number().int().positive();
const isMethod = (v: unknown): v is Method.Method =>
  typeof v === "object" && v !== null && typeof (v as Method.Method).scheme === "function" &&
  typeof (v as Method.Method).name === "string";

const archs = ["edsr", "rdn", "srresnet", "swinir", "esrgan-slim", "esrgan-medium"] as const;
/** An architecture a recipe can name. */
export type Arch = (typeof archs)[number];

const rdnOptions = ["numFeat", "numBlock", "numConv", "growRate", "kernel"] as const;

/**
 * The `model.options` each architecture takes: the numeric options of its `Options` in
 * models/*.ts (models/registry.ts checks these names against those types). SwinIR's `depths`
 * is given as `numLayers` RSTBs of `depth` blocks. Any other key is refused.
 */
export const modelOptions = {
  edsr: ["numFeat", "numBlock", "resScale", "rgbRange"],
  rdn: rdnOptions,
  srresnet: ["numFeat", "numBlock"],
  swinir: ["embedDim", "numLayers", "depth", "numHeads", "windowSize", "mlpRatio", "rgbRange"],
  "esrgan-slim": rdnOptions,
  "esrgan-medium": rdnOptions,
} as const satisfies Record<Arch, ReadonlyArray<string>>;

/**
 * What is wrong with a model's `options`, one entry per key (empty when they are fine):
 * unknown keys, and any key at all for a pretrained network (its options are fixed).
 */
export function optionProblems(
  m: {
    readonly arch: Arch;
    readonly options: Readonly<Record<string, number>>;
    pretrained?: boolean;
  },
): ReadonlyArray<{ readonly key: string; readonly message: string }> {
  const known: ReadonlyArray<string> = modelOptions[m.arch];
  return Object.keys(m.options).flatMap((key) =>
    !known.includes(key)
      ? [{ key, message: `unknown option for ${m.arch} (known: ${known.join(", ")})` }]
      : m.pretrained
      ? [{ key, message: `not used with model.pretrained (the pretrained ${m.arch} is fixed)` }]
      : []
  );
}

/** The recipe schema. */
export const Schema = z.object({
  /** Name of the experiment (used in output folders and tables). */
  name: z.string().min(1),
  model: z.object({
    /** Architecture: `edsr`, `rdn`, `srresnet`, `swinir`, or a pretrained RDN-family package `esrgan-slim` / `esrgan-medium`. */
    arch: z.enum(archs),
    scale: z.union([z.literal(2), z.literal(3), z.literal(4)]),
    /** Architecture options (BasicSR names, e.g. `numFeat`, `numBlock`; see {@link modelOptions}). */
    options: z.record(z.string(), z.number()).default({}),
    /** Start from the package's pretrained weights (esrgan-*). */
    pretrained: z.boolean().default(false),
    /** Start from an FP32 checkpoint file instead (its parameters must fit the model). */
    checkpoint: z.string().optional(),
  }).strict().superRefine((m, ctx) => {
    for (const p of optionProblems(m)) {
      ctx.addIssue({ code: "custom", path: ["options", p.key], message: p.message });
    }
  }),
  /**
   * The quantization method: a `Method` value (lib/Method.ts; yours or a built-in one's) or the
   * name of a built-in: `odm` (default), `pams`, `ddtb`, `daq`, `lsq`, `max` (lib/methods/).
   */
  method: z.union([
    z.enum(Methods.NAMES),
    z.custom<Method.Method>(isMethod, "expected a Method value or a built-in method's name"),
  ]).default("odm").transform((m) => (typeof m === "string" ? Methods.byName(m)! : m)),
  /** What the method decided from data before training (DDTB: its gated layers); recorded. */
  decisions: z.record(z.string(), z.unknown()).optional(),
  quant: z.object({
    /** Weight bits (32 = full precision). */
    wbits: bits,
    /** Activation bits (32 = full precision). */
    abits: bits,
    /** The j of the percentile statistics (SPEC §2, §5). */
    percentile: z.number().gt(0.5).max(1).default(0.99),
  }).strict(),
  regularizer: z.object({
    /** How g_R and g_M are merged: `cooperative` (Eq. 6), `naive` (Table 7 d), `reconstruction` (no MR). */
    merge: z.enum(["cooperative", "naive", "reconstruction"]).default("cooperative"),
    /** One cosine per tensor or one over all parameters. */
    granularity: z.enum(["tensor", "global"]).default("tensor"),
    lambdaR: z.number().nonnegative().default(1),
    /** 1e-5 for EDSR/SRResNet/SwinIR, 1e-6 for RDN (SPEC §4). */
    lambdaM: z.number().nonnegative().default(1e-5),
    /** Treat q(X) as a constant in L_M (SPEC §3). */
    detach: z.boolean().default(true),
  }).strict().default({
    merge: "cooperative",
    granularity: "tensor",
    lambdaR: 1,
    lambdaM: 1e-5,
    detach: true,
  }),
  train: z.object({
    steps: z.number().int().nonnegative(),
    batch: positiveInt.default(8),
    /** LR patch side. */
    patch: positiveInt.default(48),
    lrWeights: z.number().positive().default(1e-4),
    lrQuant: z.number().positive().default(1e-3),
    /** Halve both learning rates every this many steps (SPEC §7: 15K of 60K). */
    decayEvery: positiveInt.default(15000),
    decayFactor: z.number().positive().max(1).default(0.5),
    /** Batches used to initialise the activation ranges (SPEC §2: 100 patches). */
    calibrationBatches: positiveInt.default(13),
    seed: z.number().int().default(0),
    checkpointEvery: positiveInt.default(100),
    logEvery: positiveInt.default(10),
    /**
     * The units of the L1 loss: `pixel` (default: on 0–255, as every model here outputs, SwinIR
     * included, whose features are in [0, 1] inside) or `unit` (on [0, 1]: L1/255, as the
     * official SwinIR trains). Under Adam this changes the regulariser's weight next to L1.
     */
    l1: z.enum(["pixel", "unit"]).default("pixel"),
  }).strict(),
  /**
   * Stages of your own for the training loop (`Train.Stage`: a logger, a monitor) and an early
   * stopping rule, called with each step's report. Not recorded in checkpoints.
   */
  hooks: z.object({
    stages: z.array(z.custom<Train.Stage>((v) => typeof v === "function", "expected a function"))
      .default([]),
    stopWhen: z.custom<(r: Train.StepReport) => boolean>(
      (v) => typeof v === "function",
      "expected a function",
    ).optional(),
  }).strict().default({ stages: [] }),
  data: z.object({
    /** A folder of HR training images, or `embedded`. */
    train: z.string().default("embedded"),
    /** A folder of HR evaluation images, or `embedded`. */
    eval: z.string().default("embedded"),
    /** Evaluate on at most this many images of the eval folder (all by default). */
    evalImages: positiveInt.optional(),
  }).strict().default({ train: "embedded", eval: "embedded" }),
}).strict();

/** A validated recipe. */
export type Recipe = z.output<typeof Schema>;
/** What a recipe file writes (defaults may be left out). */
export type Input = z.input<typeof Schema>;

/** A recipe failed validation; the message names each bad field. */
export class RecipeInvalid extends Data.TaggedError("RecipeInvalid")<{
  readonly source: string;
  readonly issues: string;
}> {
  override get message(): string {
    return `invalid recipe ${this.source}:\n${this.issues}`;
  }
}

/**
 * A recipe of the earlier format (method fields spread over `quant` and `distill`) as the method
 * it describes; other inputs come back unchanged.
 */
export function migrate(input: unknown): unknown {
  if (typeof input !== "object" || input === null) return input;
  const r = input as Record<string, unknown>;
  const q = r.quant as Record<string, unknown> | undefined;
  const legacy = q && ["weightRange", "activationRange", "dynamicLayers", "dynamicFraction"]
    .some((k) => k in q);
  if (r.method !== undefined || (!legacy && !("distill" in r))) return input;
  const { weightRange, activationRange, dynamicLayers, dynamicFraction: _, ...quant } = q ?? {};
  const { distill: _d, ...rest } = r;
  const act = activationRange as string | undefined;
  const method = act === "pams" || act === "daq" || act === "ddtb"
    ? act
    : weightRange === undefined || weightRange === "clipCorrected"
    ? "odm"
    : Methods.Odm.method({ weightRange: weightRange as Methods.Odm.WeightRange });
  return {
    ...rest,
    method,
    ...(dynamicLayers ? { decisions: { dynamic: dynamicLayers } } : {}),
    quant,
  };
}

/** Validates a recipe, throwing {@link RecipeInvalid} with every bad field named. */
export function parse(input: unknown, source = "recipe"): Recipe {
  const r = Schema.safeParse(migrate(input));
  if (!r.success) {
    const issues = r.error.issues.map((i) =>
      `  ✖ ${["recipe", ...i.path.map(String)].join(".")}: ${i.message}`
    )
      .join("\n");
    throw new RecipeInvalid({ source, issues });
  }
  return r.data;
}

/** Declares a recipe in a recipe file: validated when the file is loaded. */
export const make = (input: Input): Recipe => parse(input, "(recipe value)");

/** A recipe with some fields replaced (validated again). */
export function override(recipe: Recipe, patch: { steps?: number; seed?: number }): Recipe {
  return parse({
    ...recipe,
    train: {
      ...recipe.train,
      ...(patch.steps !== undefined ? { steps: patch.steps } : {}),
      ...(patch.seed !== undefined ? { seed: patch.seed } : {}),
    },
  }, "(overrides)");
}

/** The JSON form of a recipe's method (see {@link toJSON}). */
export function methodJSON(recipe: Recipe, module?: string): Method.Json {
  const m = recipe.method;
  return {
    name: m.name,
    ...(m.options && Object.keys(m.options).length ? { options: m.options } : {}),
    // The recipe file is recorded whenever there is one: a method that is not built in (or a
    // value that only shares a built-in's name) is rebuilt from the module that defines it.
    ...(module ? { module } : {}),
  };
}

/**
 * JSON form of a recipe for checkpoints and summaries. `module` is the recipe file it came from
 * (recorded for a method that is not built in, so that {@link fromJSON} can import it again).
 */
export function toJSON(recipe: Recipe, module?: string): unknown {
  const { hooks: _, ...rest } = recipe;
  return JSON.parse(JSON.stringify({ ...rest, method: methodJSON(recipe, module) }));
}

/** A recipe's JSON form (a checkpoint's) cannot be turned back into a recipe. */
export class MethodUnavailable extends Data.TaggedError("MethodUnavailable")<{
  readonly source: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.source}: ${this.reason}`;
  }
}

const MethodJson = z.object({
  name: z.string().min(1),
  options: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).optional(),
  module: z.string().optional(),
}).strict();

/**
 * The recipe of a recipe's JSON form: a built-in method rebuilt from its name and options, a
 * method of your own from the recipe module recorded with it (its default export's `method`).
 */
export async function fromJSON(json: unknown, source: string): Promise<Recipe> {
  const raw = migrate(json) as Record<string, unknown>;
  // A name, or (from an earlier format, migrated) a method value already.
  if (
    typeof raw !== "object" || raw === null || typeof raw.method !== "object" ||
    isMethod(raw.method)
  ) {
    return parse(raw, source);
  }
  const m = MethodJson.safeParse(raw.method);
  if (!m.success) {
    throw new RecipeInvalid({ source, issues: `  ✖ recipe.method: ${z.prettifyError(m.error)}` });
  }
  const { name, options, module } = m.data;
  const builtin = Methods.byName(name, options ?? {});
  let method: Method.Method | undefined;
  let problem = "";
  if (module) {
    try {
      const found = ((await import(module)) as { default?: { method?: unknown } }).default?.method;
      if (isMethod(found) && found.name === name) method = found;
      else problem = `${module} no longer exports a recipe whose method is "${name}"`;
    } catch (e) {
      problem = `method "${name}" is defined in ${module}, which cannot be loaded: ${
        (e as Error).message
      }`;
    }
  }
  method ??= builtin;
  if (!method) {
    throw new MethodUnavailable({
      source,
      reason: problem || `method "${name}" is not built in and no recipe module was recorded`,
    });
  }
  return parse({ ...raw, method }, source);
}

/** The method's scheme inputs that a recipe fixes. */
export const bitsOf = (r: Recipe): Method.Bits => ({ wbits: r.quant.wbits, abits: r.quant.abits });

/** True when a recipe trains full precision (32/32: no quantizer at all). */
export const isFullPrecision = (r: Recipe): boolean => r.quant.wbits === 32 && r.quant.abits === 32;
