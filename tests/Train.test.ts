/**
 * The training step and loop: no tensor leaks over 200 steps, the loss falls on a fixed batch,
 * a non-finite loss stops the run with a typed error and leaves a readable checkpoint, and an
 * invalid recipe is refused before any work with the field named; a patch larger than the data;
 * a resumed run with nothing left to train; every evaluation with the run's SSIM border. (The
 * run folder's rules are in tests/Run.test.ts.)
 */
import * as tf from "@tensorflow/tfjs";
import { Cause, Effect, Exit, Stream } from "effect";
import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertLess,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as Checkpoint from "../lib/Checkpoint.ts";
import * as Data from "../lib/Data.ts";
import * as Evaluate from "../lib/Evaluate.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Run from "../lib/Run.ts";
import * as Train from "../lib/Train.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";
import { loadRecipe } from "../lib/cli/train.ts";
import "./_setup.ts";

const tinyDir = new URL("./fixtures/tiny/", import.meta.url).pathname;

const tinyRecipe = (over: Partial<Recipe.Input["train"]> = {}) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    quant: { wbits: 2, abits: 2 },
    regularizer: { merge: "cooperative", lambdaM: 1e-3 },
    train: {
      steps: 5,
      batch: 2,
      patch: 6,
      calibrationBatches: 1,
      checkpointEvery: 1,
      logEvery: 1,
      ...over,
    },
    data: { train: tinyDir, eval: tinyDir, evalImages: 1 },
  });

const prepare = (recipe: Recipe.Recipe) =>
  Effect.runPromise(Effect.gen(function* () {
    const built = yield* Registry.build(recipe.model, 0);
    const quantized = Registry.quantize(recipe, built);
    const ds = yield* Data.load(tinyDir, 2);
    return { built, quantized, ds };
  }));

Deno.test("200 training steps leave tf.memory().numTensors unchanged after the first", async () => {
  const recipe = tinyRecipe({ lrWeights: 1e-3 });
  const { built, quantized } = await prepare(recipe);
  const params = Tree.flatten(Tree.merge(quantized.init(0), built.params));
  const cfg = Train.configOf(recipe, quantized);
  let state = Train.initialState(cfg, params);
  const lr = tf.randomUniform([2, 6, 6, 3], 0, 255, "float32", 1) as tf.Tensor4D;
  // A learnable target: the LR batch upscaled ×2 by pixel repetition.
  const hr = tf.image.resizeNearestNeighbor(lr, [12, 12]);
  const counts: number[] = [];
  const losses: number[] = [];
  for (let i = 0; i < 200; i++) {
    const out = Train.step(cfg, state, { lr, hr });
    losses.push((await out.report.data())[0]);
    out.report.dispose();
    Train.dispose(state);
    state = out.state;
    counts.push(tf.memory().numTensors);
  }
  assertEquals(new Set(counts).size, 1, `tensor counts: ${[...new Set(counts)]}`);
  // On one fixed batch the L1 loss must fall.
  assertLess(losses[199], losses[0] * 0.9);
  Train.dispose(state);
  tf.dispose([lr, hr]);
});

Deno.test("the loop runs one step ahead: its events equal step-by-step runStep, and every state but the last is freed, also when stopped early", async () => {
  const recipe = tinyRecipe({ lrWeights: 1e-3 });
  const { built, quantized, ds } = await prepare(recipe);
  const cfg = Train.configOf(recipe, quantized);
  const opts = { batch: 2, patch: 6, seed: 3 };
  // Each run starts from its own copy (a state's tensors are freed with it).
  const base = Tree.flatten(Tree.merge(quantized.init(0), built.params));
  const fresh = () =>
    Train.initialState(cfg, new Map([...base].map(([k, v]) => [k, v.clone()] as const)));
  // Oracle: one step at a time, each report read back before the next step is recorded.
  let state = fresh();
  const expected: Train.StepReport[] = [];
  for (let i = 0; i < 6; i++) {
    const r = await Effect.runPromise(
      Train.runStep(cfg, state, Data.batch(ds, opts, i), i % 2 === 1),
    );
    Train.dispose(state);
    state = r.state;
    expected.push(r.report);
  }
  Train.dispose(state);
  for (const take of [6, 2]) {
    const before = tf.memory().numTensors;
    const initial = fresh();
    const perState = tf.memory().numTensors - before;
    const events = await Effect.runPromise(
      Train.steps(cfg, initial, Data.stream(ds, opts, 0, 6), { to: 6, logEvery: 2 }).pipe(
        Stream.take(take),
        Stream.runCollect,
      ),
    );
    const got = [...events];
    assertEquals(got.map((e) => e.report), expected.slice(0, take));
    assertEquals(got.map((e) => e.logged), expected.slice(0, take).map((r) => r.step % 2 === 0));
    // Only the last event's state is left (stopped after 2: the step in flight was freed).
    assertEquals(tf.memory().numTensors - before, perState, `take ${take}`);
    Train.dispose(got[got.length - 1].state);
    assertEquals(tf.memory().numTensors, before);
  }
  tf.dispose([...base.values()]);
});

