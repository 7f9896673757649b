/**
 * The training step and loop: no tensor leaks over 200 steps, the loss falls on a fixed batch,
 * a non-finite loss stops the run with a typed error and leaves a readable checkpoint, and an
 * invalid recipe is refused before any work with the field named. The run folder: a run in it
 * is refused unless resumed (same recipe, enough steps) or replaced; metrics with a torn last
 * line; a patch larger than the data; a resumed run with nothing left to train.
 */
import * as tf from "@tensorflow/tfjs";
import { Cause, Effect, Exit } from "effect";
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
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
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
    const quantized = Quant.quantize(built.model, built.placement(Recipe.quantizers(recipe)!));
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

Deno.test("truncateMetrics: a torn last line is dropped with one log line; a bad line before it names file and line", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/metrics.jsonl`;
  const rec = (step: number) => JSON.stringify({ step, l1: 1 });
  // Killed while appending step 4: a partial last line.
  await Deno.writeTextFile(file, [rec(1), rec(2), rec(3), `{"step": 4, "l1": "3`].join("\n"));
  const lines: string[] = [];
  await Effect.runPromise(Train.truncateMetrics(file, 2, (l) => lines.push(l)));
  assertEquals(await Deno.readTextFile(file), `${rec(1)}\n${rec(2)}\n`);
  assertEquals(lines.length, 1);
  assertStringIncludes(lines[0], `${file}: dropped a torn last line (line 4`);
  // An unparsable line in the middle is an error naming the file and the line.
  await Deno.writeTextFile(file, [rec(1), "{not json", rec(3), ""].join("\n"));
  const e = await failure(Train.truncateMetrics(file, 3, () => {}));
  assertInstanceOf(e, Train.MetricsCorrupt);
  assertStringIncludes(e.message, `${file} line 2: not JSON`);
  // A missing file is nothing to truncate.
  await Effect.runPromise(Train.truncateMetrics(`${dir}/none.jsonl`, 1, () => {}));
  assertEquals(await Deno.stat(`${dir}/none.jsonl`).then(() => true, () => false), false);
});

Deno.test("recipeDifferences names each differing field; steps, logEvery and checkpointEvery may change", () => {
  const saved = Recipe.toJSON(tinyRecipe());
  const w2 = Recipe.toJSON(Recipe.parse({ ...tinyRecipe(), quant: { wbits: 4, abits: 2 } }));
  assertEquals(Train.recipeDifferences(saved, w2), [
    "recipe.quant.wbits: 2 in the checkpoint, 4 given",
  ]);
  const extended = Recipe.toJSON(tinyRecipe({ steps: 50, logEvery: 5, checkpointEvery: 10 }));
  assertEquals(Train.recipeDifferences(saved, extended), []);
  const seeded = Recipe.toJSON(tinyRecipe({ seed: 3, patch: 4 }));
  assertEquals(Train.recipeDifferences(saved, seeded), [
    "recipe.train.patch: 6 in the checkpoint, 4 given",
    "recipe.train.seed: 0 in the checkpoint, 3 given",
  ]);
  assertEquals(Train.recipeDifferences(null, saved), ["recipe: the checkpoint holds none"]);
});

/** A checkpoint of the tiny recipe at `step`, in a fresh folder. */
async function folderWithCheckpoint(step: number, recipe = tinyRecipe()) {
  const dir = await Deno.makeTempDir();
  const params = new Map([["w", tf.ones([2])]]);
  await Effect.runPromise(Checkpoint.write(`${dir}/checkpoint.bin`, {
    step,
    params,
    opt: new Map(),
    recipe: Recipe.toJSON(recipe),
    meta: {},
  }));
  params.get("w")!.dispose();
  return dir;
}

Deno.test("prepareOut refuses a folder that holds a run, saying what is there; force removes it first", async () => {
  const dir = await folderWithCheckpoint(5);
  await Deno.writeTextFile(`${dir}/metrics.jsonl`, '{"step":1}\n');
  await Deno.writeTextFile(`${dir}/summary.json`, "{}\n");
  const e = await failure(Train.prepareOut(dir, { resume: false }));
  assertInstanceOf(e, Train.RunExists);
  assertEquals(
    e.message,
    `${dir} already holds a run (checkpoint at step 5 of 5, metrics.jsonl, summary.json): ` +
      "use --resume to continue it or --force to replace it",
  );
  // Nothing was touched.
  assertEquals([...Deno.readDirSync(dir)].map((x) => x.name).sort(), [
    "checkpoint.bin",
    "metrics.jsonl",
    "summary.json",
  ]);
  // A summary alone is a run too.
  const lone = await Deno.makeTempDir();
  await Deno.writeTextFile(`${lone}/summary.json`, "{}\n");
  assertStringIncludes(
    (await failure(Train.prepareOut(lone, { resume: false }))).message,
    "(summary.json)",
  );
  const lines: string[] = [];
  await Effect.runPromise(
    Train.prepareOut(dir, { resume: false, force: true, log: (l) => lines.push(l) }),
  );
  assertEquals([...Deno.readDirSync(dir)], []);
  assertEquals(lines, [
    `--force: removed the previous run's checkpoint.bin, metrics.jsonl, summary.json from ${dir}`,
  ]);
  // An empty or new folder is fine (and made).
  await Effect.runPromise(Train.prepareOut(`${dir}/new/run`, { resume: false }));
  assert((await Deno.stat(`${dir}/new/run`)).isDirectory);
});

Deno.test("prepareOut refuses an output path that is a file or cannot be created, naming it", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/a-file`;
  await Deno.writeTextFile(file, "x");
  const e = await failure(Train.prepareOut(file, { resume: false }));
  assertInstanceOf(e, Train.OutputInvalid);
  assertEquals(e.message, `output folder ${file} is a file, not a folder`);
  const f = await failure(Train.prepareOut(`${file}/run`, { resume: false }));
  assertInstanceOf(f, Train.OutputInvalid);
  assertStringIncludes(f.message, `output folder ${file}/run cannot be created: `);
});

Deno.test("prepareOut on resume refuses another recipe's checkpoint and train.steps below its step", async () => {
  const dir = await folderWithCheckpoint(5);
  const w2 = Recipe.parse({ ...tinyRecipe(), quant: { wbits: 3, abits: 2 } });
  const e = await failure(Train.prepareOut(dir, { resume: true, recipe: Recipe.toJSON(w2) }));
  assertInstanceOf(e, Train.RecipeChanged);
  assertStringIncludes(e.message, `cannot resume ${dir}/checkpoint.bin`);
  assertStringIncludes(e.message, "recipe.quant.wbits: 2 in the checkpoint, 3 given");
  assertEquals(e.differences.length, 1);
  const below = Recipe.toJSON(tinyRecipe({ steps: 4 }));
  const s = await failure(Train.prepareOut(dir, { resume: true, recipe: below }));
  assertInstanceOf(s, Train.StepsBelowCheckpoint);
  assertStringIncludes(s.message, "it is at step 5, beyond train.steps 4");
  // More steps, or as many: fine.
  for (const steps of [5, 9]) {
    const more = Recipe.toJSON(tinyRecipe({ steps, logEvery: 3 }));
    await Effect.runPromise(Train.prepareOut(dir, { resume: true, recipe: more }));
  }
});

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
  assertInstanceOf(Cause.squash(failed.cause), Train.RunFileError);
  assertEquals(await Deno.stat(`${out}/summary.json.tmp`).then(() => true, () => false), false);
});
