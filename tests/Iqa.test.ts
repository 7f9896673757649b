// PSNR/SSIM against the NumPy + scikit-image oracle (tests/fixtures/make_iqa_fixture.py) and
// hand-computable cases.
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import * as Image from "../lib/Image.ts";
import { gaussian, luma, psnr, ssim } from "../lib/Iqa.ts";

interface Case {
  name: string;
  hr: string;
  sr: string;
  width: number;
  height: number;
  shave: number;
  psnrY: number;
  psnrRgb: number;
  ssimValid: number;
  ssimSame: number;
}

const fixtures = new URL("./fixtures/", import.meta.url);
const { cases }: { cases: Case[] } = JSON.parse(
  await Deno.readTextFile(new URL("iqa.json", fixtures)),
);
const load = (file: string) => Image.read(new URL(file, fixtures).pathname);

for (const c of cases) {
  Deno.test(`PSNR and SSIM match the oracle: ${c.name}, shave ${c.shave}`, async () => {
    const [hr, sr] = await Promise.all([load(c.hr), load(c.sr)]);
    assertEquals([hr.width, hr.height], [c.width, c.height]);
    assertAlmostEquals(psnr(sr, hr, { shave: c.shave }), c.psnrY, 1e-4);
    assertAlmostEquals(psnr(sr, hr, { shave: c.shave, channel: "y" }), c.psnrY, 1e-4);
    assertAlmostEquals(psnr(sr, hr, { shave: c.shave, channel: "rgb" }), c.psnrRgb, 1e-4);
    assertAlmostEquals(ssim(sr, hr, { shave: c.shave, variant: "valid" }), c.ssimValid, 1e-5);
    assertAlmostEquals(ssim(sr, hr, { shave: c.shave, variant: "same" }), c.ssimSame, 1e-5);
    assertAlmostEquals(ssim(sr, hr, { shave: c.shave }), c.ssimSame, 1e-5);
  });
}

const grey = (w: number, h: number, v: number): Image.Image =>
  Image.make(w, h, new Uint8Array(w * h * 3).fill(v));

Deno.test("identical images: PSNR is Infinity and SSIM is 1", async () => {
  const hr = await load(cases[0].hr);
  assertEquals(psnr(hr, hr, { shave: 4 }), Infinity);
  assertEquals(psnr(hr, hr, { shave: 0, channel: "rgb" }), Infinity);
  assertAlmostEquals(ssim(hr, hr, { shave: 4, variant: "valid" }), 1, 1e-12);
  assertAlmostEquals(ssim(hr, hr, { shave: 4, variant: "same" }), 1, 1e-12);
});

Deno.test("PSNR of two flat greys by hand", () => {
  const hr = grey(20, 16, 100);
  const sr = grey(20, 16, 110);
  // RGB: every sample is off by 10, so PSNR = 20·log10(255/10).
  assertAlmostEquals(psnr(sr, hr, { shave: 2, channel: "rgb" }), 20 * Math.log10(25.5), 1e-12);
  // Y: grey v has Y = v·(65.738 + 129.057 + 25.064)/256 + 16, so the Y error is 10·219.859/256.
  const dy = (10 * 219.859) / 256;
  assertAlmostEquals(psnr(sr, hr, { shave: 2 }), 20 * Math.log10(255 / dy), 1e-9);
  assertAlmostEquals(luma(hr)[0], (100 * 219.859) / 256 + 16, 1e-12);
});

Deno.test("SSIM of two flat greys by hand: (2ab + C1)/(a² + b² + C1)", () => {
  const a = luma(grey(1, 1, 100))[0];
  const b = luma(grey(1, 1, 110))[0];
  const c1 = (0.01 * 255) ** 2;
  const expected = (2 * a * b + c1) / (a * a + b * b + c1);
  for (const variant of ["valid", "same"] as const) {
    assertAlmostEquals(
      ssim(grey(16, 13, 110), grey(16, 13, 100), { shave: 1, variant }),
      expected,
      1e-9,
    );
  }
});

Deno.test("the Gaussian window is normalised and symmetric", () => {
  assertEquals(gaussian.length, 11);
  assertAlmostEquals(gaussian.reduce((s, v) => s + v, 0), 1, 1e-15);
  for (let i = 0; i < 5; i++) assertEquals(gaussian[i], gaussian[10 - i]);
  assert(gaussian[5] > gaussian[4]);
});

Deno.test("size mismatch throws an Error naming both sizes", () => {
  const e = assertThrows(() => psnr(grey(12, 10, 0), grey(10, 12, 0), { shave: 0 }), Error);
  assert(e.message.includes("12x10") && e.message.includes("10x12"), e.message);
  const s = assertThrows(() => ssim(grey(12, 12, 0), grey(24, 12, 0), { shave: 0 }), Error);
  assert(s.message.includes("12x12") && s.message.includes("24x12"), s.message);
});

Deno.test("a shave that leaves too little is a RangeError", () => {
  assertThrows(() => psnr(grey(8, 8, 0), grey(8, 8, 0), { shave: 4 }), RangeError);
  assertThrows(
    () => ssim(grey(20, 20, 0), grey(20, 20, 0), { shave: 5, variant: "valid" }),
    RangeError,
  );
  assertThrows(() => psnr(grey(8, 8, 0), grey(8, 8, 0), { shave: -1 }), RangeError);
});