Deno.test("a non-finite loss stops the run with NonFiniteLoss and keeps a readable, finite checkpoint", async () => {
  const recipe = tinyRecipe({ lrWeights: 1e30, steps: 20 });
  const { built, quantized, ds } = await prepare(recipe);
  const out = await Deno.makeTempDir();
  const exit = await Effect.runPromiseExit(
    Train.run(
      recipe,
      Recipe.toJSON(recipe),
      { fp32: built.model, params: built.params, quantized },
      {
        train: ds,
        eval: { ...ds, pairs: ds.pairs.slice(0, 1) },
      },
      { out, resume: false, log: () => {} },
    ).pipe(Effect.provide(Backend.layer())),
  );
  assert(Exit.isFailure(exit));
  const err = Cause.squash(exit.cause);
  assertInstanceOf(err, Train.NonFiniteLoss);
  assertStringIncludes(err.message, `at step ${err.step}`);
  const ckpt = await Effect.runPromise(Checkpoint.read(`${out}/checkpoint.bin`));
  assertEquals(ckpt.step, err.step);
  for (const t of ckpt.params.values()) assert((await t.data()).every(Number.isFinite));
  tf.dispose([...ckpt.params.values(), ...ckpt.opt.values()]);
});

Deno.test("an invalid recipe fails before any work and names the field", async () => {
  const e = assertThrows(
    () =>
      Recipe.parse({
        name: "x",
        model: { arch: "edsr", scale: 5 },
        quant: { wbits: 9, abits: 4 },
        train: { steps: 1, batch: 0 },
      }),
    Recipe.RecipeInvalid,
  );
  assertStringIncludes(e.message, "recipe.model.scale");
  assertStringIncludes(e.message, "recipe.quant.wbits");
  assertStringIncludes(e.message, "recipe.train.batch");
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/bad.ts`,
    `import * as Recipe from "${new URL("../lib/Recipe.ts", import.meta.url).href}";\n` +
      `export default Recipe.make({ name: "bad", model: { arch: "edsr", scale: 4 }, quant: { wbits: 4, abits: 4 }, train: { steps: 10, patch: -3 } });\n`,
  );
  const err = await loadRecipe(`${dir}/bad.ts`).then(() => undefined, (x) => x as Error);
  assertInstanceOf(err, Recipe.RecipeInvalid);
  assertStringIncludes(err.message, "recipe.train.patch");
  assertStringIncludes(err.message, "bad.ts");
  // Through the CLI: exit code 1, the field named, no output folder created.
  const out = `${dir}/never`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/train.ts", "--recipe", `${dir}/bad.ts`, "--out", out],
    cwd: new URL("../", import.meta.url).pathname,
  }).output();
  assertEquals(r.code, 1);
  assertStringIncludes(new TextDecoder().decode(r.stderr), "recipe.train.patch");
  assertEquals(await Deno.stat(out).then(() => true, () => false), false);
});

const failure = async <A, E>(e: Effect.Effect<A, E>) => {
  const exit = await Effect.runPromiseExit(e);
  assert(Exit.isFailure(exit), "expected a failure");
  return Cause.squash(exit.cause) as Error;
};

Deno.test("checkPatch names the folder and the largest LR image when the patch fits none", async () => {
  const ds = await Effect.runPromise(Data.load(tinyDir, 2));
  await Effect.runPromise(Train.checkPatch(24, ds, tinyDir));
  const e = await failure(Train.checkPatch(25, ds, tinyDir));
  assertInstanceOf(e, Train.PatchTooLarge);
  assertEquals(
    e.message,
    `recipe.train.patch 25 is larger than every LR image in ${tinyDir.replace(/\/$/, "")} ` +
      "(largest 30×24 at ×2)",
  );
});

Deno.test("resuming at the last step trains nothing and writes the summary (0 steps/s); a failed summary write leaves no tmp", async () => {
  const recipe = tinyRecipe({ steps: 2 });
  const out = await Deno.makeTempDir();
  const go = async (resume: boolean, log: (l: string) => void = () => {}) => {
    const { built, quantized, ds } = await prepare(recipe);
    return Effect.runPromiseExit(
      Train.run(
        recipe,
        Recipe.toJSON(recipe),
        { fp32: built.model, params: built.params, quantized },
        { train: ds, eval: { ...ds, pairs: ds.pairs.slice(0, 1) } },
        { out, resume, log },
      ).pipe(Effect.provide(Backend.layer())),
    );
  };
  assert(Exit.isSuccess(await go(false)));
  const lines: string[] = [];
  const again = await go(true, (l) => lines.push(l));
  assert(Exit.isSuccess(again));
  assertEquals(again.value.stepsPerSecond, 0);
  assert(lines.some((l) => l.startsWith("nothing left to train:")), lines.join("\n"));
  assert(!lines.some((l) => l.startsWith("training ")), lines.join("\n"));
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/summary.json`)).stepsPerSecond, 0);
  // The summary cannot be renamed into place (a folder is in the way): no summary.json.tmp.
  await Deno.remove(`${out}/summary.json`);
  await Deno.mkdir(`${out}/summary.json`);
  await Deno.writeTextFile(`${out}/summary.json/x`, "");
  const failed = await go(true);
  assert(Exit.isFailure(failed));
  assertInstanceOf(Cause.squash(failed.cause), Run.RunFileError);
  assertEquals(await Deno.stat(`${out}/summary.json.tmp`).then(() => true, () => false), false);
});

