/**
 * The streaming loader: for the same images it cuts the batches the in-memory loader cuts (the
 * embedded set against the hashes recorded before streaming existed; small folders against
 * `Data.batch` and `Benchmark.load`), from any start, with a cache far smaller than the images;
 * the folder layouts (DIV2K with and without its LR folder, `<set>/HR` + `LR_bicubic`), and
 * unusable files named.
 */
import { Effect, Exit, Stream } from "effect";
import {
  assert,
  assertEquals,
  assertGreater,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import * as Benchmark from "../lib/Benchmark.ts";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Loader from "../lib/Loader.ts";
import { cases, oracle, sha256 } from "./fixtures/make_data_batches.ts";
import { collect, folder, noise } from "./_data.ts";
import "./_setup.ts";

const quiet = { onSkip: () => {} };

Deno.test("streamed from the files, the embedded set gives the recorded batches, from any start", async () => {
  const c = cases[0]; // the default recipe's training stream: ×4, batch 4, patch 32, seed 0
  const src = await Effect.runPromise(Loader.open(Data.embedded.train, c.scale, { prefetch: 3 }));
  assert(Data.isSource(src));
  const opts = { batch: c.batch, patch: c.patch, seed: c.seed };
  const want = (await oracle()).cases[0].hashes;
  const all = await collect(src.batches(opts, 0, 24));
  assertEquals(all.map((b) => b.index), want.slice(0, 24).map((h) => h.index));
  for (const [k, b] of all.entries()) {
    assertEquals(await sha256(b.lr), want[k].lr, `batch ${k} LR`);
    assertEquals(await sha256(b.hr), want[k].hr, `batch ${k} HR`);
  }
  // A resumed run's stream starts at its step: the same batches as the uninterrupted one.
  const tail = await collect(Data.stream(src, opts, 17, 24));
  assertEquals(tail.map((b) => b.index), [17, 18, 19, 20, 21, 22, 23]);
  for (const b of tail) assertEquals(b.hr, all[b.index].hr);
});

Deno.test("a cache far smaller than the images evicts and decodes again, with the same batches", async () => {
  const dir = await folder(await Deno.makeTempDir(), {
    "a.png": noise(40, 30, 1),
    "b.png": noise(33, 41, 2),
    "c.png": noise(50, 26, 3),
    "d.png": noise(28, 28, 4),
    "e.png": noise(6, 6, 5), // too small for the patch: never drawn
  });
  const mem = await Effect.runPromise(Data.load(dir, 2));
  const stats: Loader.Stats[] = [];
  // ~2 images' worth (one decoded pair is at most 50·26·3·(1 + 1/4) ≈ 4.9 kB).
  const cacheMiB = 10_000 / 2 ** 20;
  const src = await Effect.runPromise(
    Loader.open(dir, 2, { cacheMiB, prefetch: 2, onStats: (s) => stats.push(s) }),
  );
  const opts = { batch: 3, patch: 6, seed: 11 };
  const got = await collect(src.batches(opts, 0, 30));
  for (const b of got) {
    const m = Data.batch(mem, opts, b.index);
    assertEquals(b.lr, m.lr, `batch ${b.index} LR`);
    assertEquals(b.hr, m.hr, `batch ${b.index} HR`);
  }
  const s = stats[0];
  assertEquals(s.batches, 30);
  assertGreater(s.decoded, 5, "images were dropped and decoded again");
  // Beyond the cache only by the images of batches being assembled (2 batches × 3 patches).
  assert(s.peakBytes <= 10_000 + 2 * 3 * 50 * 26 * 3 * 5, `peak ${s.peakBytes}`);
});

Deno.test("DIV2K and benchmark layouts: their own LR files are used, missing or mismatched ones named", async () => {
  const root = await Deno.makeTempDir();
  const hr = {
    "0001.png": noise(24, 20, 1),
    "0002.png": noise(30, 22, 2),
    "0003.png": noise(26, 26, 3),
    "0004.png": noise(20, 20, 4),
  };
  // Their own LR files, deliberately not the bicubic of the HR images.
  const lr = {
    "0001x2.png": noise(12, 10, 11),
    "0002x2.png": noise(15, 11, 12),
    "0003x2.png": noise(12, 12, 13), // 26/2 = 13: mismatched
  };
  const opts = { batch: 4, patch: 5, seed: 3 };
  const layouts = [
    { hrDir: `${root}/DIV2K_train_HR`, lrDir: `${root}/DIV2K_train_LR_bicubic/X2`, given: "" },
    { hrDir: `${root}/Set5/HR`, lrDir: `${root}/Set5/LR_bicubic/X2`, given: `${root}/Set5` },
  ];
  for (const { hrDir, lrDir, given } of layouts) {
    await folder(hrDir, hr);
    await folder(lrDir, lr);
    const skipped: Array<[string, string]> = [];
    const src = await Effect.runPromise(
      Loader.open(given || hrDir, 2, { onSkip: (f, why) => skipped.push([f, why]) }),
    );
    assertEquals(src.files, [`${hrDir}/0001.png`, `${hrDir}/0002.png`]);
    assertEquals(skipped.map(([f]) => f), [`${hrDir}/0003.png`, `${hrDir}/0004.png`]);
    assertStringIncludes(skipped[0][1], `its LR file ${lrDir}/0003x2.png is 12x12; expected 13x13`);
    assertStringIncludes(skipped[1][1], `no LR image 0004x2.png or 0004.png in ${lrDir}`);
    // The evaluation loader (another module) pairs the same files: the oracle.
    const set = await Effect.runPromise(Benchmark.load(given || hrDir, 2));
    assertEquals(set.pairs.length, 2);
    assertEquals(set.pairs[0].lr, lr["0001x2.png"]);
    for (const b of await collect(src.batches(opts, 0, 6))) {
      assertEquals(b.lr, Data.batch(set, opts, b.index).lr);
      assertEquals(b.hr, Data.batch(set, opts, b.index).hr);
    }
  }
  // Without an LR folder for the scale (DIV2K_valid_HR has none; DIV2K_train_HR has X2 only,
  // asked ×4): the bicubic, as the in-memory loader makes it from the flat folder.
  const valid = await folder(`${root}/DIV2K_valid_HR`, hr);
  for (const [dir, scale] of [[valid, 2], [`${root}/DIV2K_train_HR`, 4]] as const) {
    const src = await Effect.runPromise(Loader.open(dir, scale));
    assertEquals(src.files.length, 4);
    const mem = await Effect.runPromise(Data.load(dir, scale));
    const o = { ...opts, patch: 4 };
    for (const b of await collect(src.batches(o, 0, 4))) {
      assertEquals(b.hr, Data.batch(mem, o, b.index).hr, `${dir} ×${scale}`);
      assertEquals(b.lr, Data.batch(mem, o, b.index).lr, `${dir} ×${scale}`);
    }
  }
});

Deno.test("unusable files: an unreadable header is skipped and named at open, a corrupt body fails the stream naming it", async () => {
  const dir = await folder(await Deno.makeTempDir(), { "a.png": noise(20, 16, 1) });
  // PNG magic bytes, then no IHDR chunk.
  await Deno.writeFile(
    `${dir}/b.png`,
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 4, 1, 2, 3]),
  );
  await Deno.writeFile(`${dir}/c.jpg`, new Uint8Array([0xff, 0xd8, 0xff, 0xd9]));
  await Image.write(`${dir}/d.png`, noise(3, 3, 2)); // smaller than the scale ×4
  const skipped: Array<[string, string]> = [];
  const src = await Effect.runPromise(
    Loader.open(dir, 4, { onSkip: (f, why) => skipped.push([f, why]) }),
  );
  assertEquals(src.files, [`${dir}/a.png`]);
  assertEquals(skipped.map(([f]) => f.split("/").pop()), ["b.png", "c.jpg", "d.png"]);
  assertStringIncludes(skipped[0][1], "corrupt PNG");
  assertStringIncludes(skipped[1][1], "no start-of-frame");
  assertStringIncludes(skipped[2][1], "smaller than the scale ×4");

  // A PNG whose header reads but whose pixel data is damaged: found when it is decoded.
  const bytes = Image.encodePng(noise(20, 16, 3));
  bytes[bytes.length - 30] ^= 0xff; // inside IDAT: its CRC no longer matches
  await Deno.writeFile(`${dir}/e.png`, bytes);
  await Deno.remove(`${dir}/a.png`);
  const bad = await Effect.runPromise(Loader.open(dir, 2, quiet));
  assertEquals(bad.files, [`${dir}/d.png`, `${dir}/e.png`]); // d's LR is 1×1 at ×2: never drawn
  const exit = await Effect.runPromiseExit(
    Stream.runCollect(bad.batches({ batch: 1, patch: 4, seed: 0 }, 0, 3)),
  );
  assert(Exit.isFailure(exit));
  assertStringIncludes(String(exit.cause), `dataset ${dir}/e.png: corrupt PNG`);
  assertStringIncludes(String(exit.cause), "deno task prepare` names and skips such files");
  // No usable image at all: the open fails, saying how many were skipped.
  await Deno.remove(`${dir}/e.png`);
  const none = await Effect.runPromiseExit(Loader.open(dir, 4, quiet));
  assertStringIncludes(String(Exit.isFailure(none) && none.cause), "no usable image (3 skipped)");
});

Deno.test("loader options are validated, naming the field or the environment variable", async () => {
  const dir = await folder(await Deno.makeTempDir(), { "a.png": noise(8, 8, 1) });
  const exit = await Effect.runPromiseExit(Loader.open(dir, 2, { cacheMiB: -1 }));
  assertStringIncludes(String(Exit.isFailure(exit) && exit.cause), "cacheMiB");
  assertEquals(Loader.fromEnv({ QAT_DATA_CACHE_MIB: "256", QAT_DATA_WORKERS: "2" }), {
    cacheMiB: 256,
    workers: 2,
  });
  assertEquals(Loader.fromEnv({}), { cacheMiB: undefined, workers: undefined });
  assertThrows(
    () => Loader.fromEnv({ QAT_DATA_CACHE_MIB: "lots" }),
    Error,
    "QAT_DATA_CACHE_MIB=lots",
  );
  assertThrows(() => Loader.fromEnv({ QAT_DATA_WORKERS: "1.5" }), Error, "QAT_DATA_WORKERS=1.5");
});
