/**
 * A real pretrained start on any machine: `@upscalerjs/esrgan-medium` ×4 (RDN, D 10, G 64,
 * trained on DIV2K) quantized to W2A2 with ODM. λ_M = 1e-6 as the paper uses for RDN.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "esrgan-medium-x4-w2a2-odm",
  model: { arch: "esrgan-medium", scale: 4, pretrained: true },
  method: "odm",
  quant: { wbits: 2, abits: 2 },
  regularizer: { merge: "cooperative", lambdaM: 1e-6 },
  train: { steps: 2000, batch: 8, patch: 48, decayEvery: 1000, checkpointEvery: 100 },
});
