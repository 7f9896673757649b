/**
 * One training step of a recipe, ready to time: the recipe's quantized model from its starting
 * parameters, a fixed random LR/HR batch of the recipe's batch and patch size, and `Train.step`
 * with one read-back per step, as an unlogged training step: the gradient statistics of
 * Fig. 2 (cosine, conflict share, regulariser ratio) are computed only on logged steps in
 * training (every `logEvery`), and bench/reference/step.py computes none either. Shared by bench/step.ts and
 * bench/train_step.bench.ts.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import type * as Recipe from "../lib/Recipe.ts";
import * as Train from "../lib/Train.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";

/** A step to run repeatedly, and what frees its tensors. */
export interface Stepper {
  readonly run: () => Promise<void>;
  readonly dispose: () => void;
}

/** A {@link Stepper} for `recipe` (seed 0, batch and patch from `recipe.train`). */
export async function stepper(recipe: Recipe.Recipe): Promise<Stepper> {
  const { batch, patch } = recipe.train;
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const quantized = Registry.quantize(recipe, built);
  const params = Tree.flatten(Tree.merge(quantized.init(0), built.params));
  const cfg = Train.configOf(recipe, quantized);
  let state = Train.initialState(cfg, params);
  const s = recipe.model.scale;
  const lr = tf.randomUniform([batch, patch, patch, 3], 0, 255, "float32", 1) as tf.Tensor4D;
  const hr = tf.randomUniform(
    [batch, patch * s, patch * s, 3],
    0,
    255,
    "float32",
    2,
  ) as tf.Tensor4D;
  return {
    run: async () => {
      const out = Train.step(cfg, state, { lr, hr }, { stats: false });
      await out.report.data(); // one read-back per step, as in training
      out.report.dispose();
      Train.dispose(state);
      state = out.state;
    },
    dispose: () => {
      Train.dispose(state);
      lr.dispose();
      hr.dispose();
    },
  };
}
