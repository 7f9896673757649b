/**
 * PAMS's training pieces: the SKT attention-transfer loss against a hand computation and a
 * float64 reference, its wiring into the training step (zero when the student is the teacher,
 * reported unweighted), and α's EMA initialisation over the calibration batches.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertAlmostEquals, assertEquals, assertGreater } from "@std/assert";
import * as Baselines from "../lib/Baselines.ts";
import * as Calibration from "../lib/Calibration.ts";
import * as Data from "../lib/Data.ts";
import * as Loss from "../lib/Loss.ts";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Train from "../lib/Train.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";
import { scalar, values } from "./_setup.ts";

const tinyDir = new URL("./fixtures/tiny/", import.meta.url).pathname;

Deno.test("attention map: mean over channels of x², L2-normalised per image (by hand)", async () => {
  // One image, 1×2 pixels, 2 channels: mean_C(x²) = [(1 + 9)/2, (4 + 0)/2] = [5, 2].
  const a = await values(Loss.attention(tf.tensor4d([[[[1, 3], [-2, 0]]]])));
  const n = Math.sqrt(25 + 4);
  assertAlmostEquals(a[0], 5 / n, 1e-6);
  assertAlmostEquals(a[1], 2 / n, 1e-6);
});

Deno.test("SKT loss equals a float64 reference and is 0 for identical features", async () => {
  const shape = [2, 3, 2, 4] as const;
  const s = tf.randomNormal([...shape], 0, 1, "float32", 1) as tf.Tensor4D;
  const t = tf.randomNormal([...shape], 0, 1, "float32", 2) as tf.Tensor4D;
  const [sv, tv] = [await values(s), await values(t)];
  const at = (v: number[]) => {
    const out: number[] = [];
    for (let n = 0; n < 2; n++) {
      const m = Array.from({ length: 6 }, (_, p) => {
        let acc = 0;
        for (let c = 0; c < 4; c++) acc += v[(n * 6 + p) * 4 + c] ** 2;
        return acc / 4;
      });
      const norm = Math.sqrt(m.reduce((a, b) => a + b * b, 0));
      out.push(...m.map((x) => x / norm));
    }
    return out;
  };
  const [as, ats] = [at(sv), at(tv)];
  const ref = as.reduce((acc, v, i) => acc + (v - ats[i]) ** 2, 0) / as.length;
  assertAlmostEquals(await scalar(Loss.attentionTransfer(s, t)), ref, 1e-7);
  assertEquals(await scalar(Loss.attentionTransfer(s, s)), 0);
  // The teacher is a constant: no gradient reaches it.
  const [gs, gt] = tf.grads((a, b) => Loss.attentionTransfer(a as tf.Tensor4D, b as tf.Tensor4D))([
    s,
    t,
  ]);
  assert((await values(gs)).some((v) => v !== 0));
  assert((await values(gt)).every((v) => v === 0));
});

const recipeOf = (quant: Recipe.Input["quant"], weight: number) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    quant,
    regularizer: { merge: "reconstruction" },
    distill: { weight },
    train: { steps: 1, batch: 2, patch: 6 },
  });

async function stepReport(recipe: Recipe.Recipe) {
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const model = Registry.quantize(recipe, built);
  const teacher = { model: built.model, params: built.params };
  const cfg = Train.configOf(recipe, model, recipe.distill.weight > 0 ? teacher : undefined);
  const params = Tree.flatten(Tree.merge(model.init(0), built.params));
  const state = Train.initialState(cfg, params);
  const lr = tf.randomUniform([2, 6, 6, 3], 0, 255, "float32", 5) as tf.Tensor4D;
  const hr = tf.randomUniform([2, 12, 12, 3], 0, 255, "float32", 6) as tf.Tensor4D;
  const out = Train.step(cfg, state, { lr, hr });
  const [l1, , , , distill] = await values(out.report);
  Train.dispose(out.state);
  tf.dispose([out.report, lr, hr, ...state.opt.values(), ...params.values()]);
  return { l1, distill };
}

Deno.test("training with SKT: 0 when the student is the teacher; L1 is reported unweighted", async () => {
  const fp = await stepReport(recipeOf({ wbits: 32, abits: 32 }, 1e3));
  assertEquals(fp.distill, 0);
  const pams = { wbits: 2, abits: 2, weightRange: "pams", activationRange: "pams" } as const;
  const withSkt = await stepReport(recipeOf(pams, 1e3));
  const without = await stepReport(recipeOf(pams, 0));
  assertGreater(withSkt.distill, 0);
  assert(Number.isFinite(withSkt.distill));
  assertEquals(without.distill, 0);
  assertAlmostEquals(withSkt.l1, without.l1, 1e-5 * without.l1);
});

Deno.test("the PAMS method: SKT weight 1e3, α at lr 1e-2, α initialised by an EMA of max|x|", async () => {
  const base = recipeOf({ wbits: 4, abits: 4 }, 0);
  const pams = Recipe.parse(Baselines.vary(base, "pams", Baselines.methods.pams));
  assertEquals(pams.distill.weight, 1e3);
  assertEquals(pams.train.lrQuant, 1e-2);
  // EMA over two calibration batches: α = d·max|x|₀ + (1 − d)·max|x|₁ at every layer.
  const built = await Effect.runPromise(Registry.build(pams.model, 0));
  const model = Registry.quantize(pams, built);
  const ds = await Effect.runPromise(Data.load(tinyDir, 2));
  const batch = { batch: 2, patch: 6, seed: 7 };
  const params = Tree.merge(model.init(0), built.params);
  const cal = await Effect.runPromise(
    Calibration.calibrate(model, params, ds, { batches: 2, batch }),
  );
  const d = Baselines.PAMS_EMA_DECAY;
  // The oracle: each batch as calibration draws it (its own seed stream), max|x| per layer.
  const maxima: Array<Map<string, number>> = [];
  for (const i of [0, 1]) {
    const b = Data.tensors(Data.batch(ds, Calibration.sampling(batch), i));
    const kept = new Map<string, tf.Tensor>();
    tf.tidy(() => {
      const tap = (t: Nn.Tap) => kept.set(t.path, tf.keep(tf.max(tf.abs(t.x))));
      model.apply(params, b.lr, Nn.context("calibrate", { tap }));
    });
    const m = new Map<string, number>();
    for (const [p, t] of kept) m.set(p, await scalar(t));
    tf.dispose([b.lr, b.hr, ...kept.values()]);
    maxima.push(m);
  }
  const layers = Quant.layers(model);
  assertEquals(layers.length, 2);
  for (const { path } of layers) {
    const got = (await values(Tree.flatten(cal).get(`${path}.aq.alpha`)!))[0];
    const want = d * maxima[0].get(path)! + (1 - d) * maxima[1].get(path)!;
    assertAlmostEquals(got, want, 1e-5 * Math.abs(want), path);
    assert(Math.abs(maxima[0].get(path)! - maxima[1].get(path)!) > 1e-3, "batches differ");
  }
});
