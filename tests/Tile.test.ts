/**
 * Tiled inference (lib/Tile.ts): the reach read from the layer tree equals a hand count, plans
 * cover every pixel exactly once within the limits, and the stitched output equals the
 * whole-image output bit for bit for every architecture (limits forced small), also quantized;
 * models that tiles cannot reproduce are refused; a DIV2K-size image runs on the adapter.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect, Exit } from "effect";
import {
  assert,
  assertEquals,
  assertGreater,
  assertInstanceOf,
  assertStringIncludes,
} from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Iqa from "../lib/Iqa.ts";
import * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Resize from "../lib/Resize.ts";
import * as Tile from "../lib/Tile.ts";
import * as Tree from "../lib/Tree.ts";
import { edsr, placement as edsrPlacement } from "../models/edsr.ts";
import { rdn } from "../models/rdn.ts";
import { srresnet } from "../models/srresnet.ts";
import { swinir } from "../models/swinir.ts";
import { backend } from "./_setup.ts";

const tinyEdsr = () => edsr({ upscale: 2, numFeat: 8, numBlock: 2 });
const tinySwinir = () =>
  swinir({ upscale: 2, embedDim: 12, depths: [1, 1], numHeads: 2, windowSize: 4 });

Deno.test("reach and alignment from the layer tree equal a hand count", () => {
  // EDSR: head 1 + 2 blocks × 2 convs + body-last 1 + one ×2 upsampler conv + tail 1 = 8.
  assertEquals(Tile.structure(tinyEdsr()), { reach: 8, align: 1 });
  // SwinIR: conv_first 1 + 2 blocks × window 4 + 2 RSTB convs + conv_after_body 1 +
  // upsampler conv 1 = 13, tiles on the 4-pixel window grid.
  assertEquals(Tile.structure(tinySwinir()), { reach: 13, align: 4 });
  // SRResNet: 9×9 head 4 + 2 blocks × 2 + body conv 1 + upsampler 1 + 9×9 tail 4 = 14.
  assertEquals(Tile.structure(srresnet({ upscale: 2, numFeat: 8, numBlock: 2 })).reach, 14);
});

Deno.test("a range taken from the input, or an unknown pixel-mixing layer, makes tiles inexact", () => {
  // deno-lint-ignore no-explicit-any
  const q = (range: Range.Range<any>) =>
    Quant.quantize(
      tinyEdsr(),
      edsrPlacement({
        weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
        input: Quantizer.asymmetric({ bits: 2, range }),
      }),
    );
  assertEquals(Tile.structure(q(Range.learnable(Range.percentile(0.99)))).inexact, undefined);
  assertStringIncludes(
    Tile.structure(q(Range.max)).inexact ?? "",
    '"body.blocks.0.conv1" quantizes its input with a range taken from the input',
  );
  const blur: Nn.Layer<3, 3> = {
    kind: "myBlur",
    inChannels: 3,
    outChannels: 3,
    children: [],
    meta: {},
    init: () => ({}),
    apply: (_p, x) => x,
    rebuild: () => blur,
  };
  assertStringIncludes(Tile.structure(blur).inexact ?? "", "declares no meta.reach");
  assertEquals(Tile.structure({ ...blur, meta: { reach: 2 } }), { reach: 2, align: 1 });
});

const fp = (o: Partial<Tile.Footprint> = {}): Tile.Footprint => ({
  reach: 5,
  align: 1,
  tensorPerPixel: 100,
  peakPerPixel: 1000,
  peakFixed: 0,
  scale: 2,
  ...o,
});

Deno.test("plans: the whole image when it fits; else aligned tiles that fit and keep every pixel once", () => {
  const whole = Tile.plan(30, 40, fp(), { tensorBytes: 1e9, memoryBytes: 1e9 });
  assert(!(whole instanceof Tile.TooLarge));
  assertEquals(whole.tiles.length, 1);
  for (const [h, w, align] of [[101, 67, 1], [96, 130, 8], [33, 200, 4]]) {
    const f = fp({ align, reach: 6 });
    const limits = { tensorBytes: 100 * 40 * 40, memoryBytes: 1e12 };
    const p = Tile.plan(h, w, f, limits);
    assert(!(p instanceof Tile.TooLarge));
    assert(p.tiles.length > 1 && p.exact, `${h}×${w}`);
    assertGreater(p.halo + 1, f.reach);
    const kept = new Uint8Array(h * w);
    for (const t of p.tiles) {
      assert(t.w * t.h * f.tensorPerPixel <= limits.tensorBytes, "tile fits");
      assertEquals(t.x % align, 0);
      assertEquals(t.y % align, 0);
      // A tile that does not end at the image edge spans a whole number of windows.
      if (t.x + t.w < w) assertEquals(t.w % align, 0);
      for (let y = t.y + t.keepY; y < t.y + t.keepY + t.keepH; y++) {
        for (let x = t.x + t.keepX; x < t.x + t.keepX + t.keepW; x++) kept[y * w + x]++;
      }
      // The kept part has the full reach of context, except at the image border.
      if (t.keepX > 0) assertGreater(t.keepX + 1, f.reach);
      if (t.x + t.keepX + t.keepW < w) assertGreater(t.w - t.keepX - t.keepW + 1, f.reach);
    }
    assert(kept.every((k) => k === 1), "every pixel kept exactly once");
  }
  const tooBig = Tile.plan(100, 100, fp({ tensorPerPixel: 1e6 }), {
    tensorBytes: 1e5,
    memoryBytes: 1e12,
  });
  assertInstanceOf(tooBig, Tile.TooLarge);
});

Deno.test("a reach larger than the limits allow gives overlapping tiles marked inexact", () => {
  const p = Tile.plan(200, 200, fp({ reach: 60 }), {
    tensorBytes: 100 * 80 * 80,
    memoryBytes: 1e12,
  });
  assert(!(p instanceof Tile.TooLarge));
  assertEquals(p.exact, false);
  assertStringIncludes(p.note ?? "", "reaches 60 pixels");
});

/** A real photograph crop, 90×66 (not a multiple of any tile size). */
async function photo(): Promise<Image.Image> {
  return Image.crop(await Image.read(`${Data.embedded.eval}chelsea.png`), 100, 60, 90, 66);
}

