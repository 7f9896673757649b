/**
 * A training step with tfjs's stock conv kernels vs ours, in one process: the tiny EDSR ×4 of
 * PLATFORM.md (4 blocks × 32 channels, batch 4, LR 24², Adam) and an EDSR-baseline body width
 * (16 × 64, batch 8, LR 48²), FP32 and plain W4A4 QAT. Prints the median seconds per step and the
 * ratio, with the backend named. The stock EDSR-baseline step takes minutes: it runs once,
 * shader compilation included (a few seconds of it).
 *
 *   deno run -A bench/step.ts [--quick]
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import * as Backend from "../lib/Backend.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Train from "../lib/Train.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";

const info = await Backend.initialize({ log: false });
const quick = Deno.args.includes("--quick");
console.log(`backend: ${info.name} (${info.adapter})`);

type Method = "fp32" | "plain";

async function stepper(
  model: Recipe.Input["model"],
  method: Method,
  batch: number,
  patch: number,
): Promise<() => Promise<void>> {
  const recipe = Recipe.parse({
    name: `step-${method}`,
    model,
    quant: method === "fp32" ? { wbits: 32, abits: 32 } : { wbits: 4, abits: 4 },
    regularizer: { merge: "reconstruction" },
    train: { steps: 1, batch, patch },
  });
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const q = Recipe.quantizers(recipe);
  const quantized = q ? Quant.quantize(built.model, built.placement(q)) : built.model;
  const params = Tree.flatten(Tree.merge(quantized.init(0), built.params));
  const cfg = Train.configOf(recipe, quantized);
  let state = Train.initialState(cfg, params);
  const s = recipe.model.scale;
  const lr = tf.randomUniform([batch, patch, patch, 3], 0, 255, "float32", 1) as tf.Tensor4D;
  const hr = tf.randomUniform([batch, patch * s, patch * s, 3], 0, 255, "float32", 2);
  return async () => {
    const out = Train.step(cfg, state, { lr, hr: hr as tf.Tensor4D });
    await out.report.data(); // one read-back per step, as in training
    out.report.dispose();
    Train.dispose(state);
    state = out.state;
  };
}

async function seconds(run: () => Promise<void>, n: number): Promise<number> {
  if (n > 1) await run(); // compiles the shaders (a single slow step keeps its compile time)
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await run();
    times.push((performance.now() - t0) / 1000);
  }
  return times.sort((a, b) => a - b)[Math.floor(n / 2)];
}

const configs = [
  {
    name: "tiny EDSR ×4 (4×32, batch 4, LR 24²)",
    model: { arch: "edsr", scale: 4, options: { numFeat: 32, numBlock: 4 } },
    batch: 4,
    patch: 24,
    n: { stock: 3, ours: 5 },
  },
  {
    name: "EDSR-baseline ×4 (16×64, batch 8, LR 48²)",
    model: { arch: "edsr", scale: 4, options: { numFeat: 64, numBlock: 16 } },
    batch: 8,
    patch: 48,
    n: { stock: 1, ours: 3 },
  },
] as const;

for (const c of quick ? configs.slice(0, 1) : configs) {
  for (const method of ["fp32", "plain"] as const) {
    const t: Record<string, number> = {};
    for (const which of ["stock", "ours"] as const) {
      Kernels.install(info, which);
      const run = await stepper(c.model as Recipe.Input["model"], method, c.batch, c.patch);
      t[which] = await seconds(run, c.n[which]);
    }
    console.log(
      `${c.name} ${method}: stock ${t.stock.toFixed(2)} s/step, ours ${t.ours.toFixed(2)} s/step ` +
        `(${(t.stock / t.ours).toFixed(1)}×)`,
    );
  }
}
Kernels.install(info);
