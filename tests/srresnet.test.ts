/**
 * SRResNet and its layers: PReLU and batch norm against scalar references, their gradients
 * against finite differences, folding BN into the convs, output shapes at every scale, DDTB's
 * parameter counts, the SPEC §6 placement.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import { placement, srresnet } from "../models/srresnet.ts";
import { checkGradients, maxRelDiff, values } from "./_setup.ts";

/** Normals kept at least 0.1 away from 0, so that ±ε never crosses a kink. */
const awayFromZero = (shape: number[], seed: number) =>
  tf.tidy(() => {
    const r = tf.randomNormal(shape, 0, 1, "float32", seed);
    return tf.mul(tf.sign(r), tf.add(tf.abs(r), 0.1));
  });

Deno.test("prelu: max(0, x) + a·min(0, x), per channel or shared, init 0.25; gradients", async () => {
  const ctx = Nn.context();
  const per = Nn.prelu({ channels: 3 });
  const shared = Nn.prelu({ channels: 3, shared: true });
  assertEquals(await values(Tree.leaf(per.init(0), "weight")), [0.25, 0.25, 0.25]);
  assertEquals(Tree.leaf(shared.init(0), "weight").shape, [1]);
  const x = awayFromZero([2, 3, 2, 3], 1);
  const a = tf.tensor1d([0.1, -0.5, 2]);
  const y = per.apply({ weight: a }, x, ctx);
  const xv = await values(x), av = [0.1, -0.5, 2];
  assertLess(
    maxRelDiff(await values(y), xv.map((v, k) => (v > 0 ? v : av[k % 3] * v))),
    1e-6,
  );
  const r = tf.randomNormal([2, 3, 2, 3], 0, 1, "float32", 2);
  for (const [layer, w] of [[per, a], [shared, tf.tensor1d([0.3])]] as const) {
    await checkGradients(
      (xx, ww) => tf.sum(tf.mul(layer.apply({ weight: ww }, xx, ctx), r)) as tf.Scalar,
      [x, w],
      { names: ["x", `${layer.meta.shared ? "shared" : "per-channel"} slope`] },
    );
  }
  tf.dispose([x, a, y, r]);
});

Deno.test("batchNorm: batch statistics in train mode, running ones in eval; gradients in train mode", async () => {
  const bn = Nn.batchNorm({ channels: 2 });
  const frozen = Nn.batchNorm({ channels: 2, statistics: "running" });
  const x = tf.randomNormal([2, 3, 2, 2], 1, 2, "float32", 3);
  const p = {
    weight: tf.tensor1d([1.5, -0.5]),
    bias: tf.tensor1d([0.2, 1]),
    running_mean: tf.tensor1d([0.5, -1]),
    running_var: tf.tensor1d([2, 0.25]),
  };
  const xv = await values(x);
  const train = bn.apply(p, x, Nn.context("train"));
  // Scalar reference: per channel over the 12 values of the batch, biased variance, eps 1e-5.
  const ref = xv.map((v, k) => {
    const ch = xv.filter((_, j) => j % 2 === k % 2);
    const m = ch.reduce((s, t) => s + t, 0) / ch.length;
    const s2 = ch.reduce((s, t) => s + (t - m) ** 2, 0) / ch.length;
    return ((v - m) / Math.sqrt(s2 + 1e-5)) * [1.5, -0.5][k % 2] + [0.2, 1][k % 2];
  });
  assertLess(maxRelDiff(await values(train), ref), 1e-5);
  // Eval mode (and the frozen BN in any mode): the running statistics.
  const refEval = xv.map((v, k) =>
    ((v - [0.5, -1][k % 2]) / Math.sqrt([2, 0.25][k % 2] + 1e-5)) * [1.5, -0.5][k % 2] +
    [0.2, 1][k % 2]
  );
  for (const y of [bn.apply(p, x, Nn.context()), frozen.apply(p, x, Nn.context("train"))]) {
    assertLess(maxRelDiff(await values(y), refEval), 1e-5);
    y.dispose();
  }
  const r = tf.randomNormal([2, 3, 2, 2], 0, 1, "float32", 4);
  await checkGradients(
    (xx, w, b) =>
      tf.sum(
        tf.mul(bn.apply({ ...p, weight: w, bias: b }, xx, Nn.context("train")), r),
      ) as tf.Scalar,
    [x, p.weight, p.bias],
    { names: ["x", "weight", "bias"] },
  );
  // Frozen: the running statistics are constants (zero gradient, so Adam leaves them as they
  // are); x, weight and bias get the gradients of the affine map.
  await checkGradients(
    (xx, w) =>
      tf.sum(tf.mul(frozen.apply({ ...p, weight: w }, xx, Nn.context("train")), r)) as tf.Scalar,
    [x, p.weight],
    { names: ["x", "weight"] },
  );
  const [gm, gv] = tf.grads((m: tf.Tensor, v: tf.Tensor) =>
    tf.sum(
      tf.mul(frozen.apply({ ...p, running_mean: m, running_var: v }, x, Nn.context("train")), r),
    ) as tf.Scalar
  )([p.running_mean, p.running_var]);
  assertEquals([...await values(gm), ...await values(gv)], [0, 0, 0, 0]);
  assert(Nn.isBuffer("body.bn.running_mean") && !Nn.isBuffer("body.bn.weight"));
  tf.dispose([x, train, r, gm, gv, ...Object.values(p)]);
});

