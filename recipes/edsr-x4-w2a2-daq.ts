/**
 * DAQ at W2A2 on EDSR-baseline ×4 as its official code trains it: Cheeun/DAQ-pytorch `README.md` ("trained for 60 epochs") and `src/option.py` (1000 batches of 16 per epoch, `--decay 150`: no decay within 60 epochs);
 * patches LR 48² (HR 192², `--patch_size 192`). Starts from the FP32 model of `recipes/edsr-x4-fp32.ts` (or one imported with
 * `deno task import`).
 */
import { daq } from "../lib/methods/daq.ts";
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "edsr-x4-w2a2-daq",
  model: { arch: "edsr", scale: 4, checkpoint: "runs/edsr-x4-fp32/checkpoint.bin" },
  method: daq,
  quant: { wbits: 2, abits: 2 },
  train: {
    steps: 60000,
    batch: 16,
    patch: 48,
    decayEvery: 150000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
