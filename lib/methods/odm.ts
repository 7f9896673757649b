/**
 * ODM ("Overcoming Distribution Mismatch in Quantizing Image Super-Resolution Networks", Hong &
 * Lee, ECCV 2024), the method this project is built for:
 *
 * - weights symmetric `[−u_w, u_w]` with weight clipping correction, `u_w = percentile_j(|W|)·γ`
 *   (Eq. 9), γ learned;
 * - activations asymmetric `[l_a, u_a]`, learnable, initialised to the mean over calibration
 *   batches of the 1st/99th percentiles of the FP input (Eq. 8, SPEC §2);
 * - the cooperative mismatch regulariser: `g = λ_R g_R + λ_M·sim(g_R, g_M)·g_M` (Eq. 6), with
 *   the recipe's `regularizer` settings (λ_M, one cosine per tensor or one global cosine);
 * - Adam with two groups: weights at `train.lrWeights`, quantizer parameters at
 *   `train.lrQuant`, both halved every `train.decayEvery` steps (SPEC §7);
 * - the placement of SPEC §6 (each model's `placement`).
 *
 * {@link method} takes the ablation's knobs (Table 7): the weight range (Eq. 7 max, Eq. 8
 * learnable, Eq. 9 clip-corrected, or a plain percentile) and the merge rule.
 *
 * @module
 */
import * as Cooperative from "../Cooperative.ts";
import type * as Method from "../Method.ts";
import * as Optim from "../Optim.ts";
import * as Quant from "../Quant.ts";
import * as Quantizer from "../Quantizer.ts";
import * as Range from "../Range.ts";
import * as Placement from "./placement.ts";

/** The weight ranges of Table 7. */
export type WeightRange = "clipCorrected" | "learnable" | "max" | "percentile";

/** Options of {@link method}. */
export interface Options {
  /** Default `clipCorrected` (Eq. 9). */
  readonly weightRange?: WeightRange;
  /** Default: the recipe's `regularizer.merge`. */
  readonly merge?: Method.Regularizer["merge"];
  /** Default: the recipe's `regularizer.granularity`. */
  readonly granularity?: Method.Regularizer["granularity"];
}

/** The weight range policy of a name (percentile j from the recipe). */
export function weightRange(name: WeightRange, j: number): Range.Range {
  switch (name) {
    case "clipCorrected":
      return Range.clipCorrected(j) as unknown as Range.Range;
    case "learnable":
      return Range.learnable(Range.percentile(j)) as unknown as Range.Range;
    case "max":
      return Range.max;
    case "percentile":
      return Range.percentile(j);
  }
}

/** ODM's quantizers: symmetric weights with `range`, learnable asymmetric activations. */
export function quantizers(
  s: Method.Bits & { readonly percentile: number },
  range: WeightRange = "clipCorrected",
): { readonly weight: Quantizer.Any; readonly input: Quantizer.Any } {
  return {
    weight: Quantizer.symmetric({ bits: s.wbits, range: weightRange(range, s.percentile) }),
    input: Quantizer.asymmetric({
      bits: s.abits,
      range: Range.learnable(Range.percentile(s.percentile)),
    }),
  };
}

/** The merge rule of a recipe's regularizer settings (Eq. 6, Table 7 (d), or none). */
export const mergeOf = (r: Method.Regularizer): Cooperative.Merge =>
  r.merge === "cooperative"
    ? Cooperative.cooperative({
      lambdaR: r.lambdaR,
      lambdaM: r.lambdaM,
      granularity: r.granularity,
    })
    : r.merge === "naive"
    ? Cooperative.naive({ lambdaR: r.lambdaR, lambdaM: r.lambdaM })
    : Cooperative.reconstructionOnly({ lambdaR: r.lambdaR });

/**
 * SPEC §7's optimizer: Adam for the weights at `lrWeights` and for the quantizer parameters
 * at `quantLr` (default `lrQuant`), both decayed by `decayFactor` every `decayEvery` steps.
 */
export const optimizer = (t: Method.TrainSettings, quantLr = t.lrQuant): Optim.Transform =>
  optimizerBy(t, quantLr, Quant.isQuantizerParam);

/**
 * Two Adam groups with the same step decay: the parameters for which `fast(path)` holds at
 * `fastLr`, all others at `lrWeights` (DDTB: its bounds at 1e-2, its gates with the weights).
 */
export const optimizerBy = (
  t: Method.TrainSettings,
  fastLr: number,
  fast: (path: string) => boolean,
): Optim.Transform =>
  Optim.partition(
    {
      weights: Optim.adam({ lr: Optim.stepDecay(t.lrWeights, t.decayEvery, t.decayFactor) }),
      quant: Optim.adam({ lr: Optim.stepDecay(fastLr, t.decayEvery, t.decayFactor) }),
    },
    (p) => (fast(p) ? "quant" : "weights"),
  );

/** ODM, or one of its Table 7 variants. */
export function method(o: Options = {}): Method.Method {
  const range = o.weightRange ?? "clipCorrected";
  const options = {
    ...(o.weightRange ? { weightRange: o.weightRange } : {}),
    ...(o.merge ? { merge: o.merge } : {}),
    ...(o.granularity ? { granularity: o.granularity } : {}),
  };
  return {
    name: "odm",
    label: Object.keys(options).length === 0
      ? "ODM (WCC + cooperative MR)"
      : `ODM (${range}${o.merge ? `, ${o.merge}` : ""}${
        o.granularity ? `, ${o.granularity}` : ""
      })`,
    options,
    scheme: (s) => Placement.odm(s.family, quantizers(s, range)),
    merge: (r) =>
      mergeOf({ ...r, merge: o.merge ?? r.merge, granularity: o.granularity ?? r.granularity }),
    optimizer: (t) => optimizer(t),
  };
}

/** ODM as the paper runs it. */
export const odm: Method.Method = method();
