// Image decoding (every PNG flavour, JPEG, corrupt files), PNG writing, tensors and crops.
import * as tf from "@tensorflow/tfjs";
import { encode as encodePngRaw } from "fast-png";
import jpeg from "jpeg-js";
import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertLess,
  assertRejects,
  assertThrows,
} from "@std/assert";
import * as Image from "../lib/Image.ts";
import { dataDir } from "./_data.ts";

const sha256 = async (bytes: Uint8Array): Promise<string> =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");

// SHA-256 of the RGB pixels as Pillow decodes them (np.asarray(Image.open(f).convert("RGB"))).
const PILLOW_PIXELS: Record<string, string> = {
  "butterfly.png": "24af154f9438437b043a32e0c183d6da188ef5122b5ed67173a9f9dfa29c0a53",
  "kodim02.png": "985f199576e2a62600ea3fdcae28222de756e23cc78640143dd5319660b3bcba",
  "kodim07.png": "1109859de5b6246aeddf38cf0245a50ea7a4567f0661276e400875006a459bed",
  "astronaut.png": "b568c3f45d87e8e7bb58ecdf5c667de8415130ebc936b70f76ceed3a8355e345",
  "coffee.png": "a7dd8042ec5c0d9d435a5d5e3959577ec0c1c4a0e2173161cccc14f049f6e755",
  "chelsea.png": "eb2f2ab912af0a174e62ed193bb5709ac9af9b644a69110c1d03c77fd64ac685",
  "wesaturate_keong_macan.png": "222cb68518cea9483471bffa9ac99baf02b28427bb5254db7407637d1911c689",
  "wesaturate_bliznaca.png": "710a2ebf3a075f37ae2873898339418b0248a77557c67f44321800e05e96ad8c",
};

