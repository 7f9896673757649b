/**
 * Benchmark: folder layouts (flat HR, `<set>/HR` + `LR_bicubic/X<s>`, DIV2K `_HR` +
 * `_LR_bicubic`), LR naming conventions, grey images, symlinked images, and bad files (dangling
 * symlinks too) that are named and left out while the other images are still evaluated.
 */
import { Effect } from "effect";
import { encode as encodePng } from "fast-png";
import { assert, assertEquals, assertMatch, assertRejects } from "@std/assert";
import * as Benchmark from "../lib/Benchmark.ts";
import * as Data from "../lib/Data.ts";
import * as Evaluate from "../lib/Evaluate.ts";
import * as Image from "../lib/Image.ts";
import * as Resize from "../lib/Resize.ts";
import "./_setup.ts";

/** A smooth colour image with some texture, so bicubic is not exact. */
const picture = (w: number, h: number, seed = 0): Image.Image => {
  const d = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      d[i] = (x * 13 + y * 7 + seed) % 256;
      d[i + 1] = Math.round(128 + 100 * Math.sin((x + seed) / 2) * Math.cos(y / 3));
      d[i + 2] = ((x ^ y) * 9 + seed) % 256;
    }
  }
  return Image.make(w, h, d);
};

const flat = (w: number, h: number, v: number) =>
  Image.make(w, h, new Uint8Array(w * h * 3).fill(v));

const greyPng = (w: number, h: number): Uint8Array => {
  const d = new Uint8Array(w * h);
  for (let i = 0; i < d.length; i++) d[i] = (i * 37) % 256;
  return encodePng({ width: w, height: h, data: d, depth: 8, channels: 1 });
};

/** PNG magic bytes followed by garbage. */
const corruptPng = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3, 4, 5]);

/** Runs `f` in a fresh temporary folder, removed afterwards. */
const inTemp = async (f: (dir: string) => Promise<void>) => {
  const dir = await Deno.makeTempDir({ prefix: "benchmark-test-" });
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
};

const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e);
const names = (xs: ReadonlyArray<{ file: string }>) => xs.map((x) => x.file.split("/").pop());

Deno.test("a flat HR folder: bad files are named and left out, the others evaluated", () =>
  inTemp(async (dir) => {
    await Image.write(`${dir}/a.png`, picture(16, 16));
    await Deno.writeFile(`${dir}/broken.png`, corruptPng);
    await Deno.writeFile(`${dir}/grey.png`, greyPng(12, 10));
    await Image.write(`${dir}/odd.png`, picture(15, 13, 5));
    await Image.write(`${dir}/tiny.png`, picture(1, 1));
    const seen: string[] = [];
    const set = await run(Benchmark.load(dir, 2, { onProblem: (p) => seen.push(p.file) }));
    assertEquals(set.name, dir.split("/").pop());
    assertEquals(set.lr, undefined);
    assertEquals(names(set.pairs), ["a.png", "grey.png", "odd.png"]);
    assertEquals(names(set.problems), ["broken.png", "tiny.png"]);
    assertEquals(seen, set.problems.map((p) => p.file));
    assertMatch(Benchmark.describe(set.problems[0]), /broken\.png: corrupt PNG/);
    assertMatch(Benchmark.describe(set.problems[1]), /tiny\.png: image is 1x1, smaller than/);

    // HR cropped to a multiple of the scale, LR by MATLAB bicubic of that.
    const odd = set.pairs[2];
    assertEquals([odd.hr.width, odd.hr.height, odd.lr.width, odd.lr.height], [14, 12, 7, 6]);
    assertEquals(odd.lr.data, Resize.downscale(odd.hr, 2).data);
    // Grey decodes as RGB with equal channels.
    const grey = set.pairs[1].hr;
    for (let i = 0; i < grey.data.length; i += 3) {
      assert(grey.data[i] === grey.data[i + 1] && grey.data[i] === grey.data[i + 2]);
    }
    const scores = await run(Evaluate.bicubic(set));
    assertEquals(scores.images.length, 3);
    for (const s of scores.images) assert(Number.isFinite(s.psnr) && s.psnr > 5, `${s.file}`);
  }));

