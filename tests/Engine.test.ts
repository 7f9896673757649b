/**
 * The inference engine (lib/Engine.ts) on whole models: a small calibrated EDSR (3×3 convs) and
 * RDN (3×3 and 1×1 convs) at W2A2 and a W3A3 and a W4A4 EDSR, each run with the integer
 * kernels and on the fake-quant float path; their 8-bit SR outputs (clamped and rounded, SPEC
 * §8) must agree within 1 level on a real photograph. The packed file of the model
 * (lib/Packed.ts) runs on the engine to the same pixels as the model it was packed from.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertEquals, assertLess } from "@std/assert";
import * as Engine from "../lib/Engine.ts";
import * as Image from "../lib/Image.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Packed from "../lib/Packed.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Upscale from "../lib/Upscale.ts";
import * as UpscaleCli from "../lib/cli/upscale.ts";
import * as Deploy from "./_deploy.ts";
import { backend } from "./_setup.ts";

Kernels.install(backend);

const ROOT = new URL("../", import.meta.url).pathname;

/** An odd-sized LR crop of a held-out photograph. */
async function lr(): Promise<Image.Image> {
  const names = [...Deno.readDirSync(`${ROOT}data/eval`)].map((e) => e.name).filter((f) =>
    f.endsWith(".png")
  ).sort();
  return Image.crop(await Image.read(`${ROOT}data/eval/${names[0]}`), 40, 24, 21, 17);
}

const diff = (a: Image.Image, b: Image.Image) => {
  assertEquals([a.width, a.height], [b.width, b.height]);
  let max = 0, count = 0;
  for (let i = 0; i < a.data.length; i++) {
    const d = Math.abs(a.data[i] - b.data[i]);
    max = Math.max(max, d);
    if (d > 0) count++;
  }
  return { max, share: count / a.data.length };
};

const sr = (
  m: { model: Engine.Engine["model"]; params: Engine.Engine["params"] },
  img: Image.Image,
) => Effect.runPromise(Upscale.upscale(m, img));

const cases: Array<[string, Recipe.Input]> = [
  ["EDSR W2A2", Deploy.small.edsr],
  ["RDN W2A2 (1×1 and 3×3)", Deploy.small.rdn],
  ["EDSR W3A3", { ...Deploy.small.edsr, quant: { wbits: 3, abits: 3 } }],
  ["EDSR W4A4", { ...Deploy.small.edsr, quant: { wbits: 4, abits: 4 } }],
];

for (const [name, input] of cases) {
  Deno.test(`engine: ${name} on the integer kernels is within 1 level of the float path`, async () => {
    const b = await Deploy.built(input);
    const img = await lr();
    const engine = await Engine.prepare(b, { kind: "int" });
    const quantized = engine.plan.filter((p) => p.wbits < 32);
    assert(quantized.length > 0);
    assertEquals(
      engine.plan.filter((p) => p.engine === "int").length,
      quantized.length,
      JSON.stringify(engine.plan.filter((p) => p.engine !== "int")),
    );
    await sr(engine, img); // first call: the tile planner measures and caches the footprint
    const before = tf.memory().numTensors;
    const yi = await sr(engine, img);
    assertEquals(tf.memory().numTensors, before, "tensors leaked");
    const yf = await sr(b, img);
    const d = diff(yi, yf);
    console.log(`${name}: max ${d.max} level(s), ${(100 * d.share).toFixed(3)}% of values differ`);
    assertLess(d.max, 2, `${name}: ${d.max} levels apart`);
    assertLess(d.share, 0.01, `${name}: ${(100 * d.share).toFixed(2)}% of values differ`);
    engine.dispose();
    Tree.dispose(b.params);
  });
}

Deno.test("engine: a packed file runs to the pixels of the model it was packed from", async () => {
  const b = await Deploy.built(Deploy.small.edsr);
  const bytes = await Packed.encode({
    model: b.model,
    params: b.params,
    recipe: Recipe.toJSON(b.recipe),
    arch: b.recipe.model.arch,
    scale: b.recipe.model.scale,
    options: (b.recipe.model.options ?? {}) as Record<string, number>,
  });
  const p = await Packed.decode(bytes, "(test).qsr.safetensors");
  const img = await lr();
  const fromRun = await Engine.prepare(b, { kind: "int" });
  const fromPacked = await Engine.prepare(p, { kind: "int" });
  const a = await sr(fromRun, img), c = await sr(fromPacked, img);
  assertEquals(diff(a, c).max, 0);
  assertLess(diff(c, await sr(p, img)).max, 2);
  fromRun.dispose();
  fromPacked.dispose();
  Tree.dispose(b.params);
  Tree.dispose(p.params);
});

Deno.test("engine: kind float is the fake-quant model itself", async () => {
  const b = await Deploy.built(Deploy.small.edsr);
  const e = await Engine.prepare(b, { kind: "float" });
  assert(e.model === b.model);
  assert(e.plan.every((p) => p.engine === "float"));
  Tree.dispose(b.params);
});

Deno.test("engine: auto runs 2- and 3-bit layers on the integer kernels, 4-bit ones as float", async () => {
  for (const [bits, want] of [[2, "int"], [4, "float"]] as const) {
    const b = await Deploy.built({ ...Deploy.small.edsr, quant: { wbits: bits, abits: bits } });
    const e = await Engine.prepare(b);
    assertEquals(e.kind, "auto");
    assert(e.plan.every((p) => p.engine === want), JSON.stringify(e.plan));
    if (want === "float") assert(e.plan[0].reason?.startsWith("auto:"));
    e.dispose();
    Tree.dispose(b.params);
  }
});

Deno.test("deno task upscale --engine int|float: a packed file, pixels within 1 level", async () => {
  const b = await Deploy.built(Deploy.small.edsr);
  const dir = await Deno.makeTempDir({ prefix: "engine-cli-" });
  const packed = `${dir}/model${Packed.EXTENSION}`;
  await Deno.writeFile(
    packed,
    await Packed.encode({
      model: b.model,
      params: b.params,
      recipe: Recipe.toJSON(b.recipe),
      arch: b.recipe.model.arch,
      scale: b.recipe.model.scale,
      options: (b.recipe.model.options ?? {}) as Record<string, number>,
    }),
  );
  await Image.write(`${dir}/in.png`, await lr());
  const out: Record<string, Image.Image> = {};
  for (const engine of ["int", "float"]) {
    const r = await Effect.runPromise(
      UpscaleCli.program([
        `${dir}/in.png`,
        "--model",
        packed,
        "--out",
        `${dir}/${engine}.png`,
        "--engine",
        engine,
      ]),
    );
    assertEquals(UpscaleCli.exitCode(r), 0);
    out[engine] = await Image.read(`${dir}/${engine}.png`);
  }
  assertLess(diff(out.int, out.float).max, 2);
  await Deno.remove(dir, { recursive: true });
  Tree.dispose(b.params);
});
