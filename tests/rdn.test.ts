/**
 * RDN: the dense-block layers against hand-written references, output shapes at every scale,
 * parameter counts of config B and the pretrained configurations, the SPEC §6 placement.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess, assertThrows } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import { configs, placement, rdn } from "../models/rdn.ts";
import { maxRelDiff, values } from "./_setup.ts";

const ctx = Nn.context();

Deno.test("denseBlock: [x, relu(conv0(x)), relu(conv1([x, y0]))], convs as children", async () => {
  const block = Nn.denseBlock({ in: 3, growth: 2, layers: 2 });
  assertEquals([block.inChannels, block.outChannels], [3, 7]);
  assertEquals(block.children.map(([n, l]) => [n, l.inChannels, l.outChannels]), [
    ["0", 3, 2],
    ["1", 5, 2],
  ]);
  const p = block.init(3);
  const x = tf.randomNormal([2, 4, 5, 3], 0, 1, "float32", 7);
  const conv = (i: string, t: tf.Tensor) =>
    tf.conv2d(t as tf.Tensor4D, Tree.leaf(Tree.sub(p, i), "weight"), 1, "same")
      .add(Tree.leaf(Tree.sub(p, i), "bias"));
  const y0 = conv("0", x).relu();
  const y1 = conv("1", tf.concat([x, y0], 3)).relu();
  const ref = tf.concat([x, y0, y1], 3);
  const y = block.apply(p, x, ctx);
  assertEquals(y.shape, [2, 4, 5, 7]);
  assertLess(maxRelDiff(await values(y), await values(ref)), 1e-6);
  tf.dispose([x, y0, y1, ref, y]);
  Tree.dispose(p);
  assertThrows(() => Nn.denseBlock({ in: 3, growth: 2, layers: 0 }), RangeError);
});

Deno.test("concatOutputs keeps every output of the chain, in order", async () => {
  const chain = Nn.concatOutputs(3, () => Nn.conv2d({ in: 2, out: 2, kernel: 1 }));
  assertEquals([chain.inChannels, chain.outChannels], [2, 6]);
  const p = chain.init(1);
  const x = tf.randomNormal([1, 3, 3, 2], 0, 1, "float32", 2);
  const outs: tf.Tensor[] = [];
  let h: tf.Tensor = x;
  for (const i of ["0", "1", "2"]) {
    h = chain.children[Number(i)][1].apply(Tree.sub(p, i), h, ctx);
    outs.push(h);
  }
  const ref = tf.concat(outs, 3);
  const y = chain.apply(p, x, ctx);
  assertLess(maxRelDiff(await values(y), await values(ref)), 1e-6);
  tf.dispose([x, ref, y, ...outs]);
  Tree.dispose(p);
});

Deno.test("upsampleNearest repeats each pixel r×r; its gradient sums each r×r square", async () => {
  for (const r of [2, 3, 4]) {
    const up = Nn.upsampleNearest({ channels: 2, factor: r });
    const x = tf.randomNormal([2, 3, 4, 2], 0, 1, "float32", r);
    const y = up.apply({}, x, ctx);
    assertEquals(y.shape, [2, 3 * r, 4 * r, 2]);
    // Reference by index: y[b, i, j, c] = x[b, ⌊i/r⌋, ⌊j/r⌋, c].
    const xv = await values(x);
    const yv = await values(y);
    const ref = yv.map((_, k) => {
      const c = k % 2;
      const j = Math.floor(k / 2) % (4 * r);
      const i = Math.floor(k / (2 * 4 * r)) % (3 * r);
      const b = Math.floor(k / (2 * 4 * r * 3 * r));
      return xv[((b * 3 + Math.floor(i / r)) * 4 + Math.floor(j / r)) * 2 + c];
    });
    assertEquals(yv, ref);
    // d/dx Σ w·y, with w the output index: the sum of w over each r×r square.
    const w = tf.range(0, y.size).reshape(y.shape);
    const g = tf.grad((t: tf.Tensor) => up.apply({}, t, ctx).mul(w).sum())(x);
    const gRef = tf.avgPool(w as tf.Tensor4D, r, r, "valid").mul(r * r);
    assertLess(maxRelDiff(await values(g), await values(gRef)), 1e-6);
    tf.dispose([x, y, w, g, gRef]);
  }
});

Deno.test("RDN output shapes at ×2, ×3, ×4: config B, esrgan-slim, esrgan-medium", () => {
  for (const upscale of [2, 3, 4] as const) {
    for (const [name, cfg] of Object.entries(configs)) {
      if (name === "A") continue;
      const model = rdn({ ...cfg, upscale });
      const p = model.init(0);
      const before = tf.memory().numTensors;
      const y = tf.tidy(() => model.apply(p, tf.ones([1, 6, 5, 3]), ctx));
      assertEquals(y.shape, [1, 6 * upscale, 5 * upscale, 3], `${name} ×${upscale}`);
      y.dispose();
      assertEquals(tf.memory().numTensors, before, "no leaked tensors");
      Tree.dispose(p);
    }
  }
});

Deno.test("RDN parameter paths read like EDSR-PyTorch's state dict", () => {
  const model = rdn({ upscale: 4 });
  const shapes = new Map<string, number[]>();
  Nn.walk(model, (path, l) => {
    if (l.kind === "conv2d") {
      shapes.set(path, [l.meta.kernel!, l.meta.kernel!, l.inChannels, l.outChannels]);
    }
  });
  assertEquals(shapes.get("sfe1"), [3, 3, 3, 64]);
  assertEquals(shapes.get("sfe2"), [3, 3, 64, 64]);
  assertEquals(shapes.get("rdbs.0.convs.0"), [3, 3, 64, 64]);
  assertEquals(shapes.get("rdbs.15.convs.7"), [3, 3, 64 + 7 * 64, 64]);
  assertEquals(shapes.get("rdbs.3.lff"), [1, 1, 64 + 8 * 64, 64]);
  assertEquals(shapes.get("gff.0"), [1, 1, 16 * 64, 64]);
  assertEquals(shapes.get("gff.1"), [3, 3, 64, 64]);
  assertEquals(shapes.get("upsample.0"), [3, 3, 64, 256]);
  assertEquals(shapes.get("upsample.2"), [3, 3, 64, 256]);
  assertEquals(shapes.get("tail"), [3, 3, 64, 3]);
  assertEquals(shapes.size, 2 + 16 * 9 + 2 + 2 + 1);
});

Deno.test("RDN parameter counts: config B (EDSR-PyTorch rdn.py) and the npm models", () => {
  // Config B by hand from EDSR-PyTorch's rdn.py (G0 = G = 64, D 16, C 8, 3×3, biases):
  //   SFENet1 3·64·9 + 64 = 1,792; SFENet2 64·64·9 + 64 = 36,928;
  //   RDB: Σ_{c=0..7} (9·64·64(c+1) + 64) = 1,327,616, LFF 576·64 + 64 = 36,928 → 1,364,544;
  //   16 RDBs 21,832,704; GFF 1024·64 + 64 + 36,928 = 102,528 → trunk 21,973,952;
  //   UPNet ×2: 64→256 conv 147,712 + conv 64→3 1,731 → 22,123,395;
  //         ×3: 64→576 conv 332,352 + 1,731 → 22,308,035;
  //         ×4: 2 × 147,712 + 1,731 → 22,271,107 (the paper's Table 6 / ODM storage: 22271.1K).
  assertEquals(Nn.parameterCount(rdn({ upscale: 2 })), 22_123_395);
  assertEquals(Nn.parameterCount(rdn({ upscale: 3 })), 22_308_035);
  assertEquals(Nn.parameterCount(rdn({ upscale: 4 })), 22_271_107);
  // The npm models: the sums of their model.json weight manifests (models/x{s}).
  const slim = [222_075, 226_815, 233_451];
  const medium = [693_235, 697_975, 704_611];
  ([2, 3, 4] as const).forEach((upscale, i) => {
    assertEquals(Nn.parameterCount(rdn({ ...configs["esrgan-slim"], upscale })), slim[i]);
    assertEquals(Nn.parameterCount(rdn({ ...configs["esrgan-medium"], upscale })), medium[i]);
  });
});

/** W2A2 as the ODM paper sets it (SPEC §1–2). */
const w2a2 = {
  weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
  input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
};