Deno.test("<set>/HR with LR_bicubic/X<s>: both LR names, mismatches and missing LR named", () =>
  inTemp(async (root) => {
    const set = `${root}/MySet`;
    await Deno.mkdir(`${set}/HR`, { recursive: true });
    await Deno.mkdir(`${set}/LR_bicubic/X2`, { recursive: true });
    await Image.write(`${set}/HR/0801.png`, picture(16, 16));
    await Image.write(`${set}/HR/0802.png`, picture(16, 16, 3));
    await Image.write(`${set}/HR/baby.png`, picture(11, 8, 1)); // cropped to 10×8
    await Image.write(`${set}/HR/lonely.png`, picture(8, 8));
    await Image.write(`${set}/LR_bicubic/X2/0801x2.png`, flat(8, 8, 7));
    await Image.write(`${set}/LR_bicubic/X2/0802x2.png`, flat(7, 8, 7));
    await Image.write(`${set}/LR_bicubic/X2/baby.png`, flat(5, 4, 9));
    for (const dir of [set, `${set}/HR`]) {
      const b = await run(Benchmark.load(dir, 2));
      assertEquals(b.name, "MySet");
      assertEquals(b.hr, `${set}/HR`);
      assertEquals(b.lr, `${set}/LR_bicubic/X2`);
      assertEquals(names(b.pairs), ["0801.png", "baby.png"]);
      // The LR files are used as they are, not remade.
      assertEquals(b.pairs[0].lr.data, flat(8, 8, 7).data);
      assertEquals(b.pairs[1].lr.data, flat(5, 4, 9).data);
      assertEquals([b.pairs[1].hr.width, b.pairs[1].hr.height], [10, 8]);
      assertEquals(names(b.problems), ["0802.png", "lonely.png"]);
      assertMatch(b.problems[0].reason, /0802x2\.png is 7x8; expected 8x8/);
      assertMatch(b.problems[1].reason, /no LR image lonelyx2\.png/);
    }
    // At ×3 there is no X3 folder: LR by bicubic.
    const x3 = await run(Benchmark.load(set, 3));
    assertEquals(x3.lr, undefined);
    assertEquals(x3.pairs.length, 4);
  }));

Deno.test("DIV2K layout: <name>_HR with the sibling <name>_LR_bicubic/X<s>", () =>
  inTemp(async (root) => {
    await Deno.mkdir(`${root}/DIV2K_valid_HR`);
    await Deno.mkdir(`${root}/DIV2K_valid_LR_bicubic/X4`, { recursive: true });
    await Image.write(`${root}/DIV2K_valid_HR/0801.png`, picture(16, 12));
    await Image.write(`${root}/DIV2K_valid_LR_bicubic/X4/0801x4.png`, flat(4, 3, 50));
    const b = await run(Benchmark.load(`${root}/DIV2K_valid_HR/`, 4));
    assertEquals(b.name, "DIV2K_valid");
    assertEquals(b.lr, `${root}/DIV2K_valid_LR_bicubic/X4`);
    assertEquals(b.pairs[0].lr.data, flat(4, 3, 50).data);
    assertEquals(b.problems, []);
  }));

Deno.test("LR file names: <stem>x<s> first, then the HR name", () => {
  const lr = ["/l/babyx4.png", "/l/baby.png", "/l/0801x4.PNG", "/l/bird.jpg", "/l/headx2.png"];
  assertEquals(Benchmark.matchLr("/h/baby.png", lr, 4), "/l/babyx4.png");
  assertEquals(Benchmark.matchLr("/h/0801.png", lr, 4), "/l/0801x4.PNG");
  assertEquals(Benchmark.matchLr("/h/bird.png", lr, 4), "/l/bird.jpg");
  assertEquals(Benchmark.matchLr("/h/head.png", lr, 4), undefined);
});

Deno.test("`embedded` names the project's evaluation images; unusable folders fail clearly", () =>
  inTemp(async (dir) => {
    const e = await run(Benchmark.layout("embedded", 4));
    assertEquals(e, { name: "embedded", hr: Data.embedded.eval.replace(/\/$/, "") });
    await assertRejects(() => run(Benchmark.load(`${dir}/nope`, 4)), Error, "nope");
    await Deno.writeFile(`${dir}/x.png`, corruptPng);
    await assertRejects(() => run(Benchmark.load(dir, 4)), Error, "x.png: corrupt PNG");
  }));

Deno.test("symlinked images are evaluated; a dangling symlink is named and left out", () =>
  inTemp(async (root) => {
    const store = `${root}/store`;
    const set = `${root}/Linked`;
    await Deno.mkdir(store);
    await Deno.mkdir(`${set}/HR`, { recursive: true });
    await Deno.mkdir(`${set}/LR_bicubic/X2`, { recursive: true });
    const hr = picture(16, 12, 3);
    await Image.write(`${store}/a.png`, hr);
    await Image.write(`${store}/ax2.png`, Resize.downscale(hr, 2));
    await Image.write(`${set}/HR/b.png`, picture(8, 8));
    await Image.write(`${set}/LR_bicubic/X2/bx2.png`, picture(4, 4));
    await Deno.symlink(`${store}/a.png`, `${set}/HR/a.png`);
    await Deno.symlink(`${store}/ax2.png`, `${set}/LR_bicubic/X2/ax2.png`);
    await Deno.symlink(`${store}/gone.png`, `${set}/HR/c.png`);
    const seen: string[] = [];
    const s = await run(Benchmark.load(set, 2, { onProblem: (p) => seen.push(p.file) }));
    assertEquals(names(s.pairs), ["a.png", "b.png"]);
    assertEquals(s.pairs[0].lr.data, Resize.downscale(hr, 2).data);
    assertEquals(names(s.problems), ["c.png"]);
    assertMatch(s.problems[0].reason, /dangling symlink \(its target .*gone\.png does not exist\)/);
    assertEquals(seen, [`${set}/HR/c.png`]);
  }));
