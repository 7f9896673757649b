/**
 * End-to-end runs of `deno task eval` in child processes, on a small set made of two ×4 crops
 * of the embedded images plus a corrupt file: the pretrained esrgan-slim beats bicubic, the
 * table has both rows, the bad file is a warning; `--json` prints pure JSON, `--checkpoint`
 * rebuilds a quantized model from the recipe stored in its checkpoint, `--save` writes PNGs.
 */
import { Effect } from "effect";
import { assert, assertEquals, assertGreater, assertMatch } from "@std/assert";
import * as Checkpoint from "../../lib/Checkpoint.ts";
import * as Data from "../../lib/Data.ts";
import * as Image from "../../lib/Image.ts";
import * as Recipe from "../../lib/Recipe.ts";
import * as Tree from "../../lib/Tree.ts";
import * as Registry from "../../models/registry.ts";
import "../_setup.ts";

const root = new URL("../../", import.meta.url).pathname;

const evalTask = async (args: string[]) => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/eval.ts", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: r.code,
    stdout: new TextDecoder().decode(r.stdout),
    stderr: new TextDecoder().decode(r.stderr),
  };
};

/** Two 96×96 textured crops (LR 24×24 at ×4) and one corrupt PNG. */
async function smallSet(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "eval-e2e-" });
  const butterfly = await Image.read(`${Data.embedded.eval}butterfly.png`);
  const kodim = await Image.read(`${Data.embedded.eval}kodim07.png`);
  await Image.write(`${dir}/butterfly.png`, Image.crop(butterfly, 80, 80, 96, 96));
  await Image.write(`${dir}/kodim07.png`, Image.crop(kodim, 300, 200, 96, 96));
  await Deno.writeFile(
    `${dir}/zz-broken.png`,
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]),
  );
  return dir;
}

Deno.test("eval --model esrgan-slim --pretrained: the table's model row beats Bicubic", async () => {
  const set = await smallSet();
  try {
    const r = await evalTask(["--model", "esrgan-slim", "--pretrained", "--data", set]);
    assertEquals(r.code, 0, r.stdout + r.stderr);
    const name = set.split("/").pop()!;
    assert(r.stdout.includes(`| Method (×4) | W/A | ${name} |`), r.stdout);
    const cell = (row: string) => {
      const m = new RegExp(`^\\| ${row} \\| [^|]+ \\| ([0-9.]+) / ([0-9.]+) \\|$`, "m").exec(
        r.stdout,
      );
      assert(m, `no ${row} row in:\n${r.stdout}`);
      return { psnr: Number(m[1]), ssim: Number(m[2]) };
    };
    const bicubic = cell("Bicubic");
    const model = cell("esrgan-slim \\(pretrained\\)");
    assertGreater(model.psnr, bicubic.psnr, r.stdout);
    assertMatch(r.stdout, /esrgan-slim \(pretrained\) \| \S+ 2\/2 kodim07\.png: [0-9.]+ dB/);
    assertMatch(r.stderr, /warning: .*zz-broken\.png: corrupt PNG.*left out/);
    assertMatch(r.stdout, /1 image\(s\) left out/);
  } finally {
    await Deno.remove(set, { recursive: true });
  }
});

Deno.test("eval --json with a quantized checkpoint and --save: pure JSON, rows, PNGs", async () => {
  const set = await smallSet();
  const out = await Deno.makeTempDir({ prefix: "eval-e2e-out-" });
  try {
    // A tiny W4A4 EDSR ×4 checkpoint, as `deno task train` would write it (untrained).
    const recipe = Recipe.parse({
      name: "tiny-edsr-x4-w4a4",
      model: { arch: "edsr", scale: 4, options: { numFeat: 4, numBlock: 1 } },
      quant: { wbits: 4, abits: 4 },
      train: { steps: 0, seed: 3 },
    });
    const model = Registry.quantize(recipe, Registry.architecture(recipe.model));
    const params = model.init(3);
    await Effect.runPromise(Checkpoint.write(`${out}/checkpoint.bin`, {
      step: 0,
      params: Tree.flatten(params),
      opt: new Map(),
      recipe: Recipe.toJSON(recipe),
      meta: {},
    }));
    Tree.dispose(params);

    const r = await evalTask([
      "--checkpoint",
      out,
      "--model",
      "esrgan-slim",
      "--pretrained",
      "--data",
      set,
      "--json",
      "--ssim",
      "valid",
      "--save",
      `${out}/sr`,
    ]);
    // The checkpoint's model is untrained (random weights): its outputs are flagged as far
    // below bicubic, its set has no score, and the exit code says so.
    assertEquals(r.code, 2, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout);
    const name = set.split("/").pop()!;
    assertEquals(report.rows.map((x: { model: string }) => x.model), [
      "Bicubic",
      "tiny-edsr-x4-w4a4",
      "esrgan-slim (pretrained)",
    ]);
    assertEquals([report.scale, report.ssim], [4, "valid"]);
    for (const [i, row] of report.rows.entries()) {
      const s = row.sets[name];
      assertEquals(s.images, 2);
      if (i === 1) {
        assertEquals([s.psnr, s.ssim], [null, null]);
        assertGreater(s.flagged.length, 0);
        assertMatch(s.flagged[0].reason, /far below bicubic/);
        assert(Number.isFinite(s.flagged[0].psnr), "a flagged image keeps its own numbers");
      } else {
        assert(Number.isFinite(s.psnr) && s.ssim > 0 && s.ssim <= 1, JSON.stringify(row));
        assertEquals(s.flagged, []);
      }
    }
    assertEquals(report.rows[1].wbits, 4);
    assertGreater(report.rows[2].sets[name].psnr, report.rows[0].sets[name].psnr);
    assertEquals(report.warnings.length, 1);
    assertMatch(report.warnings[0].file, /zz-broken\.png$/);
    assertMatch(r.stderr, /backend: /);
    const sr = await Image.read(`${out}/sr/esrgan-slim_pretrained_/${name}/kodim07.png`);
    assertEquals([sr.width, sr.height], [96, 96]);
    await Image.read(`${out}/sr/tiny-edsr-x4-w4a4/${name}/butterfly.png`);
  } finally {
    await Deno.remove(set, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("eval refuses --model edsr --pretrained with a clear error", async () => {
  const r = await evalTask(["--model", "edsr", "--pretrained"]);
  assertEquals(r.code, 1);
  assertMatch(r.stderr, /error: no pretrained weights ship for --model edsr/);
});
