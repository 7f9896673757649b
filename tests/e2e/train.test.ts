/**
 * End-to-end training runs of a tiny recipe in child processes: a run killed with SIGKILL (its
 * metrics torn mid-line) and resumed ends with exactly the checkpoint of an uninterrupted run;
 * the loss falls; metrics and summary are written. A folder that holds a run is refused unless
 * `--resume` (same recipe, enough steps) or `--force`; a bad `--out` or a patch larger than the
 * data is refused before the work; Ctrl-C (SIGINT) says which checkpoint is kept. The same
 * kill and resume on a prepared folder ends with the checkpoint of a run that decoded its
 * images through a cache too small to hold them.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertEquals, assertGreater, assertStringIncludes } from "@std/assert";
import * as Checkpoint from "../../lib/Checkpoint.ts";
import * as Prepare from "../../lib/Prepare.ts";
import "../_setup.ts";

const root = new URL("../../", import.meta.url).pathname;
const recipe = new URL("../fixtures/tiny-recipe.ts", import.meta.url).pathname;

/** The real Deno binary (a wrapper's pid would survive SIGKILL, PLATFORM.md). */
const train = (
  out: string,
  extra: string[] = [],
  o: { readonly recipe?: string; readonly env?: Record<string, string> } = {},
) =>
  new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/train.ts", "--recipe", o.recipe ?? recipe, "--out", out, ...extra],
    cwd: root,
    env: o.env,
    stdout: "piped",
    stderr: "piped",
  });

const finish = async (cmd: Deno.Command) => {
  const r = await cmd.output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`training failed:\n${text}`);
  return text;
};

const stepsLogged = async (file: string) => {
  try {
    return (await Deno.readTextFile(file)).split("\n").filter((l) => l.trim()).length;
  } catch {
    return 0;
  }
};

