/**
 * The ODM paper's setting for SRResNet (16 blocks, 64 channels, BN + PReLU) ×4 at W2A2: weight clipping
 * correction (Eq. 9) and the cooperative mismatch regulariser (Eq. 6, λ_M = 1e-5), 60K steps of
 * batch 8 on LR patches 48², starting from the FP32 model of `recipes/srresnet-x4-fp32.ts`.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "srresnet-x4-w2a2-odm",
  model: { arch: "srresnet", scale: 4, checkpoint: "runs/srresnet-x4-fp32/checkpoint.bin" },
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
