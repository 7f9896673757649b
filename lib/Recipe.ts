/**
 * Recipes: a whole experiment as one typed, validated value — model, scale, bit-widths, the
 * quantization method (range policies, mismatch regulariser, merge rule), training schedule,
 * data and seed. A recipe file exports one with `export default Recipe.make({ … })`.
 *
 * Defaults are the ODM paper's settings (SPEC §1–§7). Validation (zod) happens before any work
 * and names the offending field: `recipe.train.batch: Too small: expected number to be >0`.
 *
 * @module
 */
import { Data } from "effect";
import * as z from "zod";
import * as Baselines from "./Baselines.ts";
import * as Quantizer from "./Quantizer.ts";
import * as Range from "./Range.ts";

const bits = z.union([z.number().int().min(1).max(8), z.literal(32)]);
const positiveInt = z.number().int().positive();
const isQuantizer = (v: unknown): v is Quantizer.Any =>
  typeof v === "object" && v !== null && typeof (v as Quantizer.Any).apply === "function" &&
  typeof (v as Quantizer.Any).bits === "number";

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
  quant: z.object({
    /** Weight bits (32 = full precision). */
    wbits: bits,
    /** Activation bits (32 = full precision). */
    abits: bits,
    /**
     * Weight range: `clipCorrected` (Eq. 9, ODM), `learnable` (Eq. 8), `max` (Eq. 7),
     * `percentile`, or `pams` (max|W| with a zero level, `Baselines.pamsWeight`).
     */
    weightRange: z.enum(["clipCorrected", "learnable", "max", "percentile", "pams"]).default(
      "clipCorrected",
    ),
    /**
     * Activation range: `learnable` bounds initialised by calibration (ODM), per-batch
     * `max`/`percentile`, `pams` (learnable symmetric α, `Baselines.pamsActivation`), `daq`
     * (per-image channel-wise normalisation, `Baselines.daq`) or `ddtb` (learnable bounds, a
     * per-image gate on the most variable layers, `Baselines.ddtb`).
     */
    activationRange: z.enum(["learnable", "max", "percentile", "pams", "daq", "ddtb"]).default(
      "learnable",
    ),
    /**
     * DDTB: the layers (dotted paths) that get a per-image gate. Left out, training picks them
     * from the data (`Baselines.selectDynamic`, {@link dynamicFraction} of the layers) and
     * records them in the checkpoint's recipe.
     */
    dynamicLayers: z.array(z.string().min(1)).optional(),
    /** DDTB: share of the quantized layers that get a gate when they are picked from data. */
    dynamicFraction: z.number().gt(0).max(1).default(0.3),
    /** The j of the percentile statistics (SPEC §2, §5). */
    percentile: z.number().gt(0.5).max(1).default(0.99),
    /** Your own quantizers, overriding the named ranges (any `Quantizer.Quantizer` values). */
    weightQuantizer: z.custom<Quantizer.Any>(isQuantizer, "expected a Quantizer").optional(),
    inputQuantizer: z.custom<Quantizer.Any>(isQuantizer, "expected a Quantizer").optional(),
  }).strict().superRefine((q, ctx) => {
    if (q.dynamicLayers && q.activationRange !== "ddtb") {
      ctx.addIssue({
        code: "custom",
        path: ["dynamicLayers"],
        message: `only used with activationRange "ddtb", not "${q.activationRange}"`,
      });
    }
  }),
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
  /**
   * Distillation from the full-precision model (PAMS's SKT): `weight · MSE(at(student),
   * at(teacher))` is added to the reconstruction loss, on the input of the layer at `at` (the
   * body output: every model here names its upsampler `upsample`). 0 turns it off.
   */
  distill: z.object({
    weight: z.number().nonnegative().default(0),
    at: z.string().min(1).default("upsample"),
  }).strict().default({ weight: 0, at: "upsample" }),
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
  }).strict(),
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

/** Validates a recipe, throwing {@link RecipeInvalid} with every bad field named. */
export function parse(input: unknown, source = "recipe"): Recipe {
  const r = Schema.safeParse(input);
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

/** JSON form of a recipe for checkpoints and summaries (custom quantizers by name). */
export function toJSON(recipe: Recipe): unknown {
  return JSON.parse(JSON.stringify(recipe, (k, v) => {
    if ((k === "weightQuantizer" || k === "inputQuantizer") && v) {
      return `custom:${(v as Quantizer.Any).name}`;
    }
    return v;
  }));
}

/**
 * The weight and activation quantizers a recipe describes (undefined when both are 32-bit:
 * full-precision training). Weights are symmetric, activations asymmetric (SPEC §1).
 */
export function quantizers(
  r: Recipe,
): { readonly weight: Quantizer.Any; readonly input: Quantizer.Any } | undefined {
  const q = r.quant;
  if (q.wbits === 32 && q.abits === 32 && !q.weightQuantizer && !q.inputQuantizer) return undefined;
  const j = q.percentile;
  const weightRange = {
    clipCorrected: () => Range.clipCorrected(j),
    learnable: () => Range.learnable(Range.percentile(j)),
    max: () => Range.max,
    percentile: () => Range.percentile(j),
    pams: () => Range.max,
  }[q.weightRange]();
  const inputRange = {
    learnable: () => Range.learnable(Range.percentile(j)),
    max: () => Range.max,
    percentile: () => Range.percentile(j),
  };
  // Baselines (SPEC §11) that are whole quantizers rather than range policies.
  const weight = q.weightRange === "pams"
    ? Baselines.pamsWeight(q.wbits)
    : Quantizer.symmetric({ bits: q.wbits, range: weightRange as Range.Range });
  const input = q.activationRange === "pams"
    ? Baselines.pamsActivation(q.abits)
    : q.activationRange === "daq"
    ? Baselines.daq(q.abits)
    : q.activationRange === "ddtb"
    ? Baselines.ddtb(q.abits, { percentile: j })
    : Quantizer.asymmetric({
      bits: q.abits,
      range: inputRange[q.activationRange]() as Range.Range,
    });
  return {
    weight: q.weightQuantizer ?? weight,
    input: q.inputQuantizer ?? input,
  };
}
