/**
 * The run folder (lib/Run.ts): a folder that holds a run is refused unless resumed (same
 * recipe, enough steps) or replaced, naming what is there; an output path that cannot be a
 * folder is named; metrics with a torn last line; the recipe differences a resume names.
 */
import * as tf from "@tensorflow/tfjs";
import { Cause, Effect, Exit } from "effect";
import { assert, assertEquals, assertInstanceOf, assertStringIncludes } from "@std/assert";
import * as Checkpoint from "../lib/Checkpoint.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Run from "../lib/Run.ts";
import "./_setup.ts";

const tinyRecipe = (over: Partial<Recipe.Input["train"]> = {}) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    quant: { wbits: 2, abits: 2 },
    regularizer: { merge: "cooperative", lambdaM: 1e-3 },
    train: { steps: 5, batch: 2, patch: 6, calibrationBatches: 1, checkpointEvery: 1, ...over },
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
  await Effect.runPromise(Run.truncateMetrics(file, 2, (l) => lines.push(l)));
  assertEquals(await Deno.readTextFile(file), `${rec(1)}\n${rec(2)}\n`);
  assertEquals(lines.length, 1);
  assertStringIncludes(lines[0], `${file}: dropped a torn last line (line 4`);
  // An unparsable line in the middle is an error naming the file and the line.
  await Deno.writeTextFile(file, [rec(1), "{not json", rec(3), ""].join("\n"));
  const e = await failure(Run.truncateMetrics(file, 3, () => {}));
  assertInstanceOf(e, Run.MetricsCorrupt);
  assertStringIncludes(e.message, `${file} line 2: not JSON`);
  // A missing file is nothing to truncate.
  await Effect.runPromise(Run.truncateMetrics(`${dir}/none.jsonl`, 1, () => {}));
  assertEquals(await Deno.stat(`${dir}/none.jsonl`).then(() => true, () => false), false);
});

Deno.test("recipeDifferences names each differing field; steps, logEvery and checkpointEvery may change", () => {
  const saved = Recipe.toJSON(tinyRecipe());
  const w2 = Recipe.toJSON(Recipe.parse({ ...tinyRecipe(), quant: { wbits: 4, abits: 2 } }));
  assertEquals(Run.recipeDifferences(saved, w2), [
    "recipe.quant.wbits: 2 in the checkpoint, 4 given",
  ]);
  const extended = Recipe.toJSON(tinyRecipe({ steps: 50, logEvery: 5, checkpointEvery: 10 }));
  assertEquals(Run.recipeDifferences(saved, extended), []);
  const seeded = Recipe.toJSON(tinyRecipe({ seed: 3, patch: 4 }));
  assertEquals(Run.recipeDifferences(saved, seeded), [
    "recipe.train.patch: 6 in the checkpoint, 4 given",
    "recipe.train.seed: 0 in the checkpoint, 3 given",
  ]);
  assertEquals(Run.recipeDifferences(null, saved), ["recipe: the checkpoint holds none"]);
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
  const e = await failure(Run.prepareOut(dir, { resume: false }));
  assertInstanceOf(e, Run.RunExists);
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
    (await failure(Run.prepareOut(lone, { resume: false }))).message,
    "(summary.json)",
  );
  const lines: string[] = [];
  await Effect.runPromise(
    Run.prepareOut(dir, { resume: false, force: true, log: (l) => lines.push(l) }),
  );
  assertEquals([...Deno.readDirSync(dir)], []);
  assertEquals(lines, [
    `--force: removed the previous run's checkpoint.bin, metrics.jsonl, summary.json from ${dir}`,
  ]);
  // An empty or new folder is fine (and made).
  await Effect.runPromise(Run.prepareOut(`${dir}/new/run`, { resume: false }));
  assert((await Deno.stat(`${dir}/new/run`)).isDirectory);
});

Deno.test("prepareOut refuses an output path that is a file or cannot be created, naming it", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/a-file`;
  await Deno.writeTextFile(file, "x");
  const e = await failure(Run.prepareOut(file, { resume: false }));
  assertInstanceOf(e, Run.OutputInvalid);
  assertEquals(e.message, `output folder ${file} is a file, not a folder`);
  const f = await failure(Run.prepareOut(`${file}/run`, { resume: false }));
  assertInstanceOf(f, Run.OutputInvalid);
  assertStringIncludes(f.message, `output folder ${file}/run cannot be created: `);
});

Deno.test("prepareOut on resume refuses another recipe's checkpoint and train.steps below its step", async () => {
  const dir = await folderWithCheckpoint(5);
  const w2 = Recipe.parse({ ...tinyRecipe(), quant: { wbits: 3, abits: 2 } });
  const e = await failure(Run.prepareOut(dir, { resume: true, recipe: Recipe.toJSON(w2) }));
  assertInstanceOf(e, Run.RecipeChanged);
  assertStringIncludes(e.message, `cannot resume ${dir}/checkpoint.bin`);
  assertStringIncludes(e.message, "recipe.quant.wbits: 2 in the checkpoint, 3 given");
  assertEquals(e.differences.length, 1);
  const below = Recipe.toJSON(tinyRecipe({ steps: 4 }));
  const s = await failure(Run.prepareOut(dir, { resume: true, recipe: below }));
  assertInstanceOf(s, Run.StepsBelowCheckpoint);
  assertStringIncludes(s.message, "it is at step 5, beyond train.steps 4");
  // More steps, or as many: fine.
  for (const steps of [5, 9]) {
    const more = Recipe.toJSON(tinyRecipe({ steps, logEvery: 3 }));
    await Effect.runPromise(Run.prepareOut(dir, { resume: true, recipe: more }));
  }
});
