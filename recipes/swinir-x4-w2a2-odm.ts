/**
 * The ODM paper's setting for SwinIR-S (embed 60, depths 6×4, heads 6, window 8) ×4 at W2A2: weight clipping
 * correction (Eq. 9) and the cooperative mismatch regulariser (Eq. 6, λ_M = 1e-5), 60K steps of
 * batch 8 on LR patches 48², starting from the FP32 model of `recipes/swinir-x4-fp32.ts`.
 *
 * Units: SwinIR's features are in [0, 1] inside the network (it divides its input by 255 and
 * multiplies its output back), its output and the L1 loss are on 0–255 here as for every model;
 * `train.l1: "unit"` trains on the L1 of [0, 1] images instead, as the official SwinIR does, which
 * makes λ_M relatively 255× larger.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "swinir-x4-w2a2-odm",
  model: { arch: "swinir", scale: 4, checkpoint: "runs/swinir-x4-fp32/checkpoint.bin" },
  method: "odm",
  quant: { wbits: 2, abits: 2 },
  regularizer: { merge: "cooperative", lambdaM: 1e-5 },
  train: {
    steps: 60000,
    batch: 8,
    patch: 48,
    decayEvery: 15000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