const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e);

async function tiledEqualsWhole(model: Nn.AnyLayer, params: Tree.Params, what: string) {
  const lr = await photo();
  const f = await Tile.footprint(model, params);
  const whole = await run(
    Tile.superResolve(model, params, lr, { limits: { tensorBytes: 1e15, memoryBytes: 1e15 } }),
  );
  let tiles = 0;
  // Room for a tile of 16 pixels a side plus the overlap: several tiles on this image.
  const { reach, align } = Tile.structure(model);
  const side = 2 * Math.ceil(reach / align) * align + 16;
  const tiled = await run(Tile.superResolve(model, params, lr, {
    limits: { tensorBytes: f.tensorPerPixel * side * side, memoryBytes: 1e15 },
    onPlan: (p) => {
      tiles = p.tiles.length;
      assert(p.exact, `${what}: ${p.note}`);
    },
  }));
  assertGreater(tiles, 1, `${what}: split`);
  assertEquals([tiled.width, tiled.height], [whole.width, whole.height]);
  let diff = 0;
  for (let i = 0; i < whole.data.length; i++) {
    diff = Math.max(diff, Math.abs(whole.data[i] - tiled.data[i]));
  }
  assertEquals(diff, 0, `${what}: ${tiles} tiles, max difference ${diff}`);
}

Deno.test("tiled output equals the whole-image output, bit for bit: EDSR, RDN, SRResNet, SwinIR", async () => {
  const models: Array<[string, Nn.AnyLayer]> = [
    ["edsr", tinyEdsr()],
    ["rdn", rdn({ upscale: 2, numFeat: 8, numBlock: 2, numConv: 2, growRate: 8 })],
    [
      "rdn nearest",
      rdn({ upscale: 2, numFeat: 8, numBlock: 1, numConv: 2, growRate: 4, upsampler: "nearest" }),
    ],
    ["srresnet", srresnet({ upscale: 2, numFeat: 8, numBlock: 2 })],
    ["swinir", tinySwinir()],
  ];
  for (const [name, m] of models) {
    const p = m.init(1);
    await tiledEqualsWhole(m, p, name);
    Tree.dispose(p);
  }
});

