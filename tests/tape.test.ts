/**
 * The two-output gradient tape (lib/internal/tape.ts): g_R and g_M of the ODM step from one
 * recorded forward pass equal tfjs's own `tf.grads` of each loss (one forward pass each), only
 * the gradients asked for are computed, and nothing leaks.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertEquals, assertLess } from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Loss from "../lib/Loss.ts";
import * as Nn from "../lib/Nn.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Tape from "../lib/internal/tape.ts";
import * as Registry from "../models/registry.ts";
import "./_setup.ts";

const tinyDir = new URL("./fixtures/tiny/", import.meta.url).pathname;

const tinyRecipe = () =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    quant: { wbits: 2, abits: 2 },
    regularizer: { merge: "cooperative", lambdaM: 1e-3 },
    train: { steps: 5, batch: 2, patch: 6, calibrationBatches: 1 },
    data: { train: tinyDir, eval: tinyDir, evalImages: 1 },
  });

const prepare = (recipe: Recipe.Recipe) =>
  Effect.runPromise(Effect.gen(function* () {
    const built = yield* Registry.build(recipe.model, 0);
    const quantized = Registry.quantize(recipe, built);
    const ds = yield* Data.load(tinyDir, 2);
    return { built, quantized, ds };
  }));

Deno.test("g_R and g_M from one recorded forward pass equal tf.grads of each loss on its own", async () => {
  const recipe = tinyRecipe();
  const { built, quantized } = await prepare(recipe);
  const flat = Tree.flatten(Tree.merge(quantized.init(0), built.params));
  const paths = [...flat.keys()];
  const lr = tf.randomUniform([2, 6, 6, 3], 0, 255, "float32", 3) as tf.Tensor4D;
  const hr = tf.randomUniform([2, 12, 12, 3], 0, 255, "float32", 4) as tf.Tensor4D;
  let forwards = 0;
  const losses = (ls: tf.Tensor[]) => {
    forwards++;
    const taps: Nn.Tap[] = [];
    const p = Tree.unflatten(paths.map((k, i) => [k, ls[i]] as const));
    const sr = quantized.apply(p, lr, Nn.context("train", { tap: (t) => taps.push(t) }));
    return [Loss.l1(sr, hr), Loss.mismatch(taps)];
  };
  // The oracle: tfjs's own valueAndGrads, one forward pass per loss. Parameters a loss does not
  // reach (the tail for L_M) are connected with a zero-weighted sum, as tfjs requires.
  const zero = (ls: tf.Tensor[]) => tf.mul(0, tf.addN(ls.map((l) => tf.sum(l))));
  const oracle = [0, 1].map((k) =>
    tf.grads((...ls: tf.Tensor[]) => tf.add(losses(ls)[k], zero(ls)) as tf.Scalar)(
      [...flat.values()],
    )
  );
  forwards = 0;
  const before = tf.memory().numTensors;
  const { values, grads } = Tape.valuesAndGrads((...ls) => losses(ls), [...flat.values()]);
  assertEquals(forwards, 1, "one forward pass for both gradients");
  assertEquals(
    tf.memory().numTensors - before,
    2 + 2 * paths.length,
    "only values and grads remain",
  );
  const tail = paths.filter((p) => p.startsWith("tail."));
  assert(tail.length > 0);
  for (let k = 0; k < 2; k++) {
    for (let i = 0; i < paths.length; i++) {
      const got = await grads[k]![i].data();
      const want = await oracle[k][i].data();
      for (let j = 0; j < got.length; j++) {
        assertLess(Math.abs(got[j] - want[j]), 1e-6 * (1 + Math.abs(want[j])), `${k} ${paths[i]}`);
      }
    }
  }
  for (const p of tail) {
    assert(
      (await grads[1]![paths.indexOf(p)].data()).every((v) => v === 0),
      `L_M does not reach ${p}`,
    );
  }
  tf.dispose([
    ...values,
    ...grads.flatMap((g) => g ?? []),
    ...oracle.flat(),
    lr,
    hr,
    ...flat.values(),
  ]);
});

Deno.test("valuesAndGrads computes only the gradients asked for", async () => {
  const x = tf.scalar(3);
  const { values, grads } = Tape.valuesAndGrads(
    (v) => [tf.square(v) as tf.Scalar, tf.mul(v, 2) as tf.Scalar],
    [x],
    [1],
  );
  assertEquals(grads[0], undefined);
  assertEquals((await grads[1]![0].data())[0], 2);
  assertEquals((await values[0].data())[0], 9);
  tf.dispose([x, ...values, ...grads[1]!]);
});
