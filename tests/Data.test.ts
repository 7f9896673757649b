/**
 * Patch batches: aligned LR/HR under every augmentation, seeded, the same as the loader before
 * streaming recorded them (SHA-256 oracle), cut positions from the LR sizes alone, and folder
 * loading errors; symlinked images are followed and a dangling symlink is named; a dataset's
 * own LR file is used and checked.
 */
import { Effect, Exit, Stream } from "effect";
import { assert, assertEquals, assertNotEquals, assertStringIncludes } from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Resize from "../lib/Resize.ts";
import * as Rng from "../lib/Rng.ts";
import { cases, oracle, sha256 } from "./fixtures/make_data_batches.ts";
import "./_setup.ts";

/** A dataset whose HR image is the LR image with every pixel repeated s×s (nearest upscale). */
function blockDataset(s: number): Data.Dataset {
  const w = 20, h = 14;
  const lr = Image.make(w, h, Uint8Array.from(Rng.uniform(3, w * h * 3, 0, 256), Math.floor));
  const hr = new Uint8Array(w * s * h * s * 3);
  for (let y = 0; y < h * s; y++) {
    for (let x = 0; x < w * s; x++) {
      for (let c = 0; c < 3; c++) {
        hr[(y * w * s + x) * 3 + c] = lr.data[(Math.floor(y / s) * w + Math.floor(x / s)) * 3 + c];
      }
    }
  }
  return {
    name: "blocks",
    scale: s,
    pairs: [{ file: "blocks", lr, hr: Image.make(w * s, h * s, hr) }],
  };
}

Deno.test("every LR patch equals its HR patch's s×s blocks, under flips and transpose", () => {
  for (const s of [2, 3, 4]) {
    const ds = blockDataset(s);
    const opts = { batch: 6, patch: 5, seed: 9 };
    for (let index = 0; index < 20; index++) {
      const b = Data.batch(ds, opts, index);
      const p = opts.patch, hp = p * s;
      for (let n = 0; n < opts.batch; n++) {
        for (let i = 0; i < hp; i++) {
          for (let j = 0; j < hp; j++) {
            for (let c = 0; c < 3; c++) {
              const hv = b.hr[n * hp * hp * 3 + (i * hp + j) * 3 + c];
              const lv = b.lr[n * p * p * 3 + (Math.floor(i / s) * p + Math.floor(j / s)) * 3 + c];
              if (hv !== lv) {
                throw new Error(`misaligned at ×${s} batch ${index} patch ${n} (${i}, ${j})`);
              }
            }
          }
        }
      }
    }
  }
});

Deno.test("batches are a pure function of (seed, index); augmentations do occur", () => {
  const ds = blockDataset(2);
  const opts = { batch: 4, patch: 6, seed: 1 };
  assertEquals(Data.batch(ds, opts, 5).lr, Data.batch(ds, opts, 5).lr);
  assertNotEquals(Data.batch(ds, opts, 5).lr, Data.batch(ds, opts, 6).lr);
  assertNotEquals(Data.batch(ds, opts, 5).lr, Data.batch(ds, { ...opts, seed: 2 }, 5).lr);
  // Without augmentation a patch is a plain crop of the LR image; with it, some patches differ
  // from every plain crop (flipped or transposed).
  const isCrop = (patch: Float32Array) => {
    const img = ds.pairs[0].lr, p = opts.patch;
    for (let y = 0; y + p <= img.height; y++) {
      for (let x = 0; x + p <= img.width; x++) {
        let ok = true;
        for (let i = 0; i < p && ok; i++) {
          for (let j = 0; j < p * 3 && ok; j++) {
            ok = patch[i * p * 3 + j] === img.data[((y + i) * img.width + x) * 3 + j];
          }
        }
        if (ok) return true;
      }
    }
    return false;
  };
  const patches = (augment: boolean) =>
    Array.from({ length: 10 }, (_, k) => Data.batch(ds, { ...opts, augment }, k)).flatMap((b) =>
      Array.from({ length: opts.batch }, (_, n) => b.lr.slice(n * 108, (n + 1) * 108))
    );
  assert(patches(false).every(isCrop));
  assert(!patches(true).every(isCrop));
});

