/**
 * DDTB at W2A2 on EDSR-baseline ×4 as its official code trains it: zysxmu/DDTB `run.sh` and `option.py`: 60 epochs of 1000 batches of 16, the learning rate halved every 10 epochs; its first epoch is the statistics pass, here the calibration batches;
 * patches LR 48² (HR 192², `--patch_size 192`). Starts from the FP32 model of `recipes/edsr-x4-fp32.ts` (or one imported with
 * `deno task import`).
 */
import { ddtb } from "../lib/methods/ddtb.ts";
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "edsr-x4-w2a2-ddtb",
  model: { arch: "edsr", scale: 4, checkpoint: "runs/edsr-x4-fp32/checkpoint.bin" },
  method: ddtb,
  quant: { wbits: 2, abits: 2 },
  train: {
    steps: 60000,
    batch: 16,
    patch: 48,
    decayEvery: 10000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
