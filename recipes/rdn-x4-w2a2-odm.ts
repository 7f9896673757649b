/**
 * The ODM paper's setting for RDN (config B: G0 64, D 16, C 8, G 64) ×4 at W2A2: weight clipping
 * correction (Eq. 9) and the cooperative mismatch regulariser (Eq. 6, λ_M = 1e-6), 60K steps of
 * batch 8 on LR patches 24² (the RDN patch of PAMS's and DDTB's scripts), starting from the FP32
 * model of `recipes/rdn-x4-fp32.ts`.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "rdn-x4-w2a2-odm",
  model: { arch: "rdn", scale: 4, checkpoint: "runs/rdn-x4-fp32/checkpoint.bin" },
  method: "odm",
  quant: { wbits: 2, abits: 2 },
  regularizer: { merge: "cooperative", lambdaM: 1e-6 },
  train: {
    steps: 60000,
    batch: 8,
    patch: 24, // LR 24² = HR 96² at ×4, PAMS's and DDTB's run.sh for RDN (`--patch_size 96`)
    decayEvery: 15000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
