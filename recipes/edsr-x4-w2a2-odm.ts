/**
 * The ODM paper's EDSR setting (Table 2): EDSR-baseline ×4 at W2A2, weight clipping correction
 * (Eq. 9, j = 0.99) and the cooperative mismatch regulariser (Eq. 6, λ_M = 1e-5), 60K steps of
 * batch 8, LR patches 48², Adam lr 1e-4 (weights) / 1e-3 (quantizer parameters) halved every
 * 15K steps, starting from the FP32 model trained by `recipes/edsr-x4-fp32.ts`.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "edsr-x4-w2a2-odm",
  model: { arch: "edsr", scale: 4, checkpoint: "runs/edsr-x4-fp32/checkpoint.bin" },
  method: "odm",
  quant: { wbits: 2, abits: 2, percentile: 0.99 },
  regularizer: {
    merge: "cooperative",
    granularity: "tensor",
    lambdaR: 1,
    lambdaM: 1e-5,
    detach: true,
  },
  train: {
    steps: 60000,
    batch: 8,
    patch: 48,
    lrWeights: 1e-4,
    lrQuant: 1e-3,
    decayEvery: 15000,
    decayFactor: 0.5,
    calibrationBatches: 13,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