Deno.test("the stream yields the same batches as direct calls, from any start", async () => {
  const ds = blockDataset(3);
  const opts = { batch: 2, patch: 4, seed: 3 };
  const got = await Effect.runPromise(Stream.runCollect(Data.stream(ds, opts, 7, 10)));
  assertEquals(Array.from(got).map((b) => b.index), [7, 8, 9]);
  assertEquals(Array.from(got)[1].hr, Data.batch(ds, opts, 8).hr);
});

Deno.test("a folder with a corrupt image fails with the file's name", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeFile(`${dir}/good.png`, Image.encodePng(Image.make(8, 8, new Uint8Array(192))));
  await Deno.writeFile(`${dir}/broken.png`, new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]));
  const exit = await Effect.runPromiseExit(Data.load(dir, 2));
  assert(Exit.isFailure(exit));
  assertStringIncludes(String(exit.cause), "broken.png");
  const tiny = await Deno.makeTempDir();
  await Deno.writeFile(`${tiny}/one.png`, Image.encodePng(Image.make(1, 1, new Uint8Array(3))));
  const small = await Effect.runPromiseExit(Data.load(tiny, 4));
  assert(Exit.isFailure(small));
  assertStringIncludes(String(small.cause), "smaller than the scale");
  const empty = await Effect.runPromiseExit(Data.load(await Deno.makeTempDir(), 2));
  assertStringIncludes(String(Exit.isFailure(empty) && empty.cause), "no PNG or JPEG");
});

Deno.test("the embedded sets load, LR = bicubic of the modcropped HR", async () => {
  const ds = await Effect.runPromise(Data.load(Data.embedded.eval, 4));
  assertEquals(ds.pairs.length, 8);
  for (const p of ds.pairs) {
    assertEquals([p.lr.width * 4, p.lr.height * 4], [p.hr.width, p.hr.height]);
  }
});

Deno.test("symlinks to images are followed; a dangling one is named, not skipped silently", async () => {
  const dir = await Deno.makeTempDir();
  const store = await Deno.makeTempDir();
  const img = Image.make(8, 6, Uint8Array.from({ length: 144 }, (_, i) => i));
  await Deno.writeFile(`${dir}/a.png`, Image.encodePng(img));
  await Deno.writeFile(`${store}/b.png`, Image.encodePng(img));
  await Deno.symlink(`${store}/b.png`, `${dir}/b.png`);
  await Deno.symlink(`${store}/missing.png`, `${dir}/c.png`);
  await Deno.symlink(store, `${dir}/d.png`); // a folder with an image's name
  const skipped: Array<[string, string]> = [];
  const files = await Effect.runPromise(
    Data.listImages(dir, (f, why) => skipped.push([f, why])),
  );
  assertEquals(files, [`${dir}/a.png`, `${dir}/b.png`]);
  assertEquals(skipped.map(([f]) => f), [`${dir}/c.png`, `${dir}/d.png`]);
  assertStringIncludes(skipped[0][1], `dangling symlink (its target ${store}/missing.png`);
  assertStringIncludes(skipped[1][1], "a symlink to a folder");
  // Training data: the symlinked image is loaded, the dangling one reported.
  const reported: string[] = [];
  const ds = await Effect.runPromise(Data.load(dir, 2, { onSkip: (f) => reported.push(f) }));
  assertEquals(ds.pairs.map((p) => p.file), files);
  assertEquals(ds.pairs[1].hr.data, ds.pairs[0].hr.data);
  assertEquals(reported, [`${dir}/c.png`, `${dir}/d.png`]);
});

Deno.test("the embedded batches are the ones the loader before streaming cut (recorded hashes)", async () => {
  // The oracle was recorded with lib/Data.ts as of b654790, before plan/put existed: the
  // default recipe's training and calibration streams, ×2 batch 16, ×3 without augmentation.
  for (const [i, c] of cases.entries()) {
    const ds = await Effect.runPromise(Data.load(Data.embedded.train, c.scale));
    const opts = { batch: c.batch, patch: c.patch, seed: c.seed, augment: c.augment };
    const want = (await oracle()).cases[i].hashes;
    assertEquals(want.map((h) => h.index), c.indices);
    for (const h of want) {
      const b = Data.batch(ds, opts, h.index);
      assertEquals(await sha256(b.lr), h.lr, `case ${i} batch ${h.index} LR`);
      assertEquals(await sha256(b.hr), h.hr, `case ${i} batch ${h.index} HR`);
    }
  }
});

