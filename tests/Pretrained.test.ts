/**
 * Pretrained: the @upscalerjs RDN weights loaded into our RDN give the same output as
 * tfjs-layers running the original Keras model (the oracle, used only here), beat bicubic on a
 * real image, and every mismatch fails with an error naming the file and the weight.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertGreater, assertLess, assertRejects } from "@std/assert";
import * as Image from "../lib/Image.ts";
import * as Iqa from "../lib/Iqa.ts";
import * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Resize from "../lib/Resize.ts";
import * as Tree from "../lib/Tree.ts";
import { configs } from "../models/rdn.ts";
import { values } from "./_setup.ts";
import { dataDir } from "./_data.ts";

interface Manifest {
  readonly weightsManifest: ReadonlyArray<{
    readonly paths: string[];
    readonly weights: Array<{ name: string; shape: number[]; dtype: "float32" }>;
  }>;
}

const readJson = async (dir: string) =>
  JSON.parse(await Deno.readTextFile(`${dir}model.json`)) as Manifest & Record<string, unknown>;

/** The oracle: the Keras model through tfjs-layers, files read by a Deno IOHandler. */
async function kerasModel(dir: string): Promise<tf.LayersModel> {
  const doc = await readJson(dir);
  const group = doc.weightsManifest[0];
  const shard = await Deno.readFile(`${dir}${group.paths[0]}`);
  return tf.loadLayersModel({
    load: () =>
      Promise.resolve({
        modelTopology: doc.modelTopology as tf.io.ModelJSON["modelTopology"],
        weightSpecs: group.weights,
        weightData: shard.buffer as ArrayBuffer,
        format: doc.format as string,
        generatedBy: doc.generatedBy as string,
        convertedBy: doc.convertedBy as string,
      }),
  });
}

const NAMES = ["esrgan-slim", "esrgan-medium"] as const;

Deno.test("Keras weight names map to our dotted paths", () => {
  assertEquals(Pretrained.paramPath("F_m1/kernel"), "sfe1.weight");
  assertEquals(Pretrained.paramPath("F_0/bias"), "sfe2.bias");
  assertEquals(Pretrained.paramPath("F_10_1/kernel"), "rdbs.9.convs.0.weight");
  assertEquals(Pretrained.paramPath("F_2_8/bias"), "rdbs.1.convs.7.bias");
  assertEquals(Pretrained.paramPath("LFF_3/kernel"), "rdbs.2.lff.weight");
  assertEquals(Pretrained.paramPath("GFF_1/kernel"), "gff.0.weight");
  assertEquals(Pretrained.paramPath("GFF_2/kernel"), "gff.1.weight");
  assertEquals(Pretrained.paramPath("UPN1/kernel"), "upsample.0.weight");
  assertEquals(Pretrained.paramPath("UPN2/kernel"), "upsample.2.weight");
  assertEquals(Pretrained.paramPath("UPN3/bias"), "upsample.4.bias");
  assertEquals(Pretrained.paramPath("SR/kernel"), "tail.weight");
  assertEquals(Pretrained.paramPath("F_0_1/kernel"), undefined);
  assertEquals(Pretrained.paramPath("UPsample/kernel"), undefined);
  assertEquals(Pretrained.paramPath("F_m1/gamma"), undefined);
});

Deno.test("every package and scale loads: inferred config, every weight, no leak", async () => {
  for (const name of NAMES) {
    for (const scale of [2, 3, 4] as const) {
      const before = tf.memory().numTensors;
      const { model, params, info } = await Pretrained.load(name, scale);
      assertEquals(info.options, { ...configs[name], kernel: 3, upscale: scale });
      assertEquals(info.scale, scale);
      const doc = await readJson(Pretrained.directory(name, scale));
      const manifest = doc.weightsManifest.flatMap((g) => g.weights);
      const total = manifest.reduce((n, w) => n + w.shape.reduce((a, b) => a * b, 1), 0);
      assertEquals(info.parameters, total, `${name} ×${scale}`);
      assertEquals(Nn.parameterCount(model), total);
      assertEquals(Tree.flatten(params).size, manifest.length);
      assertEquals(
        Tree.leaf(Tree.sub(Tree.sub(params, "gff"), "0"), "weight").shape,
        [1, 1, configs[name].numBlock * 64, 64],
      );
      Tree.dispose(params);
      assertEquals(tf.memory().numTensors, before, `${name} ×${scale} leaks`);
    }
  }
});

