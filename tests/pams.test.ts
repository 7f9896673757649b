/**
 * PAMS's training pieces: the SKT attention-transfer loss against a hand computation and a
 * float64 reference, its wiring into the training step (zero when the student is the teacher,
 * reported unweighted), α's initialisation from the last calibration batch and its learning rate.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertAlmostEquals, assertEquals, assertGreater } from "@std/assert";
import type * as Method from "../lib/Method.ts";
import * as Pams from "../lib/methods/pams.ts";
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

const recipeOf = (bits: number, method: Method.Method = Pams.pams) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    method,
    quant: { wbits: bits, abits: bits },
    train: { steps: 1, batch: 2, patch: 6 },
  });

async function stepReport(recipe: Recipe.Recipe) {
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const model = Registry.quantize(recipe, built);
  const teacher = { model: built.model, params: built.params };
  const cfg = Train.configOf(recipe, model, teacher);
  const params = Tree.flatten(Tree.merge(model.init(0), built.params));
  const state = Train.initialState(cfg, params);
  const lr = tf.randomUniform([2, 6, 6, 3], 0, 255, "float32", 5) as tf.Tensor4D;
  const hr = tf.randomUniform([2, 12, 12, 3], 0, 255, "float32", 6) as tf.Tensor4D;
  const out = Train.step(cfg, state, { lr, hr });
  const [l1, , , , distill] = await values(out.report);
  // What one Adam step moved, per parameter (its first update is ≈ lr·sign(g)).
  const moved = new Map<string, number>();
  for (const [p, t] of out.state.params) {
    const d = await values(tf.abs(tf.sub(t, params.get(p)!)));
    moved.set(p, Math.max(...d));
  }
  Train.dispose(out.state);
  tf.dispose([out.report, lr, hr, ...state.opt.values(), ...params.values()]);
  return { l1, distill, moved };
}

Deno.test("training with SKT: 0 when the student is the teacher; L1 is reported unweighted", async () => {
  const fp = await stepReport(recipeOf(32));
  assertEquals(fp.distill, 0);
  const withSkt = await stepReport(recipeOf(2));
  const without = await stepReport(recipeOf(2, { ...Pams.pams, distill: undefined }));
  assertGreater(withSkt.distill, 0);
  assert(Number.isFinite(withSkt.distill));
  assertEquals(without.distill, 0);
  assertAlmostEquals(withSkt.l1, without.l1, 1e-5 * without.l1);
});

Deno.test("the PAMS method: SKT 1e3 on the body output, α moves at lr 1e-2, the weights at 1e-4", async () => {
  assertEquals(Pams.pams.distill, { weight: 1e3, at: "upsample" });
  const { moved } = await stepReport(recipeOf(4));
  // Data-path placement (PAMS_ResBlock): conv2's input, the skip and the block's output.
  const alphas = [...moved].filter(([p]) => p.endsWith(".aq.alpha"));
  assertEquals(alphas.map(([p]) => p.slice(0, -".aq.alpha".length)), [
    "body.blocks.0.conv2",
    "body.blocks.0.skip",
    "body.blocks.0.out",
  ]);
  for (const [p, d] of alphas) assertAlmostEquals(d, 1e-2, 1e-4, p);
  for (const [p, d] of moved) {
    if (!p.endsWith(".aq.alpha")) assert(d <= 1e-4 * (1 + 1e-3), `${p} moved ${d}`);
  }
});

Deno.test("PAMS's α starts at the last calibration batch's mean over images of max|x|", async () => {
  const pams = recipeOf(4);
  const built = await Effect.runPromise(Registry.build(pams.model, 0));
  const model = Registry.quantize(pams, built);
  const ds = await Effect.runPromise(Data.load(tinyDir, 2));
  const batch = { batch: 2, patch: 6, seed: 7 };
  const params = Tree.merge(model.init(0), built.params);
  const cal = await Effect.runPromise(
    Calibration.calibrate(model, params, ds, { batches: 2, batch }),
  );
  // The oracle: each batch as calibration draws it (its own seed stream); per image, max|x| of
  // each layer's input, read back and averaged here.
  const perBatch: Array<Map<string, number>> = [];
  for (const i of [0, 1]) {
    const b = Data.tensors(Data.batch(ds, Calibration.sampling(batch), i));
    const kept = new Map<string, tf.Tensor>();
    tf.tidy(() => {
      const tap = (t: Nn.Tap) => kept.set(t.path, tf.keep(t.x.clone()));
      model.apply(params, b.lr, Nn.context("calibrate", { tap }));
    });
    const m = new Map<string, number>();
    for (const [p, t] of kept) {
      const v = await values(t);
      const per = v.length / t.shape[0]!;
      const maxima = Array.from(
        { length: t.shape[0]! },
        (_, n) => Math.max(...v.slice(n * per, (n + 1) * per).map(Math.abs)),
      );
      m.set(p, maxima.reduce((a, b) => a + b, 0) / maxima.length);
    }
    tf.dispose([b.lr, b.hr, ...kept.values()]);
    perBatch.push(m);
  }
  const layers = Quant.layers(model).filter((l) => l.layer.spec.input);
  assertEquals(layers.length, 3);
  for (const { path } of layers) {
    const got = (await values(Tree.flatten(cal).get(`${path}.aq.alpha`)!))[0];
    const want = perBatch[1].get(path)!;
    assertAlmostEquals(got, want, 1e-5 * Math.abs(want), path);
    assert(Math.abs(perBatch[0].get(path)! - want) > 1e-3, "the batches differ");
  }
  Tree.dispose(cal);
});