Deno.test("a batch's cuts come from the LR sizes alone, inside each image, never from one too small", () => {
  const sizes = [{ width: 9, height: 30 }, { width: 12, height: 10 }, { width: 40, height: 9 }];
  const opts = { batch: 64, patch: 10, seed: 4 };
  const drawn = new Set<number>();
  for (let k = 0; k < 20; k++) {
    const cuts = Data.plan("sizes", sizes, opts, k);
    assertEquals(cuts, Data.plan("sizes", sizes.map((s) => ({ ...s })), opts, k));
    for (const c of cuts) {
      drawn.add(c.image);
      const s = sizes[c.image];
      assert(
        c.x >= 0 && c.y >= 0 && c.x + 10 <= s.width && c.y + 10 <= s.height,
        JSON.stringify(c),
      );
    }
  }
  // Only image 1 (12×10) holds a 10×10 patch; both corners of its 3×1 positions occur.
  assertEquals([...drawn], [1]);
  // The same sizes with pixels give the batch whose patches are the plan's windows.
  const ds = blockDataset(2);
  const b = Data.batch(ds, { batch: 3, patch: 4, seed: 2, augment: false }, 7);
  const cuts = Data.plan(
    ds.name,
    [ds.pairs[0].lr],
    { batch: 3, patch: 4, seed: 2, augment: false },
    7,
  );
  for (const [n, c] of cuts.entries()) {
    for (let i = 0; i < 4; i++) {
      for (let j = 0; j < 4 * 3; j++) {
        const want = ds.pairs[0].lr.data[((c.y + i) * 20 + c.x) * 3 + j];
        if (b.lr[n * 48 + i * 12 + j] !== want) throw new Error(`patch ${n} (${i}, ${j})`);
      }
    }
  }
  // Rows holding only part of an image (a loader's read) give the same patch.
  const whole = Data.allocate({ batch: 1, patch: 4 }, 2, 0);
  const part = Data.allocate({ batch: 1, patch: 4 }, 2, 0);
  const c = { ...cuts[0], hflip: true, transpose: true };
  const { lr, hr } = ds.pairs[0];
  Data.put(whole, 0, c, lr, hr);
  const rows = (img: Image.Image, y: number, n: number) => ({
    width: img.width,
    data: img.data.slice(y * img.width * 3, (y + n) * img.width * 3),
    top: y,
  });
  Data.put(part, 0, c, rows(lr, c.y, 4), rows(hr, c.y * 2, 8));
  assertEquals(part.lr, whole.lr);
  assertEquals(part.hr, whole.hr);
});

Deno.test("a pair with its own LR file uses that file, and a mismatched one is named", async () => {
  const dir = await Deno.makeTempDir();
  const hr = Image.make(9, 7, Uint8Array.from({ length: 189 }, (_, i) => (i * 37) % 256));
  const own = Image.make(4, 3, new Uint8Array(36).fill(200)); // not the bicubic of hr
  await Image.write(`${dir}/a.png`, hr);
  await Image.write(`${dir}/ax2.png`, own);
  await Image.write(`${dir}/bad.png`, Image.make(5, 3, new Uint8Array(45)));
  const p = await Effect.runPromise(Data.pairOf(`${dir}/a.png`, 2, `${dir}/ax2.png`));
  assertEquals(p.lr, own);
  assertEquals(p.hr, Image.modcrop(hr, 2));
  const plain = await Effect.runPromise(Data.pairOf(`${dir}/a.png`, 2));
  assertEquals(plain.lr, Resize.downscale(Image.modcrop(hr, 2), 2));
  const bad = await Effect.runPromiseExit(Data.pairOf(`${dir}/a.png`, 2, `${dir}/bad.png`));
  assert(Exit.isFailure(bad));
  assertStringIncludes(
    String(bad.cause),
    `HR is 9x7 (8x6 cropped to a multiple of 2) but its LR file ${dir}/bad.png is 5x3; expected 4x3`,
  );
});
