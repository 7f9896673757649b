// Resize against the NumPy MATLAB-imresize oracle (tests/fixtures/make_resize_fixture.py) and
// hand-computable cases.
import { assert, assertAlmostEquals, assertEquals, assertGreater, assertThrows } from "@std/assert";
import * as Image from "../lib/Image.ts";
import {
  bicubicUpscale,
  contributions,
  cubic,
  downscale,
  imresize,
  imresizeFloat,
} from "../lib/Resize.ts";
import { dataDir } from "./_data.ts";

interface Case {
  name: string;
  crop: { width: number; height: number };
  input: string;
  kind: "down" | "up";
  factor: number;
  width: number;
  height: number;
  output: string;
  floatStride: number;
  outputFloat: number[];
}
interface Fixture {
  cases: Case[];
  butterflyX4: {
    source: string;
    inputSha256: string;
    width: number;
    height: number;
    sha256: string;
    output: string;
  };
}

const fixture: Fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/resize.json", import.meta.url)),
);

const fromBase64 = (s: string): Uint8Array => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));

const sha256 = async (bytes: Uint8Array): Promise<string> =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");

const firstDiff = (a: Uint8Array, b: Uint8Array): string => {
  const i = a.findIndex((v, k) => v !== b[k]);
  return i < 0 ? "none" : `at ${i}: ${a[i]} vs ${b[i]}`;
};

for (const c of fixture.cases) {
  const input = Image.make(c.crop.width, c.crop.height, fromBase64(c.input));
  const scale = c.kind === "down" ? 1 / c.factor : c.factor;

  Deno.test(`imresize matches the MATLAB oracle exactly: ${c.name}`, () => {
    const out = c.kind === "down" ? downscale(input, c.factor) : bicubicUpscale(input, c.factor);
    assertEquals([out.width, out.height], [c.width, c.height]);
    const expected = fromBase64(c.output);
    assertEquals(out.data.length, expected.length);
    assert(
      out.data.every((v, i) => v === expected[i]),
      `first difference ${firstDiff(out.data, expected)}`,
    );
  });

  Deno.test(`imresizeFloat matches the MATLAB oracle on double input: ${c.name}`, () => {
    const out = imresizeFloat(Float32Array.from(input.data), input.height, input.width, 3, scale);
    assertEquals([out.w, out.h], [c.width, c.height]);
    c.outputFloat.forEach((v, k) => assertAlmostEquals(out.data[k * c.floatStride], v, 1e-4));
  });
}

Deno.test("imresize matches the oracle on the whole butterfly.png at x4 down", async () => {
  const ref = fixture.butterflyX4;
  const hr = await Image.read(`${dataDir()}/eval/${ref.source}`);
  assertEquals(await sha256(hr.data), ref.inputSha256, "the eval image changed");
  const lr = downscale(hr, 4);
  assertEquals([lr.width, lr.height], [ref.width, ref.height]);
  const expected = fromBase64(ref.output);
  assert(
    lr.data.every((v, i) => v === expected[i]),
    `first difference ${firstDiff(lr.data, expected)}`,
  );
  assertEquals(await sha256(lr.data), ref.sha256);
});

Deno.test("rounding after each pass differs from rounding once at the end (SPEC §8)", () => {
  const c = fixture.cases.find((k) => k.name === "kodim07_36x24_downx2")!;
  const input = Image.make(c.crop.width, c.crop.height, fromBase64(c.input));
  const perPass = imresize(input, 0.5).data;
  const float = imresizeFloat(Float32Array.from(input.data), input.height, input.width, 3, 0.5);
  const endOnly = float.data.map((v) => Math.min(255, Math.max(0, Math.round(v))));
  assertGreater(perPass.filter((v, i) => v !== endOnly[i]).length, 0);
});

const constant = (w: number, h: number, v: number): Image.Image =>
  Image.make(w, h, new Uint8Array(w * h * 3).fill(v));

