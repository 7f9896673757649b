/**
 * Checkpoints: exact round trip, atomic replacement (no temp file left, even when the write
 * fails), the SHA-256 of the data, and clear errors for bad files.
 */
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

/** Rewrites a checkpoint's header with `edit` (the tensor bytes unchanged). */
function withHeader(bytes: Uint8Array, edit: (h: Record<string, unknown>) => void): Uint8Array {
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + len)));
  edit(header);
  const h = new TextEncoder().encode(JSON.stringify(header));
  const data = bytes.subarray(12 + len);
  const out = new Uint8Array(12 + h.length + data.length);
  out.set(bytes.subarray(0, 8), 0);
  new DataView(out.buffer).setUint32(8, h.length, true);
  out.set(h, 12);
  out.set(data, 12 + h.length);
  return out;
}

Deno.test("corrupted tensor bytes of the same length fail the SHA-256 check, naming the file", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/checkpoint.bin`;
  const params = new Map([["w", tf.tensor1d([1, 2, 3, 4])]]);
  await Effect.runPromise(
    Checkpoint.write(file, { step: 3, params, opt: new Map(), recipe: null, meta: {} }),
  );
  const bytes = await Deno.readFile(file);
  const header = await Effect.runPromise(Checkpoint.readHeader(file));
  assertEquals([header.version, header.step], [Checkpoint.VERSION, 3]);
  assertEquals(Checkpoint.VERSION, 2);
  // One bit of the last weight flipped: same length, still a float.
  const bad = bytes.slice();
  bad[bad.length - 1] ^= 0x01;
  await Deno.writeFile(file, bad);
  const r = await Effect.runPromiseExit(Checkpoint.read(file));
  assert(Exit.isFailure(r));
  assertStringIncludes(
    String(r.cause),
    `checkpoint ${file}: data checksum mismatch (the file is corrupt)`,
  );
  // A version 1 file (no checksum) is still read.
  const v1 = withHeader(bytes, (h) => {
    h.version = 1;
    delete h.sha256;
  });
  await Deno.writeFile(file, v1);
  const c = await Effect.runPromise(Checkpoint.read(file));
  assertEquals([c.step, await values(c.params.get("w")!)], [3, [1, 2, 3, 4]]);
  // A version 2 header without its checksum is refused.
  await Deno.writeFile(file, withHeader(bytes, (h) => delete h.sha256));
  const n = await Effect.runPromiseExit(Checkpoint.read(file));
  assertStringIncludes(String(Exit.isFailure(n) && n.cause), "sha256");
  tf.dispose([...params.values(), ...c.params.values()]);
});

Deno.test("a failed write leaves no <file>.tmp behind and fails with the file's name", async () => {
  const dir = await Deno.makeTempDir();
  const params = new Map([["w", tf.ones([10])]]);
  const contents = { step: 1, params, opt: new Map(), recipe: null, meta: {} };
  // The rename fails: the target is a folder that is not empty (the temp file was written).
  const file = `${dir}/checkpoint.bin`;
  await Deno.mkdir(file);
  await Deno.writeTextFile(`${file}/keep`, "x");
  const r = await Effect.runPromiseExit(Checkpoint.write(file, contents));
  assert(Exit.isFailure(r));
  assertStringIncludes(String(r.cause), file);
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["checkpoint.bin"]);
  // The open fails: the folder does not exist.
  const missing = `${dir}/nowhere/checkpoint.bin`;
  const m = await Effect.runPromiseExit(Checkpoint.write(missing, contents));
  assertStringIncludes(String(Exit.isFailure(m) && m.cause), missing);
  // The same helper writes summary.json in Train.run.
  await Deno.mkdir(`${dir}/summary.json`);
  await Deno.writeTextFile(`${dir}/summary.json/keep`, "x");
  let failed = false;
  await Checkpoint.writeAtomic(`${dir}/summary.json`, new Uint8Array([1])).catch(() => {
    failed = true;
  });
  assert(failed);
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
    "checkpoint.bin",
    "summary.json",
  ]);
  params.get("w")!.dispose();
});

Deno.test("readHeader gives the step, recipe and meta without reading the tensors", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/checkpoint.bin`;
  const params = new Map([["w", tf.ones([1000])]]);
  await Effect.runPromise(Checkpoint.write(file, {
    step: 7,
    params,
    opt: new Map(),
    recipe: { name: "r", train: { steps: 9 } },
    meta: { seconds: 2 },
  }));
  const h = await Effect.runPromise(Checkpoint.readHeader(file));
  assertEquals(h.recipe, { name: "r", train: { steps: 9 } });
  assertEquals([h.step, h.meta], [7, { seconds: 2 }]);
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(file, bytes.subarray(0, 40));
  const t = await Effect.runPromiseExit(Checkpoint.readHeader(file));
  assertStringIncludes(String(Exit.isFailure(t) && t.cause), "truncated header");
  params.get("w")!.dispose();
});
