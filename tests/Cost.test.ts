/**
 * Cost: a hand-computed tiny model, the ODM paper's Table 6 numbers for EDSR-baseline ×4
 * (storage exact, BitOPs within 1%), RDN storage against its parameter count, and orderings.
 */
import { Effect } from "effect";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertRejects,
  assertThrows,
} from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as CostCli from "../lib/cli/cost.ts";
import { loadRecipe } from "../lib/cli/train.ts";
import * as Registry from "../models/registry.ts";
import * as Cost from "../lib/Cost.ts";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Edsr from "../models/edsr.ts";
import * as Rdn from "../models/rdn.ts";
import "./_setup.ts";

/** ODM's quantizers (SPEC §1, §5): γ for the weights, l and u for the inputs. */
const odm = (wbits: number, abits = wbits) => ({
  weight: Quantizer.symmetric({ bits: wbits, range: Range.clipCorrected(0.99) }),
  input: Quantizer.asymmetric({ bits: abits, range: Range.learnable(Range.percentile(0.99)) }),
});

const fullHd = { outputHeight: 1080, outputWidth: 1920, scale: 4 };
const within = (actual: number, expected: number, rel: number, what: string) =>
  assert(
    Math.abs(actual - expected) <= rel * expected,
    `${what}: ${actual} vs ${expected} (${(100 * (actual / expected - 1)).toFixed(3)}%)`,
  );

// conv 3→4 (3×3, bias) → ReLU → residual(conv 4→4 1×1) → pixel shuffle ×2 → conv 1→3 (3×3, no
// bias), at output 8×6 and ×2: LR 4×3 = 12 pixels, HR 48.
const tiny = (wrap?: (l: Nn.Layer<4, 4>) => Nn.Layer<4, 4>) => {
  const inner = Nn.named("mid", Nn.conv2d({ in: 4, out: 4, kernel: 1 }));
  return Nn.sequential(
    Nn.named("first", Nn.conv2d({ in: 3, out: 4 })),
    Nn.relu(4),
    Nn.named("skip", Nn.residual(Nn.sequential(wrap ? wrap(inner) : inner))),
    Nn.named("up", Nn.pixelShuffle({ in: 4, out: 1, factor: 2 })),
    Nn.named("last", Nn.conv2d({ in: 1, out: 3, bias: false })),
  );
};
const tinyOpts = { outputHeight: 6, outputWidth: 8, scale: 2 };

Deno.test("a tiny model's cost, computed by hand", () => {
  const c = Cost.of(tiny(), tinyOpts);
  // first: MACs 12·9·3·4 = 1296, FLOPs 2·1296 + 12·4 = 2640, params 108 + 4.
  // mid: MACs 12·4·4 = 192, FLOPs 384 + 48 = 432, params 16 + 4; skip add 12·4 = 48.
  // last at 8×6: MACs 48·9·1·3 = 1296, FLOPs 2592, params 27.
  const convs = c.perLayer.filter((l) => l.kind === "conv2d");
  assertEquals(convs.map((l) => [l.path, l.height, l.width, l.macs, l.flops, l.params]), [
    ["first", 3, 4, 1296, 2640, 112],
    ["skip.mid", 3, 4, 192, 432, 20],
    ["last", 6, 8, 1296, 2592, 27],
  ]);
  const adds = c.perLayer.filter((l) => l.kind === "add");
  assertEquals(adds.map((l) => [l.path, l.flops]), [["skip.+", 48]]);
  assertEquals(c.macs, 1296 + 192 + 1296);
  assertEquals(c.flops, 2640 + 432 + 48 + 2592);
  assertEquals(c.bitops, c.flops * 32 * 32);
  assertEquals(c.params, 112 + 20 + 27);
  assertAlmostEquals(c.storageK, 0.159, 1e-12);
  assertEquals(c.params, Nn.parameterCount(tiny()));
  assertEquals(c.unmodelled, []);
  // Forward order, with the spatial size tracked through the shuffle.
  assertEquals(c.perLayer.map((l) => l.path), [
    "first",
    "1",
    "skip.mid",
    "skip.+",
    "up",
    "last",
  ]);

  // The 1×1 conv quantized W4A2: its MACs at 4·2 bits, its bias adds at 32·32; storage
  // 16·4/32 + 4 bias + 3 quantizer parameters (γ, l, u).
  const q = Cost.of(tiny((l) => Quant.wrap(odm(4, 2))(l)), tinyOpts);
  const mid = q.perLayer.find((l) => l.path === "skip.mid")!;
  assertEquals([mid.wbits, mid.abits, mid.quantizerParams, mid.storage], [4, 2, 3, 9]);
  assertEquals(mid.bitops, 2 * 192 * 4 * 2 + 48 * 1024);
  assertEquals(q.bitops, (2640 + 48 + 2592) * 1024 + 2 * 192 * 8 + 48 * 1024);
  assertAlmostEquals(q.storageK, (112 + 9 + 27) / 1000, 1e-12);
  // Bias adds charged at the layer's bits, or not at all.
  assertEquals(
    Cost.of(tiny((l) => Quant.wrap(odm(4, 2))(l)), { ...tinyOpts, bias: "layer" })
      .perLayer.find((l) => l.path === "skip.mid")!.bitops,
    432 * 8,
  );
  assertEquals(Cost.of(tiny(), { ...tinyOpts, bias: "none", skips: false }).flops, 2 * c.macs);
});