Deno.test("a run killed midway and resumed ends with the same checkpoint as an uninterrupted run", async () => {
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  const log = await finish(train(a));
  assert(log.includes("quantized, after QAT"), log);
  const summary = JSON.parse(await Deno.readTextFile(`${a}/summary.json`));
  // The tiny model's outputs are far below bicubic, so they are flagged (no set score) and
  // each flagged image keeps its own PSNR: the learning signal below reads that.
  const psnr = (k: string): number =>
    Number.isFinite(summary[k].psnr) ? summary[k].psnr : summary[k].flagged[0].psnr;
  for (const k of ["fp32", "ptq", "qat"]) assert(Number.isFinite(psnr(k)), k);
  assertEquals(summary.steps, 12);
  const metrics = (await Deno.readTextFile(`${a}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(metrics.map((m) => m.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  // Per-batch L1 is noisy at batch 2; the held-out PSNR is the learning signal.
  assertGreater(psnr("qat"), psnr("ptq") + 1, "QAT improves on the calibrated model");

  // Interrupted run: SIGKILL once at least 5 steps are logged.
  const child = train(b).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  while ((await stepsLogged(`${b}/metrics.jsonl`)) < 5) {
    if (exited) {
      throw new Error(`the run ended before it could be killed: ${JSON.stringify(await status)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  assertEquals((await status).signal, "SIGKILL");
  const killedAt = await Effect.runPromise(Checkpoint.read(`${b}/checkpoint.bin`));
  assert(killedAt.step >= 4 && killedAt.step < 12, `killed at step ${killedAt.step}`);
  // As if killed in the middle of appending a line: a torn last line.
  await Deno.writeTextFile(`${b}/metrics.jsonl`, '{"step": 99, "l1": 3', { append: true });
  const resumedLog = await finish(train(b, ["--resume"]));
  assert(
    resumedLog.includes(`resumed from ${b}/checkpoint.bin at step ${killedAt.step}`),
    resumedLog,
  );
  assert(resumedLog.includes(`${b}/metrics.jsonl: dropped a torn last line`), resumedLog);

  const ca = await Effect.runPromise(Checkpoint.read(`${a}/checkpoint.bin`));
  const cb = await Effect.runPromise(Checkpoint.read(`${b}/checkpoint.bin`));
  assertEquals(cb.step, 12);
  assertEquals([...cb.params.keys()], [...ca.params.keys()]);
  for (const [k, t] of ca.params) assertEquals(await cb.params.get(k)!.data(), await t.data(), k);
  for (const [k, t] of ca.opt) assertEquals(await cb.opt.get(k)!.data(), await t.data(), k);
  const mb = (await Deno.readTextFile(`${b}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(mb.map((m) => m.step), metrics.map((m) => m.step));
  tf.dispose([
    ...ca.params.values(),
    ...ca.opt.values(),
    ...cb.params.values(),
    ...cb.opt.values(),
    ...killedAt.params.values(),
    ...killedAt.opt.values(),
  ]);
});

/** Runs the train task to its end: exit code and all its output. */
const attempt = async (out: string, extra: string[] = [], recipeFile = recipe) => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/train.ts", "--recipe", recipeFile, "--out", out, ...extra],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: r.code,
    text: new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr),
  };
};

/** A recipe file: the tiny recipe with `patch` applied to it. */
const variant = async (patch: string) => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/variant.ts`;
  await Deno.writeTextFile(
    file,
    `import * as Recipe from "${new URL("../../lib/Recipe.ts", import.meta.url).href}";\n` +
      `import tiny from "${new URL("../fixtures/tiny-recipe.ts", import.meta.url).href}";\n` +
      `export default Recipe.make(${patch});\n`,
  );
  return file;
};

const stepOf = async (dir: string) =>
  (await Effect.runPromise(Checkpoint.readHeader(`${dir}/checkpoint.bin`))).step;
const metricSteps = async (dir: string) =>
  (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l).step
  );

Deno.test("a folder that holds a run is refused unless --resume (same recipe, enough steps) or --force", async () => {
  const out = await Deno.makeTempDir();
  assertEquals((await attempt(out, ["--steps", "3"])).code, 0);
  const notTouched = async () => {
    assertEquals(await stepOf(out), 3);
    assertEquals(await metricSteps(out), [1, 2, 3]);
  };
  // Again, as is: refused before any data is loaded, the folder as it was.
  const again = await attempt(out, ["--steps", "3"]);
  assertEquals(again.code, 1, again.text);
  assertStringIncludes(
    again.text,
    `error: ${out} already holds a run (checkpoint at step 3 of 3, metrics.jsonl, summary.json): ` +
      "use --resume to continue it or --force to replace it",
  );
  assert(!again.text.includes("loading training images"), again.text);
  await notTouched();
  // --resume with another recipe of the same architecture: W2A2 onto the W4A4 checkpoint.
  const w2a2 = await variant("{ ...tiny, quant: { ...tiny.quant, wbits: 2, abits: 2 } }");
  const other = await attempt(out, ["--resume"], w2a2);
  assertEquals(other.code, 1, other.text);
  assertStringIncludes(other.text, `error: cannot resume ${out}/checkpoint.bin`);
  assertStringIncludes(other.text, "recipe.quant.wbits: 4 in the checkpoint, 2 given");
  assertStringIncludes(other.text, "recipe.quant.abits: 4 in the checkpoint, 2 given");
  assert(!other.text.includes("loading training images"), other.text);
  // --steps below the checkpoint's step.
  const below = await attempt(out, ["--resume", "--steps", "1"]);
  assertEquals(below.code, 1, below.text);
  assertStringIncludes(below.text, "it is at step 3, beyond train.steps 1");
  await notTouched();
  // As many steps as the checkpoint: nothing to train, evaluated, the summary written.
  const equal = await attempt(out, ["--resume", "--steps", "3"]);
  assertEquals(equal.code, 0, equal.text);
  assertStringIncludes(
    equal.text,
    `nothing left to train: ${out}/checkpoint.bin is at step 3 of 3`,
  );
  assert(!equal.text.includes("step/s"), equal.text);
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/summary.json`)).stepsPerSecond, 0);
  await notTouched();
  // More steps (and another logging interval): the run is extended.
  const more = await attempt(out, ["--resume", "--steps", "5"]);
  assertEquals(more.code, 0, more.text);
  assertEquals([await stepOf(out), ...(await metricSteps(out))], [5, 1, 2, 3, 4, 5]);
  // --force: the old files go first, the folder holds the new run only.
  const forced = await attempt(out, ["--force", "--steps", "2"]);
  assertEquals(forced.code, 0, forced.text);
  assertStringIncludes(forced.text, "--force: removed the previous run's checkpoint.bin");
  assertEquals([await stepOf(out), ...(await metricSteps(out))], [2, 1, 2]);
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/summary.json`)).steps, 2);
});

Deno.test("a bad --out and a patch larger than every LR image are refused early, naming the path", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/a-file`;
  await Deno.writeTextFile(file, "");
  const isFile = await attempt(file);
  assertEquals(isFile.code, 1);
  assertStringIncludes(isFile.text, `error: output folder ${file} is a file, not a folder`);
  assert(!isFile.text.includes("loading training images"), isFile.text);
  const inside = await attempt(`${file}/run`);
  assertEquals(inside.code, 1);
  assertStringIncludes(inside.text, `error: output folder ${file}/run cannot be created: `);
  // The tiny images are 24×24 and 30×24 at ×2.
  const big = await variant("{ ...tiny, train: { ...tiny.train, patch: 26 } }");
  const r = await attempt(`${dir}/big`, [], big);
  assertEquals(r.code, 1, r.text);
  const tinyDir = new URL("../fixtures/tiny", import.meta.url).pathname;
  assertStringIncludes(
    r.text,
    `error: recipe.train.patch 26 is larger than every LR image in ${tinyDir} (largest 30×24 at ×2)`,
  );
  assert(!r.text.includes("evaluating FP32"), r.text);
  assert(!r.text.includes("loading eval"), r.text);
});

Deno.test("Ctrl-C (SIGINT) says which checkpoint is kept, exits 130, and --resume continues", async () => {
  const out = await Deno.makeTempDir();
  const child = train(out, ["--steps", "1000"]).spawn();
  const output = child.output();
  while ((await stepsLogged(`${out}/metrics.jsonl`)) < 3) {
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGINT");
  const r = await output;
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  assertEquals(r.code, 130, text);
  const m =
    /interrupted at step (\d+); the checkpoint at step (\d+) in (\S+) is kept: continue with --resume/
      .exec(text);
  assert(m, text);
  const [k, j] = [Number(m[1]), Number(m[2])];
  assertEquals(m[3], out);
  assert(j <= k && k >= 3 && k < 1000, text);
  // The checkpoint is whole (it reads, checksum included) and no temp file is left.
  assertEquals(await stepOf(out), j);
  const c = await Effect.runPromise(Checkpoint.read(`${out}/checkpoint.bin`));
  tf.dispose([...c.params.values(), ...c.opt.values()]);
  assertEquals((await Array.fromAsync(Deno.readDir(out))).map((e) => e.name).sort(), [
    "checkpoint.bin",
    "metrics.jsonl",
  ]);
  const resumed = await attempt(out, ["--resume", "--steps", String(j + 1)]);
  assertEquals(resumed.code, 0, resumed.text);
  assertEquals(await metricSteps(out), Array.from({ length: j + 1 }, (_, i) => i + 1));
});

Deno.test("on a prepared folder, a run killed midway and resumed ends with the checkpoint of a run decoding through a tiny cache", async () => {
  // [issue 14] The two ways the streaming loader reads images must give the same run: A decodes
  // the PNGs on demand through a cache smaller than one image (every patch evicts and decodes
  // again); B reads its patches from prepared copies, and is SIGKILLed and resumed.
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  const tinyDir = new URL("../fixtures/tiny", import.meta.url).pathname;
  const prepared = `${await Deno.makeTempDir()}/tiny_prepared`;
  await Effect.runPromise(Prepare.prepare(tinyDir, { scale: 2, out: prepared, workers: 1 }));
  const onPrepared = await variant(`{ ...tiny, data: { ...tiny.data, train: "${prepared}" } }`);
  const logA = await finish(train(a, [], { env: { QAT_DATA_CACHE_MIB: "0.001" } }));
  assertStringIncludes(logA, "2 decoded on demand (1 worker, cache 0 MiB)");
  const decoded = /data: 12 batches .*; (\d+) images decoded/.exec(logA);
  assert(decoded && Number(decoded[1]) > 12, `images decoded again and again:\n${logA}`);

  const child = train(b, [], { recipe: onPrepared }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  while ((await stepsLogged(`${b}/metrics.jsonl`)) < 5) {
    if (exited) {
      throw new Error(`the run ended before it could be killed: ${JSON.stringify(await status)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  assertEquals((await status).signal, "SIGKILL");
  const resumed = await finish(train(b, ["--resume"], { recipe: onPrepared }));
  const at = /resumed from \S+ at step (\d+)/.exec(resumed);
  assert(at && Number(at[1]) >= 4 && Number(at[1]) < 12, resumed);
  assertStringIncludes(resumed, `2 prepared in ${prepared}`);
  assertStringIncludes(resumed, "patches read from prepared copies");

  const ca = await Effect.runPromise(Checkpoint.read(`${a}/checkpoint.bin`));
  const cb = await Effect.runPromise(Checkpoint.read(`${b}/checkpoint.bin`));
  assertEquals(cb.step, 12);
  assertEquals([...cb.params.keys()], [...ca.params.keys()]);
  for (const [k, t] of ca.params) assertEquals(await cb.params.get(k)!.data(), await t.data(), k);
  for (const [k, t] of ca.opt) assertEquals(await cb.opt.get(k)!.data(), await t.data(), k);
  tf.dispose([
    ...ca.params.values(),
    ...ca.opt.values(),
    ...cb.params.values(),
    ...cb.opt.values(),
  ]);
});