Deno.test("our forward equals tfjs-layers on a real image, and beats bicubic (×4)", async () => {
  const scale = 4;
  const img = await Image.read(`${dataDir()}/eval/butterfly.png`);
  const hr = Image.crop(img, 60, 60, 48 * scale, 48 * scale);
  const lr = Resize.downscale(hr, scale);
  assertEquals([lr.width, lr.height], [48, 48]);
  const bicubic = Iqa.psnr(Resize.bicubicUpscale(lr, scale), hr, { shave: scale });
  const x = Image.toTensor(lr).expandDims(0);
  for (const name of NAMES) {
    const { model, params } = await Pretrained.load(name, scale);
    const keras = await kerasModel(Pretrained.directory(name, scale));
    const ours = tf.tidy(() => model.apply(params, x, Nn.context()));
    const ref = keras.predict(x) as tf.Tensor;
    assertEquals(ours.shape, [1, 192, 192, 3]);
    assertEquals(ref.shape, ours.shape);
    const a = await values(ours);
    const b = await values(ref);
    let maxAbs = 0;
    for (let i = 0; i < a.length; i++) maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    console.log(`${name} ×${scale}: max |ours − tfjs-layers| = ${maxAbs} (output in [0, 255])`);
    assertLess(maxAbs, 1e-3, name);
    const sr = await Image.fromTensor(ours.squeeze([0]) as tf.Tensor3D);
    const psnr = Iqa.psnr(sr, hr, { shave: scale });
    console.log(
      `${name} ×${scale}: PSNR-Y ${psnr.toFixed(3)} dB, bicubic ${bicubic.toFixed(3)} dB`,
    );
    // Random or misplaced weights give far below bicubic; these models gain 0.3–0.6 dB here.
    assertGreater(psnr, bicubic + 0.2, name);
    tf.dispose([ours, ref]);
    keras.dispose();
    Tree.dispose(params);
  }
  x.dispose();
});

/** A copy of slim ×2 in a temporary directory, with `edit` applied to its model.json. */
async function edited(edit: (doc: Manifest) => void, shard?: (b: Uint8Array) => Uint8Array) {
  const src = Pretrained.directory("esrgan-slim", 2);
  const dir = await Deno.makeTempDir({ prefix: "pretrained-test-" });
  const doc = await readJson(src);
  edit(doc);
  await Deno.writeTextFile(`${dir}/model.json`, JSON.stringify(doc));
  const bytes = await Deno.readFile(`${src}group1-shard1of1.bin`);
  await Deno.writeFile(`${dir}/group1-shard1of1.bin`, shard ? shard(bytes) : bytes);
  return dir;
}

Deno.test("mismatches fail with a PretrainedError naming the file and the weight", async () => {
  const before = tf.memory().numTensors;
  const weight = (doc: Manifest, name: string) =>
    doc.weightsManifest[0].weights.find((w) => w.name === name)!;

  // Same byte count, wrong layout: [3, 3, 64, 3] for sfe1's [3, 3, 3, 64].
  let dir = await edited((doc) => {
    weight(doc, "F_m1/kernel").shape = [3, 3, 64, 3];
  });
  let e = await assertRejects(() => Pretrained.loadDir(dir), Pretrained.PretrainedError);
  assertEquals(e.weight, "F_m1/kernel");
  assertEquals(e.file, `${dir}/model.json`);
  assert(e.message.includes(`${dir}/model.json`) && e.message.includes("sfe1.weight"), e.message);
  assert(e.message.includes("[3,3,64,3]") && e.message.includes("[3,3,3,64]"), e.message);
  await Deno.remove(dir, { recursive: true });

  // A weight the RDN does not have.
  dir = await edited((doc) => {
    weight(doc, "F_2_1/bias").name = "F_7_1/bias";
  });
  e = await assertRejects(() => Pretrained.loadDir(dir), Pretrained.PretrainedError);
  assertEquals(e.weight, "F_7_1/bias");
  assert(e.message.includes("rdbs.6.convs.0.bias"), e.message);
  await Deno.remove(dir, { recursive: true });

  // A truncated shard.
  dir = await edited(() => {}, (b) => b.subarray(0, b.length - 4));
  e = await assertRejects(() => Pretrained.loadDir(dir), Pretrained.PretrainedError);
  assert(e.message.includes("bytes"), e.message);
  await Deno.remove(dir, { recursive: true });

  // A non-float32 manifest is refused by the schema.
  dir = await edited((doc) => {
    (weight(doc, "SR/bias") as { dtype: string }).dtype = "int32";
  });
  e = await assertRejects(() => Pretrained.loadDir(dir), Pretrained.PretrainedError);
  assert(e.message.includes("unexpected model.json"), e.message);
  await Deno.remove(dir, { recursive: true });

  // A package that is not installed says how to install it.
  e = await assertRejects(
    () => Pretrained.load("esrgan-thick" as Pretrained.Name, 4),
    Pretrained.PretrainedError,
  );
  assert(e.message.includes("deno install"), e.message);
  assertEquals(tf.memory().numTensors, before, "failed loads leak nothing");
});