Deno.test("a W2A2 EDSR with learned ranges tiles exactly; one with per-input ranges is refused", async () => {
  // deno-lint-ignore no-explicit-any
  const quantized = (range: Range.Range<any>) =>
    Quant.quantize(
      tinyEdsr(),
      edsrPlacement({
        weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
        input: Quantizer.asymmetric({ bits: 2, range }),
      }),
    );
  const exact = quantized(Range.learnable(Range.percentile(0.99)));
  const p = exact.init(3);
  await tiledEqualsWhole(exact, p, "W2A2 learnable");
  Tree.dispose(p);
  const dynamic = quantized(Range.max);
  const q = dynamic.init(3);
  const f = await Tile.footprint(dynamic, q);
  const out = await Effect.runPromiseExit(
    Tile.superResolve(dynamic, q, await photo(), {
      limits: { tensorBytes: f.tensorPerPixel * 30 * 30, memoryBytes: 1e15 },
    }),
  );
  assert(Exit.isFailure(out));
  assertStringIncludes(String(out.cause), "would not give the whole-image result");
  Tree.dispose(q);
});

/** A 2040×1356 mosaic of real photographs (DIV2K's size), from the embedded images. */
async function div2kSized(): Promise<Image.Image> {
  const files = ["kodim02.png", "kodim07.png", "coffee.png", "astronaut.png", "butterfly.png"];
  const parts = await Promise.all(files.map((f) => Image.read(`${Data.embedded.eval}${f}`)));
  const [w, h] = [2040, 1356];
  const data = new Uint8Array(w * h * 3);
  let k = 0;
  for (let y0 = 0; y0 < h; y0 += 504) {
    for (let x0 = 0; x0 < w; x0 += 504, k++) {
      const src = parts[k % parts.length];
      for (let y = y0; y < Math.min(h, y0 + 504); y++) {
        for (let x = x0; x < Math.min(w, x0 + 504); x++) {
          const sx = (x - x0) % src.width, sy = (y - y0) % src.height;
          data.set(
            src.data.subarray((sy * src.width + sx) * 3, (sy * src.width + sx) * 3 + 3),
            (y * w + x) * 3,
          );
        }
      }
    }
  }
  return Image.make(w, h, data);
}

Deno.test({
  name:
    "a DIV2K-size image (2040×1356) upscales on the adapter: tiled, plausible, equal to a crop run whole",
  ignore: backend.name !== "webgpu",
  fn: async () => {
    const hr = await div2kSized();
    const lr = Resize.downscale(hr, 4);
    const { model, params } = await Pretrained.load("esrgan-slim", 4);
    let tiles = 0;
    const sr = await run(
      Tile.superResolve(model, params, lr, { onPlan: (p) => (tiles = p.tiles.length) }),
    );
    assertGreater(tiles, 1, "the whole image does not fit lavapipe's 128 MiB bindings");
    assertEquals([sr.width, sr.height], [2040, 1356]);
    const psnr = Iqa.psnr(sr, hr, { shave: 4 });
    const bicubic = Iqa.psnr(Resize.bicubicUpscale(lr, 4), hr, { shave: 4 });
    assertGreater(psnr, bicubic - 3, `SR ${psnr} dB vs bicubic ${bicubic} dB`);
    // An interior LR crop run as one image gives the same pixels away from its own border.
    const reach = Tile.structure(model).reach;
    const [cx, cy, cw, ch] = [200, 150, 48 + 2 * reach, 40 + 2 * reach];
    const part = await run(
      Tile.superResolve(model, params, Image.crop(lr, cx, cy, cw, ch), {
        limits: { tensorBytes: 1e15, memoryBytes: 1e15 },
      }),
    );
    let diff = 0;
    for (let y = reach * 4; y < (ch - reach) * 4; y++) {
      for (let x = reach * 4; x < (cw - reach) * 4; x++) {
        for (let c = 0; c < 3; c++) {
          const a = part.data[(y * part.width + x) * 3 + c];
          const b = sr.data[((cy * 4 + y) * sr.width + cx * 4 + x) * 3 + c];
          diff = Math.max(diff, Math.abs(a - b));
        }
      }
    }
    assertEquals(diff, 0);
    Tree.dispose(params);
    assertEquals(tf.memory().numTensors >= 0, true);
  },
});
