/**
 * The default job of `deno task train`: the pretrained `@upscalerjs/esrgan-slim` ×4 network
 * (an RDN trained on DIV2K), quantized to W4A4 with ODM (weight clipping correction +
 * cooperative mismatch regularization) on the embedded images. Sized to finish in under
 * 15 minutes on a 2-core CPU without a GPU.
 */
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "default",
  model: { arch: "esrgan-slim", scale: 4, pretrained: true },
  method: "odm",
  quant: { wbits: 4, abits: 4 },
  regularizer: { merge: "cooperative", lambdaM: 1e-6 }, // RDN family: λ_M = 1e-6 (SPEC §4)
  train: {
    steps: 200,
    batch: 4,
    patch: 32,
    calibrationBatches: 8,
    checkpointEvery: 50,
    logEvery: 10,
    seed: 0,
  },
});
