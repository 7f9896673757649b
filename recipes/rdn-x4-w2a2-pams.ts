/**
 * PAMS at W2A2 on RDN (config B) ×4 as its official code trains it: colorjam/PAMS `run.sh` and `option.py`: 30 epochs of 1000 batches of 16, the learning rate halved every 10 epochs (`--decay 10 --gamma 0.5`);
 * patches LR 24² (HR 96², `--patch_size 96`). Starts from the FP32 model of `recipes/rdn-x4-fp32.ts` (or one imported with
 * `deno task import`).
 */
import { pams } from "../lib/methods/pams.ts";
import * as Recipe from "../lib/Recipe.ts";

export default Recipe.make({
  name: "rdn-x4-w2a2-pams",
  model: { arch: "rdn", scale: 4, checkpoint: "runs/rdn-x4-fp32/checkpoint.bin" },
  method: pams,
  quant: { wbits: 2, abits: 2 },
  train: {
    steps: 30000,
    batch: 16,
    patch: 24,
    decayEvery: 10000,
    checkpointEvery: 1000,
    logEvery: 100,
  },
});
