/**
 * The workload of tests/leak.test.ts's RSS test, in a process of its own: 300 ODM steps of a
 * small EDSR; prints `{"rss50", "rss300"}` (MiB) as its last line.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import * as Backend from "../lib/Backend.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Train from "../lib/Train.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";

await Backend.initialize();
const recipe = Recipe.parse({
  name: "rss",
  model: { arch: "edsr", scale: 2, options: { numFeat: 8, numBlock: 2 } },
  quant: { wbits: 2, abits: 2 },
  regularizer: { merge: "cooperative", lambdaM: 1e-5 },
  train: { steps: 300, batch: 2, patch: 8 },
});
const built = await Effect.runPromise(Registry.build(recipe.model, 0));
const quantized = Registry.quantize(recipe, built);
const cfg = Train.configOf(recipe, quantized);
let state = Train.initialState(cfg, Tree.flatten(Tree.merge(quantized.init(0), built.params)));
const lr = tf.randomUniform([2, 8, 8, 3], 0, 255, "float32", 1) as tf.Tensor4D;
const hr = tf.image.resizeNearestNeighbor(lr, [16, 16]);
const rss: number[] = [];
for (let i = 1; i <= 300; i++) {
  const out = Train.step(cfg, state, { lr, hr }, { stats: i % 10 === 0 });
  const l1 = (await out.report.data())[0];
  if (!Number.isFinite(l1)) throw new Error(`step ${i}: L1 ${l1}`);
  out.report.dispose();
  Train.dispose(state);
  state = out.state;
  if (i === 50 || i === 300) rss.push(Deno.memoryUsage().rss / 2 ** 20);
}
Train.dispose(state);
tf.dispose([lr, hr]);
console.log(JSON.stringify({ rss50: rss[0], rss300: rss[1] }));