Deno.test("every evaluation of a run (FP32, PTQ, QAT) uses the run's SSIM border", async () => {
  const recipe = tinyRecipe({ steps: 0 });
  const out = await Deno.makeTempDir();
  const { built, quantized, ds } = await prepare(recipe);
  const evalSet = { ...ds, pairs: ds.pairs.slice(0, 1) };
  // The oracle: the same models scored by Evaluate directly, once per border.
  const fpParams = Tree.unflatten([...Tree.flatten(built.params)].map(([k, v]) => [k, v.clone()]));
  const score = (model: typeof quantized, params: Tree.Params, ssim: "same" | "valid") =>
    Effect.runPromise(
      Evaluate.evaluate(model, params, evalSet, { ssim }).pipe(Effect.provide(Backend.layer())),
    );
  const fpValid = await score(built.model, fpParams, "valid");
  const fpSame = await score(built.model, fpParams, "same");
  Tree.dispose(fpParams);
  const summary = await Effect.runPromise(
    Train.run(
      recipe,
      Recipe.toJSON(recipe),
      { fp32: built.model, params: built.params, quantized },
      { train: ds, eval: evalSet },
      { out, resume: false, log: () => {}, ssim: "valid" },
    ).pipe(Effect.provide(Backend.layer())),
  );
  assertEquals(summary.fp32.ssim, fpValid.ssim);
  assert(fpValid.ssim !== fpSame.ssim, "the borders give different SSIMs here");
  // With 0 steps the trained model is the calibrated one: the QAT row equals the PTQ row, and
  // both are the checkpoint's model scored with the valid border.
  const ckpt = await Effect.runPromise(Checkpoint.read(`${out}/checkpoint.bin`));
  const qValid = await score(quantized, Tree.unflatten(ckpt.params), "valid");
  tf.dispose([...ckpt.params.values(), ...ckpt.opt.values()]);
  assertEquals(summary.ptq!.ssim, qValid.ssim);
  assertEquals(summary.qat.ssim, qValid.ssim);
});