Deno.test("a constant image stays constant at every scale", () => {
  for (const scale of [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.7, 1.5]) {
    const out = imresize(constant(24, 12, 137), scale);
    assertEquals([out.width, out.height], [Math.ceil(24 * scale), Math.ceil(12 * scale)]);
    assert(out.data.every((v) => v === 137), `scale ${scale}`);
  }
});

Deno.test("output size is ceil(scale·n)", () => {
  const out = imresize(constant(13, 7, 9), 1 / 2);
  assertEquals([out.width, out.height], [7, 4]);
  const third = imresize(constant(13, 7, 9), 1 / 3);
  assertEquals([third.width, third.height], [5, 3]);
});

/** A horizontal ramp: pixel column i (1-based) has value 4·i in every channel. */
const ramp = (w: number, h: number): Image.Image => {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) data.fill(4 * (x + 1), (y * w + x) * 3, (y * w + x + 1) * 3);
  }
  return Image.make(w, h, data);
};

Deno.test("a linear ramp is sampled at u = x/s + 0.5(1 − 1/s) away from the borders", () => {
  // x2 down: u = 2x − 0.5, so value 4u = 8x − 2; the stretched kernel spans ±4 input pixels.
  const down = imresize(ramp(48, 4), 1 / 2);
  for (let x = 3; x <= 22; x++) assertEquals(down.data[(x - 1) * 3], 8 * x - 2, `x=${x}`);
  // x2 up: u = x/2 + 0.25, so value 2x + 1; the kernel spans ±2 input pixels.
  const up = imresize(ramp(24, 4), 2);
  for (let x = 4; x <= 44; x++) assertEquals(up.data[(x - 1) * 3], 2 * x + 1, `x=${x}`);
  // Rows are constant, so every row of the output is the same.
  const row = down.data.subarray(0, down.width * 3);
  for (let y = 1; y < down.height; y++) {
    assertEquals(down.data.subarray(y * down.width * 3, (y + 1) * down.width * 3), row);
  }
});

Deno.test("the border mirrors symmetrically (hand-computed 1x2 → 2x4)", () => {
  const out = imresize(Image.make(1, 2, Uint8Array.of(10, 10, 10, 50, 50, 50)), 2);
  assertEquals([out.width, out.height], [2, 4]);
  // Rows: the column [10, 50] mirrors to … 50 50 10 | 10 50 | 50 10 …; output row 1 samples
  // u = 0.75 with cubic weights −0.0234375, 0.2265625, 0.8671875, −0.0703125 on 50, 10, 10,
  // 50 = 6.25 → 6; row 2 (u = 1.25) = 18.125 → 18; rows 3, 4 by symmetry 41.875, 53.75.
  assertEquals([0, 1, 2, 3].map((y) => out.data[y * 6]), [6, 18, 42, 54]);
  // Columns: a single mirrored column stays constant.
  for (let y = 0; y < 4; y++) assertEquals(out.data[y * 6], out.data[y * 6 + 3]);
});

Deno.test("cubic kernel values and contributions normalisation", () => {
  assertEquals(cubic(0), 1);
  assertEquals(cubic(1), 0);
  assertEquals(cubic(2), 0);
  assertEquals(cubic(0.5), 0.5625);
  assertEquals(cubic(-1.5), -0.0625);
  for (const [n, scale] of [[12, 1 / 4], [12, 1 / 3], [7, 2], [5, 0.5]] as const) {
    const con = contributions(n, Math.ceil(n * scale), scale);
    for (let i = 0; i < con.outLength; i++) {
      let sum = 0;
      for (let t = 0; t < con.taps; t++) {
        sum += con.weights[i * con.taps + t];
        const j = con.indices[i * con.taps + t];
        assert(j >= 0 && j < n, `index ${j} out of range`);
      }
      assertAlmostEquals(sum, 1, 1e-12);
    }
  }
});

Deno.test("bad scales and sizes are programmer errors", () => {
  assertThrows(() => imresize(constant(4, 4, 0), 0), RangeError);
  assertThrows(() => imresize(constant(4, 4, 0), Number.NaN), RangeError);
  assertThrows(() => imresizeFloat(new Float32Array(5), 2, 2, 1, 2), RangeError);
});