Deno.test("every eval PNG decodes to the manifest's size and Pillow's pixels", async () => {
  const dir = dataDir();
  const manifest = JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`));
  const entries: { name: string; width: number; height: number; file: string }[] =
    manifest.sets.eval;
  assertEquals(entries.length, 8);
  for (const e of entries) {
    const img = await Image.read(`${dir}/${e.file}`);
    assertEquals([img.width, img.height], [e.width, e.height], e.name);
    assertEquals(img.data.length, e.width * e.height * 3);
    assertEquals(await sha256(img.data), PILLOW_PIXELS[e.name], e.name);
  }
});

const png = (
  width: number,
  height: number,
  data: Uint8Array | Uint16Array,
  channels: number,
  depth: 1 | 2 | 4 | 8 | 16 = 8,
  palette?: number[][],
) => encodePngRaw({ width, height, data, channels, depth, palette });

Deno.test("RGBA PNG: alpha is dropped", () => {
  const bytes = png(2, 1, Uint8Array.of(10, 20, 30, 0, 40, 50, 60, 255), 4);
  const img = Image.decode(bytes, "rgba.png");
  assertEquals([img.width, img.height], [2, 1]);
  assertEquals(Array.from(img.data), [10, 20, 30, 40, 50, 60]);
});

Deno.test("grey and grey+alpha PNGs are replicated to RGB", () => {
  const grey = Image.decode(png(3, 1, Uint8Array.of(0, 128, 255), 1), "grey.png");
  assertEquals(Array.from(grey.data), [0, 0, 0, 128, 128, 128, 255, 255, 255]);
  const ga = Image.decode(png(2, 1, Uint8Array.of(7, 0, 200, 255), 2), "ga.png");
  assertEquals(Array.from(ga.data), [7, 7, 7, 200, 200, 200]);
});

Deno.test("16-bit PNGs are scaled to 8 bits with rounding (v/257)", () => {
  // 100·257 + 128 = 25828 → 100.498 → 100; 25829 → 100.502 → 101.
  const rgb16 = Uint16Array.of(0, 65535, 25828, 25829, 257, 65534);
  const img = Image.decode(png(2, 1, rgb16, 3, 16), "rgb16.png");
  assertEquals(Array.from(img.data), [0, 255, 100, 101, 1, 255]);
  const grey16 = Image.decode(png(2, 1, Uint16Array.of(32896, 128), 1, 16), "g16.png");
  assertEquals(Array.from(grey16.data), [128, 128, 128, 0, 0, 0]);
  const rgba16 = Image.decode(png(1, 1, Uint16Array.of(65535, 0, 514, 0), 4, 16), "rgba16.png");
  assertEquals(Array.from(rgba16.data), [255, 0, 2]);
});

Deno.test("low-bit grey and palette PNGs", () => {
  // 2-bit grey, 3 pixels packed into one byte: 0b00_01_11_00 → 0, 85, 255.
  const g2 = Image.decode(png(3, 1, Uint8Array.of(0b00011100), 1, 2), "g2.png");
  assertEquals(Array.from(g2.data), [0, 0, 0, 85, 85, 85, 255, 255, 255]);
  // 1-bit grey across two rows (each row padded to a byte): 10 / 01.
  const g1 = Image.decode(png(2, 2, Uint8Array.of(0b10000000, 0b01000000), 1, 1), "g1.png");
  assertEquals(Array.from(g1.data), [255, 255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 255]);
  const palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 8, 7]];
  const p8 = Image.decode(png(4, 1, Uint8Array.of(3, 2, 1, 0), 1, 8, palette), "p8.png");
  assertEquals(Array.from(p8.data), [9, 8, 7, 0, 0, 255, 0, 255, 0, 255, 0, 0]);
  // 4-bit palette: indices 1, 3 in one byte.
  const p4 = Image.decode(png(2, 1, Uint8Array.of(0x13), 1, 4, palette), "p4.png");
  assertEquals(Array.from(p4.data), [0, 255, 0, 9, 8, 7]);
});

Deno.test("an Adam7-interlaced PNG decodes like the plain one", () => {
  const data = Uint8Array.from({ length: 9 * 7 * 3 }, (_, i) => (i * 37) % 256);
  const plain = encodePngRaw({ width: 9, height: 7, data, channels: 3, depth: 8 });
  const inter = encodePngRaw(
    { width: 9, height: 7, data, channels: 3, depth: 8 },
    { interlace: "Adam7" },
  );
  assertEquals(Image.decode(inter, "adam7.png").data, Image.decode(plain, "plain.png").data);
  assertEquals(Image.decode(plain, "plain.png").data, data);
});

Deno.test("JPEG round trip through jpeg-js", () => {
  const w = 32;
  const h = 16;
  const rgba = new Uint8Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      rgba.set([x * 8, y * 16, 128, 255], (y * w + x) * 4);
    }
  }
  const bytes = new Uint8Array(jpeg.encode({ width: w, height: h, data: rgba }, 95).data);
  const img = Image.decode(bytes, "smooth.jpg");
  assertEquals([img.width, img.height], [w, h]);
  let worst = 0;
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) {
      worst = Math.max(worst, Math.abs(img.data[i * 3 + c] - rgba[i * 4 + c]));
    }
  }
  assertLess(worst, 10);
});

Deno.test("the format comes from magic bytes, not the name", async () => {
  const bytes = png(1, 1, Uint8Array.of(1, 2, 3), 3);
  assertEquals(Array.from(Image.decode(bytes, "really-a-png.jpg").data), [1, 2, 3]);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/noext`, bytes);
    assertEquals(Array.from((await Image.read(`${dir}/noext`)).data), [1, 2, 3]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Deterministic pseudo-random bytes (an LCG), so the test never depends on Math.random. */
const noise = (n: number, seed: number): Uint8Array => {
  const out = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
};

const assertDecodeError = (bytes: Uint8Array, name: string): Image.ImageDecodeError => {
  const e = assertThrows(() => Image.decode(bytes, name));
  assertInstanceOf(e, Image.ImageDecodeError);
  assertEquals(e._tag, "ImageDecodeError");
  assertEquals(e.file, name);
  assert(e.message.includes(name), `message should name the file: ${e.message}`);
  return e;
};

Deno.test("corrupt and unknown files fail with ImageDecodeError naming the file", async () => {
  const good = await Deno.readFile(`${dataDir()}/eval/butterfly.png`);
  assertDecodeError(good.subarray(0, good.length >> 1), "half-butterfly.png");
  assertDecodeError(good.subarray(0, 40), "header-only.png");
  const flipped = good.slice();
  flipped[flipped.length >> 1] ^= 0xff;
  assertDecodeError(flipped, "bit-flipped.png");
  assertDecodeError(noise(4096, 7), "noise.bin");
  assertDecodeError(new Uint8Array(0), "empty.png");
  const gif = new TextEncoder().encode("GIF89a....");
  assert(assertDecodeError(gif, "anim.gif").reason.includes("unknown format"));
  assertDecodeError(Uint8Array.of(0xff, 0xd8, 0xff, ...noise(512, 3)), "noise.jpg");
  const rgba = noise(32 * 32 * 4, 11);
  const jpg = new Uint8Array(jpeg.encode({ width: 32, height: 32, data: rgba }, 90).data);
  assertEquals(Image.decode(jpg, "whole.jpg").width, 32);
  assertDecodeError(jpg.subarray(0, jpg.length >> 1), "truncated.jpg");
});

Deno.test("read: a missing file is an ImageDecodeError naming the path", async () => {
  const path = "/nonexistent/dir/missing-image.png";
  const e = await assertRejects(() => Image.read(path), Image.ImageDecodeError);
  assert(e.message.includes(path), e.message);
});

Deno.test("encodePng / write / read round trip, written atomically", async () => {
  const img = Image.make(5, 3, Uint8Array.from({ length: 45 }, (_, i) => i * 5));
  assertEquals(Image.decode(Image.encodePng(img), "mem.png"), img);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/out.png`;
    await Image.write(path, img);
    assertEquals(await Image.read(path), img);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["out.png"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("toTensor / fromTensor: [h, w, 3] float32 in [0, 255], clamped and rounded back", async () => {
  await tf.setBackend("cpu");
  const img = Image.make(2, 1, Uint8Array.of(0, 1, 2, 253, 254, 255));
  const t = Image.toTensor(img);
  assertEquals(t.shape, [1, 2, 3]);
  assertEquals(t.dtype, "float32");
  assertEquals(Array.from(await t.data()), [0, 1, 2, 253, 254, 255]);
  assertEquals(await Image.fromTensor(t), img);
  t.dispose();
  const odd = tf.tensor3d([-3, 0.5, 1.49, 127.5, 254.5, 300], [1, 2, 3]);
  assertEquals(Array.from((await Image.fromTensor(odd)).data), [0, 1, 1, 128, 255, 255]);
  odd.dispose();
  const grey = tf.zeros([2, 2, 1]) as tf.Tensor3D;
  await assertRejects(() => Image.fromTensor(grey), RangeError);
  grey.dispose();
});

Deno.test("crop and modcrop", () => {
  const img = Image.make(4, 3, Uint8Array.from({ length: 36 }, (_, i) => i));
  const c = Image.crop(img, 1, 1, 2, 2);
  assertEquals([c.width, c.height], [2, 2]);
  // Pixel (x, y) starts at byte (y·4 + x)·3.
  assertEquals(Array.from(c.data), [15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
  assertThrows(() => Image.crop(img, 3, 0, 2, 1), RangeError);
  assertThrows(() => Image.crop(img, 0, 0, 1.5, 1), RangeError);
  const m = Image.modcrop(img, 2);
  assertEquals([m.width, m.height], [4, 2]);
  assertEquals(m.data, img.data.subarray(0, 24));
  assertEquals(Image.modcrop(img, 1), img);
  assertThrows(() => Image.make(2, 2, new Uint8Array(11)), RangeError);
});
