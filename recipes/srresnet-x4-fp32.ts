/**
 * FP32 training of SRResNet (16 blocks, 64 channels, BN + PReLU) ×4 from scratch: the starting point that
 * `recipes/srresnet-x4-w2a2-odm.ts` quantizes. Point `data.train` at DIV2K_train_HR for the real
 * thing; the embedded images only make a quick demonstration.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "srresnet-x4-fp32",
  model: { arch: "srresnet", scale: 4 },
  quant: { wbits: 32, abits: 32 },
  regularizer: { merge: "reconstruction" },
  train: {
    steps: 300000,
    batch: 16,
    patch: 48,
    lrWeights: 2e-4,
    decayEvery: 200000,
    checkpointEvery: 1000,
  },
});