Deno.test("a quantizer at 32 bits counts as full precision", () => {
  const fp = Cost.of(tiny(), tinyOpts);
  const q32 = Cost.of(tiny((l) => Quant.wrap(odm(32))(l)), tinyOpts);
  assertEquals([q32.bitops, q32.storageK], [fp.bitops, fp.storageK]);
});

Deno.test("Cost.of refuses a scale the model does not upscale by, and sizes not a multiple", () => {
  assertThrows(() => Cost.of(tiny(), { ...tinyOpts, scale: 1 }), RangeError, "does not upscale");
  assertThrows(
    () => Cost.of(tiny(), { outputHeight: 7, outputWidth: 8, scale: 2 }),
    RangeError,
    "not a multiple",
  );
});

Deno.test("EDSR-baseline ×4 at 1920×1080: the paper's Table 6 (FP32 and W2A2)", () => {
  const model = Edsr.edsr({ upscale: 4 });
  const fp = Cost.of(model, fullHd);
  assertAlmostEquals(fp.storageK, 1517.571, 1e-9);
  assertEquals(fp.params, Nn.parameterCount(model));
  within(fp.bitopsT, 527.1, 0.01, "EDSR FP32 BitOPs");
  within(fp.bitopsT, 527.1, 0.001, "EDSR FP32 BitOPs (0.1%)");

  const q = Quant.quantize(model, Edsr.placement(odm(2)));
  const c = Cost.of(q, fullHd);
  // 32 convs · 36864 weights at 2/32, the other 337,923 parameters, 32·3 quantizer parameters.
  assertAlmostEquals(c.storageK, (1179648 * 2 / 32 + 337923 + 96) / 1000, 1e-9);
  within(c.storageK, 411.7, 0.01, "EDSR W2A2 storage");
  within(c.bitopsT, 215.1, 0.01, "EDSR W2A2 BitOPs");
  within(c.bitopsT, 215.1, 0.001, "EDSR W2A2 BitOPs (0.1%)");
  // Mean-shift adds are negligible (3 per pixel at LR and HR).
  const ms = Cost.of(model, { ...fullHd, meanShift: true });
  assertAlmostEquals(ms.bitopsT - fp.bitopsT, (3 * 129600 + 3 * 2073600) * 1024 / 1e12, 1e-12);
});

Deno.test("RDN config B ×4: storage equals the parameter count; W2A2 near the paper", () => {
  const model = Rdn.rdn({ upscale: 4 });
  const fp = Cost.of(model, fullHd);
  const n = Nn.parameterCount(model);
  assertEquals(n, 22271107);
  assertEquals(fp.storageK, n / 1000);
  within(fp.bitopsT, 6032.9, 0.01, "RDN FP32 BitOPs");

  const q = Quant.quantize(model, Rdn.placement(odm(2)));
  const layers = Quant.layers(q);
  assertEquals(layers.length, 146);
  const qWeights = layers.reduce((a, { layer }) => {
    const k = layer.inner.meta.kernel ?? 3;
    return a + k * k * layer.inChannels * layer.outChannels;
  }, 0);
  const c = Cost.of(q, fullHd);
  assertAlmostEquals(c.storageK, (qWeights * 2 / 32 + (n - qWeights) + 146 * 3) / 1000, 1e-9);
  within(c.storageK, 1716.1, 0.01, "RDN W2A2 storage");
  within(c.bitopsT, 236.6, 0.01, "RDN W2A2 BitOPs");
  // Concatenations are memory moves: counting them moves FP32 away from the paper.
  const cat = Cost.of(model, { ...fullHd, concat: true });
  assert(cat.bitopsT > fp.bitopsT);
  assert(Math.abs(cat.bitopsT - 6032.9) > Math.abs(fp.bitopsT - 6032.9));
});

