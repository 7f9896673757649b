/**
 * Deployment end to end (lib/Upscale.ts, lib/cli/import.ts, export.ts, upscale.ts): a tiled
 * upscale equals the untiled one within 1 level; `deno task upscale` on a folder with a
 * corrupt PNG and a text file names both, still writes the good images and says so in its exit
 * code; a run folder, its export to a packed file and an imported PyTorch checkpoint all load.
 */
import { Effect } from "effect";
import { assert, assertEquals, assertLess, assertStringIncludes } from "@std/assert";
import * as Checkpoint from "../lib/Checkpoint.ts";
import * as Image from "../lib/Image.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Upscale from "../lib/Upscale.ts";
import * as ExportCli from "../lib/cli/export.ts";
import * as ImportCli from "../lib/cli/import.ts";
import * as UpscaleCli from "../lib/cli/upscale.ts";
import * as Deploy from "./_deploy.ts";
import "./_setup.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** A run folder holding a checkpoint of `b` (as training writes it). */
async function runFolder(b: Deploy.Built): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "upscale-run-" });
  await Effect.runPromise(Checkpoint.write(`${dir}/checkpoint.bin`, {
    step: 0,
    params: Tree.flatten(b.params),
    opt: new Map(),
    recipe: Recipe.toJSON(b.recipe),
    meta: {},
  }));
  return dir;
}

const maxDiff = (a: Image.Image, b: Image.Image) => {
  assertEquals([a.width, a.height], [b.width, b.height]);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(a.data[i] - b.data[i]));
  return m;
};

Deno.test("tiled upscaling equals untiled within 1 level (W4A4 default model, SwinIR W2A2)", async () => {
  const photo = await Image.read(`${ROOT}data/eval/butterfly.png`);
  // Crops just larger than one tile's area, so that a few tiles (2×2, 2×3) with interior seams
  // run: a tile is its core plus the receptive-field halo on each side (default: reach 10, the
  // smallest exact tile 28; SwinIR-S: reach 21 on the window grid of 4, halo 24), and each new
  // tile shape costs shader compilations on lavapipe, so few tiles keep this test short.
  const cases = [
    { b: await Deploy.defaultModel(), w: 96, h: 72, tile: 72 },
    { b: await Deploy.built(Deploy.small.swinir), w: 104, h: 80, tile: 88 },
  ];
  for (const { b, w, h, tile } of cases) {
    const lr = Image.crop(photo, 40, 30, w, h);
    let tiles = 0, exact = false;
    const whole = await Effect.runPromise(Upscale.upscale(b, lr));
    const tiled = await Effect.runPromise(
      Upscale.upscale(b, lr, {
        tile,
        onPlan: (p) => ([tiles, exact] = [p.tiles.length, p.exact]),
      }),
    );
    assert(tiles > 1, `${b.recipe.name}: ${tiles} tile(s)`);
    assert(exact, `${b.recipe.name}: the plan's halo covers the receptive field`);
    const d = maxDiff(tiled, whole);
    console.log(`${b.recipe.name}: ${tiles} tiles of ≤ ${tile}², max difference ${d} level(s)`);
    assertLess(d, 2);
    Tree.dispose(b.params);
  }
});

Deno.test("deno task upscale: a folder with a corrupt and a non-image file still runs, exit code 2", async () => {
  const b = await Deploy.built(Deploy.small.edsr);
  const run = await runFolder(b);
  const input = await Deno.makeTempDir({ prefix: "upscale-in-" });
  const out = `${input}-out`;
  const photo = await Image.read(`${ROOT}data/eval/chelsea.png`);
  await Image.write(`${input}/a.png`, Image.crop(photo, 0, 0, 40, 30));
  await Deno.writeFile(
    `${input}/b.jpg`,
    await Deno.readFile(`${ROOT}tests/fixtures/tiny/rocket-48.png`),
  );
  const good = await Deno.readFile(`${input}/a.png`);
  await Deno.writeFile(`${input}/c.png`, good.subarray(0, good.length - 40)); // corrupt
  await Deno.writeTextFile(`${input}/notes.txt`, "not an image");
  const report = await Effect.runPromise(
    UpscaleCli.program([input, "--model", run, "--out", out, "--tile", "16"]),
  );
  assert(report);
  assertEquals(report.images.map((i) => i.file.split("/").pop()), ["a.png", "b.jpg"]);
  assertEquals(report.failed.map((f) => f.file.split("/").pop()), ["c.png", "notes.txt"]);
  assertStringIncludes(report.failed[0].reason, "corrupt PNG");
  assertStringIncludes(report.failed[1].reason, "unknown format");
  assertEquals(UpscaleCli.exitCode(report), 2);
  const a = await Image.read(`${out}/a.png`);
  assertEquals([a.width, a.height], [80, 60]);
  // The same image through the packed export of the run gives the same pixels.
  const packed = `${run}/model.qsr.safetensors`;
  const ex = await Effect.runPromise(
    ExportCli.program(["--checkpoint", run, "--format", "packed", "--out", packed]),
  );
  assert(ex && ex.bytes > 0);
  const one = await Effect.runPromise(
    UpscaleCli.program([`${input}/a.png`, "--model", packed, "--out", `${out}/from-packed.png`]),
  );
  assertEquals(UpscaleCli.exitCode(one), 0);
  assertEquals(maxDiff(await Image.read(`${out}/from-packed.png`), a), 0);
  for (const d of [run, input, out]) await Deno.remove(d, { recursive: true });
  Tree.dispose(b.params);
});

Deno.test("deno task import writes a checkpoint that loads as its recipe's model", async () => {
  const out = await Deno.makeTempDir({ prefix: "import-" });
  const summary = await Effect.runPromise(ImportCli.program([
    `${ROOT}tests/fixtures/torch/swinir_x2.pth`,
    "--arch",
    "swinir",
    "--scale",
    "2",
    "--out",
    out,
    "--force",
  ]));
  assert(summary);
  assertEquals(summary.layout, "swinir");
  assertEquals(summary.key, "params");
  const m = await Upscale.load(out);
  assertEquals(m.recipe.model, {
    arch: "swinir",
    scale: 2,
    options: { embedDim: 12, numLayers: 2, depth: 2, numHeads: 2, windowSize: 4, mlpRatio: 2 },
    pretrained: false,
  });
  assertEquals(Recipe.isFullPrecision(m.recipe), true);
  Tree.dispose(m.params);
  await Deno.remove(out, { recursive: true });
});
