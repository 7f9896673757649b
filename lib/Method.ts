/**
 * A quantization method as one typed value: its quantizers and where they go, its merge rule for
 * the two gradient streams (Eq. 6 or another), its optimizer groups and learning rates, its extra
 * loss terms (PAMS's SKT, DDTB's gate regulariser), its calibration, the choices it makes from
 * data before training (DDTB's gated layers) and, through its quantizers, its cost.
 *
 * The training loop knows this type, never a method's name: ODM, PAMS, DDTB, DAQ, LSQ-style and
 * max are modules of lib/methods/ exporting one such value each, and a method of your own is a
 * value of the same type in your own file (usually built from the others' parts):
 *
 * ```ts
 * import * as Method from "../lib/Method.ts";
 * import * as Odm from "../lib/methods/odm.ts";
 * import * as Ddtb from "../lib/methods/ddtb.ts";
 * export const odmWithDdtbActs: Method.Method = {
 *   ...Odm.method(),
 *   name: "odm-ddtb-acts",
 *   scheme: (s) => [...Ddtb.activationRules(s, "body.blocks.*.conv2"), ...Odm.method().scheme(s)],
 * };
 * ```
 *
 * This module holds the type and the settings every method reads; it imports no method (so
 * that lib/Recipe.ts can name built-in methods without the cycle Recipe ↔ Baselines had).
 *
 * @module
 */
import type { Effect } from "effect";
import type * as tf from "@tensorflow/tfjs";
import type * as Cooperative from "./Cooperative.ts";
import type * as Data from "./Data.ts";
import type * as Nn from "./Nn.ts";
import type * as Optim from "./Optim.ts";
import type * as Quant from "./Quant.ts";
import type { Params } from "./Tree.ts";

/** The architecture families methods place quantizers for (esrgan-* are RDNs). */
export type Family = "edsr" | "rdn" | "srresnet" | "swinir";

/** Bit-widths: 1–8, or 32 for full precision. */
export interface Bits {
  readonly wbits: number;
  readonly abits: number;
}

/** Choices a method makes from data before training, recorded in the checkpoint (JSON). */
export type Decisions = Readonly<Record<string, unknown>>;

/** What a scheme is built from. */
export interface SchemeInput extends Bits {
  readonly family: Family;
  /** The full-precision network (to size a quantizer by its layer, e.g. DDTB's gates). */
  readonly model: Nn.AnyLayer;
  /** The j of percentile statistics (recipe `quant.percentile`, SPEC §2). */
  readonly percentile: number;
  /** The method's decisions ({@link Method.decide}); `{}` before they are made. */
  readonly decisions: Decisions;
  /** Training steps of the run (for step-dependent behaviour such as DDTB's gate stage). */
  readonly steps: number;
}

/** The recipe's `regularizer` settings (ODM's knobs; other methods may ignore them). */
export interface Regularizer {
  readonly merge: "cooperative" | "naive" | "reconstruction";
  readonly granularity: "tensor" | "global";
  readonly lambdaR: number;
  readonly lambdaM: number;
  readonly detach: boolean;
}

/** The recipe's training settings an optimizer reads. */
export interface TrainSettings {
  readonly steps: number;
  readonly lrWeights: number;
  readonly lrQuant: number;
  readonly decayEvery: number;
  readonly decayFactor: number;
}

/**
 * An extra term of the reconstruction stream, computed from tensors the forward pass observed
 * (`ctx.observe(path, x)`, e.g. DDTB's gate logits at `….aq.gate`), at a weight that may depend
 * on the step (0 turns it off).
 */
export interface Term {
  readonly name: string;
  readonly weight: (step: number) => number;
  /** The term from the observed tensors of one forward pass (by path). */
  readonly loss: (observed: ReadonlyMap<string, tf.Tensor>) => tf.Scalar;
}

/** What {@link Method.decide} may use. */
export interface DecideInput extends Bits {
  readonly family: Family;
  readonly model: Nn.AnyLayer;
  readonly params: Params;
  readonly percentile: number;
  readonly steps: number;
  readonly train: Data.Training;
  readonly batches: number;
  readonly batch: Data.BatchOptions;
}

/** A quantization method. */
export interface Method {
  /** Recorded in checkpoints; built-in methods are rebuilt from it and {@link options}. */
  readonly name: string;
  /** One line for tables. */
  readonly label: string;
  /** The JSON options of a built-in method (lib/methods/mod.ts rebuilds it from them). */
  readonly options?: Readonly<Record<string, string | number | boolean>>;
  /** The quantizers and where they go (`Quant.Rule`s: path patterns, layer kinds). */
  readonly scheme: (s: SchemeInput) => ReadonlyArray<Quant.Rule>;
  /** How g_R and g_M meet (Eq. 6, or reconstruction only). */
  readonly merge: (r: Regularizer) => Cooperative.Merge;
  /** Optimizer groups and learning rates. */
  readonly optimizer: (t: TrainSettings) => Optim.Transform;
  /** Distillation from the FP model on the input of the layer at `at` (PAMS's SKT). */
  readonly distill?: { readonly weight: number; readonly at: string };
  /** Further terms of the reconstruction stream (DDTB's gate regulariser). */
  readonly terms?: (s: { readonly steps: number }) => ReadonlyArray<Term>;
  /** Calibration batches (default: the recipe's `train.calibrationBatches`). */
  readonly calibrationBatches?: (recipeBatches: number) => number;
  /** Choices from data before training, with the FP model (DDTB: the gated layers). */
  readonly decide?: (d: DecideInput) => Effect.Effect<Decisions>;
}

/** The family of a recipe architecture name. */
export const familyOf = (arch: string): Family =>
  arch === "esrgan-slim" || arch === "esrgan-medium" ? "rdn" : (arch as Family);

/** The JSON form of a method (what a checkpoint's recipe records). */
export interface Json {
  readonly name: string;
  readonly options?: Readonly<Record<string, string | number | boolean>>;
  readonly decisions?: Decisions;
  /** Set for a method that is not built in: the recipe module that defines it. */
  readonly module?: string;
}
