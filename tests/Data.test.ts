/**
 * Patch batches: aligned LR/HR under every augmentation, seeded, and folder loading errors;
 * symlinked images are followed and a dangling symlink is named.
 */
import { Effect, Exit, Stream } from "effect";
import { assert, assertEquals, assertNotEquals, assertStringIncludes } from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Rng from "../lib/Rng.ts";
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