Deno.test("SRResNet output shapes at ×2, ×3, ×4 (full size and a small size)", async () => {
  for (const upscale of [2, 3, 4] as const) {
    for (const opts of [{}, { numFeat: 8, numBlock: 2 }]) {
      const model = srresnet({ upscale, ...opts });
      const p = model.init(0);
      for (const mode of ["eval", "train"] as const) {
        const y = tf.tidy(() =>
          model.apply(p, tf.randomUniform([2, 5, 7, 3], 0, 255, "float32", 1), Nn.context(mode))
        );
        assertEquals(y.shape, [2, 5 * upscale, 7 * upscale, 3], `×${upscale} ${mode}`);
        assert((await values(y)).every(Number.isFinite));
        y.dispose();
      }
      Tree.dispose(p);
    }
  }
});

Deno.test("SRResNet has DDTB's parameter counts (×4 1,546,771; ×2 1,399,314) plus BN buffers", () => {
  // zysxmu/DDTB model/bnsrresnet_org.py, sum(p.numel() for p in model.parameters()): head
  // 9·9·3·64 = 15,552 + PReLU 1 + 16 blocks × (2 × 36,864 + 2 × BN 128 + PReLU 1 = 73,985)
  // + conv_mid 36,864 + bn_mid 128 + upsampler (147,456 + 1) per ×2 step + tail 15,552.
  // ×3 (not in DDTB; EDSR's one-step rule) has conv 64 → 576: 331,776 + 1.
  const params = (upscale: 2 | 3 | 4) =>
    Nn.parameterCount(srresnet({ upscale }), (p) => !Nn.isBuffer(p));
  assertEquals(params(4), 1_546_771);
  assertEquals(params(2), 1_399_314);
  assertEquals(params(3), 1_583_634);
  // The 33 BNs' running mean and variance are buffers: 33 × 128.
  assertEquals(Nn.parameterCount(srresnet({ upscale: 4 }), Nn.isBuffer), 4_224);
});

Deno.test("quantizing SRResNet at 2 bits wraps exactly the 32 residual-block convs", () => {
  const q = {
    weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
    input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
  };
  const model = Quant.quantize(srresnet({ upscale: 4 }), placement(q));
  const wrapped = Quant.layers(model).map((l) => l.path);
  assertEquals(wrapped.length, 32);
  assertEquals(wrapped.slice(0, 3), [
    "body.blocks.0.conv1",
    "body.blocks.0.conv2",
    "body.blocks.1.conv1",
  ]);
  for (const fp of ["head", "body.conv", "upsample.0", "upsample.3", "tail"]) {
    assertEquals(wrapped.includes(fp), false, fp);
  }
  assertEquals(Nn.parameterCount(model, Quant.isQuantizerParam), 96);
});

Deno.test("foldBatchNorm folds each conv → BN pair; the folded model computes the same", async () => {
  const model = srresnet({ upscale: 2, numFeat: 8, numBlock: 2 });
  // Non-trivial BN parameters and statistics, as in a trained model.
  const init = Tree.flatten(model.init(5));
  const params = Tree.unflatten(
    [...init].map(([k, t], i) => {
      if (!/\.bn\d?\./.test(k)) return [k, t] as const;
      const r = tf.randomUniform(t.shape, 0.5, 1.5, "float32", i);
      const v = k.endsWith("running_mean") || k.endsWith(".bias") ? tf.sub(r, 1) : r;
      if (v !== r) r.dispose();
      t.dispose();
      return [k, v] as const;
    }),
  );
  const folded = Nn.foldBatchNorm(model, params);
  const kinds: string[] = [];
  Nn.walk(folded.model, (_p, l) => kinds.push(l.kind));
  assertEquals(kinds.includes("batchNorm"), false);
  const keys = [...Tree.flatten(folded.params).keys()];
  assert(keys.includes("body.blocks.0.conv1.bias") && keys.includes("body.conv.bias"));
  assertEquals(keys.some((k) => k.includes("bn")), false);
  assertEquals(
    Nn.parameterCount(folded.model),
    Nn.parameterCount(model, (p) => !Nn.isBuffer(p)) - 5 * 2 * 8 + 5 * 8,
  );
  const x = tf.randomUniform([1, 6, 5, 3], 0, 255, "float32", 9);
  const y = model.apply(params, x, Nn.context());
  const yf = folded.model.apply(folded.params, x, Nn.context());
  assertLess(maxRelDiff(await values(yf), await values(y)), 1e-4);
  // The placement still finds the 4 block convs of the folded model.
  const q = {
    weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
    input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
  };
  assertEquals(Quant.layers(Quant.quantize(folded.model, placement(q))).length, 4);
  tf.dispose([x, y, yf]);
  Tree.dispose(params);
  Tree.dispose(folded.params);
});