Deno.test("quantizing RDN config B at W2A2 wraps exactly the 146 layers of SPEC §6", () => {
  const model = Quant.quantize(rdn({ upscale: 4 }), placement(w2a2));
  const wrapped = Quant.layers(model).map((l) => l.path);
  // Forward order: for each RDB d, its 8 dense convs then its LFF; then GFF 1×1 and 3×3.
  const expected = [
    ...Array.from({ length: 16 }, (_, d) => [
      ...Array.from({ length: 8 }, (_, c) => `rdbs.${d}.convs.${c}`),
      `rdbs.${d}.lff`,
    ]).flat(),
    "gff.0",
    "gff.1",
  ];
  assertEquals(expected.length, 146);
  assertEquals(wrapped, expected);
  for (const fp of ["sfe1", "sfe2", "upsample.0", "upsample.2", "tail"]) {
    assertEquals(wrapped.includes(fp), false, fp);
  }
  // 3 quantizer parameters per layer (l_a, u_a, γ_w).
  assertEquals(Nn.parameterCount(model, Quant.isQuantizerParam), 3 * 146);
});

Deno.test("a quantized tiny RDN runs, reports its taps in forward order, and has gradients", async () => {
  // Per-batch percentile ranges, so that the STE passes gradients without calibration.
  const q = {
    weight: w2a2.weight,
    input: Quantizer.asymmetric({ bits: 2, range: Range.percentile(0.99) }),
  };
  const model = Quant.quantize(
    rdn({ numFeat: 4, numBlock: 2, numConv: 2, growRate: 2, upscale: 2, upsampler: "nearest" }),
    placement(q),
  );
  const p = model.init(5);
  const x = tf.randomUniform([1, 5, 4, 3], 0, 255, "float32", 1);
  const taps: string[] = [];
  const y = model.apply(p, x, Nn.context("train", { tap: (t) => taps.push(t.path) }));
  assertEquals(y.shape, [1, 10, 8, 3]);
  assertEquals(taps, [
    "rdbs.0.convs.0",
    "rdbs.0.convs.1",
    "rdbs.0.lff",
    "rdbs.1.convs.0",
    "rdbs.1.convs.1",
    "rdbs.1.lff",
    "gff.0",
    "gff.1",
  ]);
  // Gradients reach every weight (through concat, tile and the quantizers' STE).
  const flat = Tree.flatten(p);
  const weights = [...flat].filter(([k]) => k.endsWith(".weight"));
  const grads = tf.grads((...ws: tf.Tensor[]) => {
    const q = Tree.unflatten([...flat, ...weights.map(([k], i) => [k, ws[i]] as const)]);
    return model.apply(q, x, Nn.context("train")).square().mean();
  })(weights.map(([, t]) => t));
  for (const [i, g] of grads.entries()) {
    const v = await values(g);
    assert(v.every(Number.isFinite), weights[i][0]);
    assert(v.some((e) => e !== 0), `zero gradient for ${weights[i][0]}`);
  }
  tf.dispose([x, y, ...grads]);
  Tree.dispose(p);
});