Deno.test("BitOPs and storage fall with the bit-width; RDN costs more than EDSR", () => {
  for (
    const [model, placement] of [
      [Edsr.edsr({ upscale: 4 }), Edsr.placement],
      [Rdn.rdn({ upscale: 4 }), Rdn.placement],
    ] as const
  ) {
    const costs = [2, 3, 4, 8].map((b) =>
      Cost.of(Quant.quantize(model, placement(odm(b))), fullHd)
    );
    costs.push(Cost.of(model, fullHd));
    for (let i = 1; i < costs.length; i++) {
      assert(costs[i].bitops > costs[i - 1].bitops, `BitOPs ${i}`);
      assert(costs[i].storageK > costs[i - 1].storageK, `storage ${i}`);
      assertEquals(costs[i].flops, costs[0].flops, "FLOPs do not depend on bits");
    }
  }
  const e = Cost.of(Edsr.edsr({ upscale: 4 }), fullHd);
  const r = Cost.of(Rdn.rdn({ upscale: 4 }), fullHd);
  assert(r.bitops > 10 * e.bitops && r.storageK > 10 * e.storageK);
  // ×2 costs more than ×4 at the same output size (the trunk runs at a larger LR).
  assert(Cost.of(Edsr.edsr({ upscale: 2 }), { ...fullHd, scale: 2 }).bitops > e.bitops);
});

Deno.test("the esrgan networks (nearest upsampler) are costed; parts add up", () => {
  const model = Rdn.rdn({ ...Rdn.configs["esrgan-slim"], upscale: 4 });
  const c = Cost.of(model, fullHd);
  assertEquals(c.params, 233451);
  assertEquals(c.params, Nn.parameterCount(model));
  const up = c.perLayer.find((l) => l.kind === "upsampleNearest")!;
  assertEquals([up.height, up.width], [1080, 1920]);
  const parts = Cost.byPart(c);
  assertEquals(parts.map((p) => p.part), ["sfe1", "sfe2", "rdbs", "gff", "upsample", "tail"]);
  assertAlmostEquals(parts.reduce((a, p) => a + p.bitopsT, 0), c.bitopsT, 1e-9);
});

Deno.test("cost covers all four architectures: storage equals the parameter count at FP32", () => {
  for (const arch of ["edsr", "rdn", "srresnet", "swinir"] as const) {
    const { model } = Registry.architecture({ arch, scale: 4, options: {} });
    const c = Cost.of(model, { outputHeight: 64, outputWidth: 96, scale: 4 });
    assertEquals(c.unmodelled, [], arch);
    assertAlmostEquals(c.storageK * 1000, Nn.parameterCount(model), 1e-6, arch);
    assertGreater(c.bitopsT, 0);
  }
});

Deno.test("deno task cost --recipe counts that recipe's model, bits and method (yours too)", async () => {
  const run = (argv: string[]) =>
    Effect.runPromise(CostCli.program(argv).pipe(Effect.provide(Backend.layer({ log: false }))));
  const { recipe } = await loadRecipe("esrgan-slim-x4-w4a4-odm-ddtbacts");
  const r = (await run(["--recipe", "esrgan-slim-x4-w4a4-odm-ddtbacts", "--json"]))!;
  assertEquals([r.model, r.scale, r.wbits, r.abits, r.method], [
    "esrgan-slim",
    4,
    4,
    4,
    "odm-ddtb-acts",
  ]);
  // The oracle: the recipe's own quantized model, costed directly.
  const direct = Cost.of(Registry.quantize(recipe, Registry.architecture(recipe.model)), {
    outputHeight: 1080,
    outputWidth: 1920,
    scale: 4,
  });
  assertEquals([r.storageK, r.bitopsT], [direct.storageK, direct.bitopsT]);
  // A flag overrides the recipe's value.
  assertEquals((await run(["--recipe", "default", "--bits", "2", "--json"]))!.wbits, 2);
  await assertRejects(() => run(["--json"]), Error, "give --model (or --recipe");
});
