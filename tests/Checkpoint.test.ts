/** Checkpoints: exact round trip, atomic replacement, and clear errors for bad files. */
import * as tf from "@tensorflow/tfjs";
import { Effect, Exit } from "effect";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import * as Checkpoint from "../lib/Checkpoint.ts";
import * as Rng from "../lib/Rng.ts";
import { values } from "./_setup.ts";

Deno.test("write then read gives back every tensor bit for bit, the step and the recipe", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/checkpoint.bin`;
  const params = new Map<string, tf.Tensor>([
    ["head.weight", tf.tensor4d(Rng.normal(1, 3 * 3 * 3 * 4), [3, 3, 3, 4])],
    ["head.aq.upper", tf.scalar(2.5)],
  ]);
  const opt = new Map([["weights.m.head.weight", tf.zeros([3, 3, 3, 4])]]);
  await Effect.runPromise(
    Checkpoint.write(file, { step: 42, params, opt, recipe: { name: "r" }, meta: { a: 1 } }),
  );
  // The temporary file is gone: it was renamed into place.
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["checkpoint.bin"]);
  const c = await Effect.runPromise(Checkpoint.read(file));
  assertEquals(c.step, 42);
  assertEquals(c.recipe, { name: "r" });
  assertEquals(c.meta, { a: 1 });
  for (const [k, t] of params) assertEquals(await values(c.params.get(k)!), await values(t));
  assertEquals(c.opt.get("weights.m.head.weight")!.shape, [3, 3, 3, 4]);
  assertEquals(Checkpoint.check(file, c.params, params), undefined);
  const other = new Map([["head.weight", tf.zeros([1])]]);
  assertStringIncludes(Checkpoint.check(file, c.params, other)!.message, "head.weight");
  tf.dispose([
    ...params.values(),
    ...opt.values(),
    ...c.params.values(),
    ...c.opt.values(),
    ...other.values(),
  ]);
});

Deno.test("a truncated or foreign file fails with the file's name", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/checkpoint.bin`;
  const params = new Map([["w", tf.ones([100])]]);
  await Effect.runPromise(
    Checkpoint.write(file, { step: 1, params, opt: new Map(), recipe: null, meta: {} }),
  );
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(file, bytes.subarray(0, bytes.length - 10));
  const t = await Effect.runPromiseExit(Checkpoint.read(file));
  assert(Exit.isFailure(t));
  assertStringIncludes(String(t.cause), "truncated");
  assertStringIncludes(String(t.cause), file);
  await Deno.writeTextFile(file, "hello");
  const f = await Effect.runPromiseExit(Checkpoint.read(file));
  assertStringIncludes(String(Exit.isFailure(f) && f.cause), "bad magic");
  const m = await Effect.runPromiseExit(Checkpoint.read(`${dir}/missing.bin`));
  assertStringIncludes(String(Exit.isFailure(m) && m.cause), "missing.bin");
  params.get("w")!.dispose();
});
