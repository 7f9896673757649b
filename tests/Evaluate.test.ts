/**
 * Evaluation never reports garbage as a score: an image whose upscaling fails is named and the
 * rest is scored; a constant output, or one far below bicubic, is flagged and the set has no
 * score. The oracle for the scores is Iqa itself on the same images (tests/Iqa.test.ts checks
 * Iqa against MATLAB-convention references).
 */
import { Effect } from "effect";
import { assert, assertAlmostEquals, assertEquals, assertStringIncludes } from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Evaluate from "../lib/Evaluate.ts";
import * as Image from "../lib/Image.ts";
import * as Iqa from "../lib/Iqa.ts";
import * as Resize from "../lib/Resize.ts";
import "./_setup.ts";

/** Three 48×48 crops of real photographs, ×4. */
async function set(): Promise<Data.Dataset> {
  const names = ["butterfly.png", "kodim07.png", "astronaut.png"];
  const pairs = await Promise.all(names.map(async (n) => {
    const hr = Image.crop(await Image.read(`${Data.embedded.eval}${n}`), 100, 100, 48, 48);
    return { file: n, hr, lr: Resize.downscale(hr, 4) };
  }));
  return { name: "three", scale: 4, pairs };
}

const bicubicOf = (lr: Image.Image) => Resize.bicubicUpscale(lr, 4);

Deno.test("an image whose upscaling fails is named; the others are scored", async () => {
  const ds = await set();
  const failures: string[] = [];
  const s = await Effect.runPromise(Evaluate.scoreWith(
    ds,
    (lr) =>
      lr === ds.pairs[1].lr
        ? Effect.sync(() => {
          throw new Error("Dispatch size exceeds WebGPU limits in Y or Z dimension.");
        })
        : Effect.sync(() => bicubicOf(lr)),
    { onFailure: (file) => failures.push(file) },
  ));
  assertEquals(s.failed.map((p) => p.file), ["kodim07.png"]);
  assertStringIncludes(s.failed[0].reason, "Dispatch size exceeds");
  assertEquals(failures, ["kodim07.png"]);
  assertEquals(s.images.map((i) => i.file), ["butterfly.png", "astronaut.png"]);
  const expected = [0, 2].map((i) =>
    Iqa.psnr(bicubicOf(ds.pairs[i].lr), ds.pairs[i].hr, { shave: 4 })
  );
  assertAlmostEquals(s.psnr, (expected[0] + expected[1]) / 2, 1e-12);
  assertEquals(s.flagged, []);
});

Deno.test("a constant or far-below-bicubic output is flagged and the set gets no score", async () => {
  const ds = await set();
  const black = (lr: Image.Image) =>
    Image.make(lr.width * 4, lr.height * 4, new Uint8Array(lr.width * lr.height * 48));
  const s = await Effect.runPromise(Evaluate.scoreWith(ds, (lr) => Effect.sync(() => black(lr))));
  assertEquals(s.flagged.length, 3);
  assertStringIncludes(s.flagged[0].reason, "constant output (every value 0)");
  assert(Number.isNaN(s.psnr) && Number.isNaN(s.ssim));
  assertEquals(JSON.parse(JSON.stringify({ psnr: s.psnr })).psnr, null);
  // The colour-inverted bicubic output is not constant, but far below bicubic itself.
  const inverted = (lr: Image.Image) => {
    const b = bicubicOf(lr);
    return Image.make(b.width, b.height, b.data.map((v) => 255 - v));
  };
  const t = await Effect.runPromise(
    Evaluate.scoreWith(ds, (lr) => Effect.sync(() => inverted(lr))),
  );
  assertEquals(t.flagged.length, 3);
  assertStringIncludes(t.flagged[0].reason, "far below bicubic");
  // Bicubic itself is never flagged, and a plausible output is scored.
  const ok = await Effect.runPromise(Evaluate.bicubic(ds));
  assertEquals(ok.flagged, []);
  assert(Number.isFinite(ok.psnr));
});