Deno.test("FP RDN gradients match central finite differences (both upsamplers)", async () => {
  for (const upsampler of ["pixelShuffle", "nearest"] as const) {
    const model = rdn({ numFeat: 4, numBlock: 2, numConv: 2, growRate: 2, upscale: 3, upsampler });
    const p = model.init(11);
    const x = tf.randomUniform([1, 4, 4, 3], 0, 1, "float32", 3);
    const flat = Tree.flatten(p);
    const paths = [
      "sfe1.weight",
      "rdbs.1.convs.1.weight",
      "rdbs.0.lff.bias",
      "gff.0.weight",
      upsampler === "nearest" ? "upsample.4.weight" : "upsample.0.weight",
      "tail.weight",
    ];
    const loss = (ws: tf.Tensor[]) =>
      tf.tidy(() => {
        const q = Tree.unflatten([...flat, ...paths.map((k, i) => [k, ws[i]] as const)]);
        return model.apply(q, x, ctx).square().sum();
      });
    const ws = paths.map((k) => flat.get(k)!);
    const grads = tf.grads((...t: tf.Tensor[]) => loss(t))(ws);
    for (const [i, w] of ws.entries()) {
      // Directional derivative along a random v: (L(w + εv) − L(w − εv)) / 2ε vs ⟨∇L, v⟩.
      const v = tf.randomNormal(w.shape, 0, 1, "float32", 20 + i);
      const eps = 1e-3;
      const plus = loss(ws.map((t, j) => (j === i ? t.add(v.mul(eps)) : t)));
      const minus = loss(ws.map((t, j) => (j === i ? t.sub(v.mul(eps)) : t)));
      const fd = ((await values(plus))[0] - (await values(minus))[0]) / (2 * eps);
      const an = (await values(grads[i].mul(v).sum()))[0];
      assertLess(Math.abs(fd - an) / Math.max(1, Math.abs(an)), 5e-3, `${upsampler} ${paths[i]}`);
      tf.dispose([v, plus, minus]);
    }
    tf.dispose([x, ...grads]);
    Tree.dispose(p);
  }
});

Deno.test("RDN wiring types: the dense block's channels are checked when built", () => {
  const up = Nn.upsampleNearest({ channels: 3, factor: 2 });
  const ok: Nn.Layer<3, 3> = Nn.sequential(Nn.conv2d({ in: 3, out: 3 }), up);
  assertEquals(ok.outChannels, 3);
  const wrong = () =>
    Nn.sequential(
      Nn.conv2d({ in: 3, out: 8 }),
      // @ts-expect-error an 8-channel output cannot feed a 3-channel upsampler
      up,
    );
  assertEquals(typeof wrong, "function");
  // The dense block's output count is a run-time number: a wrong LFF fails when built.
  assertThrows(
    () =>
      Nn.sequential(
        Nn.denseBlock({ in: 4, growth: 2, layers: 2 }),
        Nn.conv2d({ in: 6, out: 4, kernel: 1 }),
      ),
    Error,
    "gives 8 channels",
  );
  assertThrows(() => rdn({ upscale: 8 as 4 }), RangeError);
});
