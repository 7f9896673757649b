/**
 * DAQ at W2A2 on RDN (config B) ×4 as its official code trains it: Cheeun/DAQ-pytorch `README.md` ("trained for 60 epochs") and `src/option.py` (1000 batches of 16 per epoch, `--decay 150`: no decay within 60 epochs);
 * patches LR 24² (HR 96², `--patch_size 96`). Starts from the FP32 model of `recipes/rdn-x4-fp32.ts` (or one imported with
 * `deno task import`).
 */
import { daq } from "../lib/methods/daq.ts";
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "rdn-x4-w2a2-daq",
  model: { arch: "rdn", scale: 4, checkpoint: "runs/rdn-x4-fp32/checkpoint.bin" },
  method: daq,
  quant: { wbits: 2, abits: 2 },
  train: {
    steps: 60000,
    batch: 16,
    patch: 24,
    decayEvery: 150000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
