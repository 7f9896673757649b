/**
 * The cost of a training step by method, in one process: FP32, plain QAT (W4A4, learnable
 * ranges, reconstruction loss only: one forward and one backward pass) and ODM (weight
 * clipping correction + cooperative mismatch regulariser: one forward, two backward walks, the
 * merge), on a tiny EDSR and on the pretrained esrgan-slim of the default recipe. Deno.bench prints each
 * method's time relative to the FP32 baseline of its group.
 *
 *   deno bench -A bench/train_step.bench.ts
 */
import * as Backend from "../lib/Backend.ts";
import * as Recipe from "../lib/Recipe.ts";
import { stepper } from "./_stepper.ts";

const info = await Backend.initialize();

type Method = "fp32" | "plain" | "odm";

const recipeOf = (model: Recipe.Input["model"], method: Method, batch: number, patch: number) =>
  Recipe.parse({
    name: `bench-${method}`,
    model,
    quant: method === "fp32"
      ? { wbits: 32, abits: 32 }
      : { wbits: 4, abits: 4, weightRange: method === "odm" ? "clipCorrected" : "learnable" },
    regularizer: { merge: method === "odm" ? "cooperative" : "reconstruction" },
    train: { steps: 1, batch, patch },
  });

const configs = [
  {
    group: "tiny EDSR ×4 (4×32, batch 4, LR 24²)",
    model: { arch: "edsr", scale: 4, options: { numFeat: 32, numBlock: 4 } },
    batch: 4,
    patch: 24,
  },
  {
    group: "esrgan-slim ×4 (default recipe: batch 4, LR 32²)",
    model: { arch: "esrgan-slim", scale: 4, pretrained: true },
    batch: 4,
    patch: 32,
  },
] as const;

for (const c of configs) {
  for (const method of ["fp32", "plain", "odm"] as const) {
    const { run } = await stepper(
      recipeOf(c.model as Recipe.Input["model"], method, c.batch, c.patch),
    );
    await run(); // compile the shaders outside the timing
    Deno.bench({
      name: `${method} step`,
      group: `${c.group} on ${info.name} (${info.adapter})`,
      baseline: method === "fp32",
      n: 5,
      warmup: 1,
      fn: run,
    });
  }
}
