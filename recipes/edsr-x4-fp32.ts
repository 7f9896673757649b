/**
 * FP32 training of EDSR-baseline ×4 (16 blocks, 64 channels) from scratch, the starting point
 * the ODM paper quantizes (SPEC §7, §10). Point `data.train` at DIV2K_train_HR for the real
 * thing; the embedded images only make a quick demonstration.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "edsr-x4-fp32",
  model: { arch: "edsr", scale: 4 },
  quant: { wbits: 32, abits: 32 },
  regularizer: { merge: "reconstruction" },
  train: {
    steps: 300000,
    batch: 16,
    patch: 48,
    lrWeights: 1e-4,
    decayEvery: 200000,
    checkpointEvery: 1000,
  },
});
