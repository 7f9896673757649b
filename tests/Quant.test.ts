/** Quantization wrappers: path transparency, taps, calibration, schemes by path pattern. */
import * as tf from "@tensorflow/tfjs";
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import { values } from "./_setup.ts";

const w2a2 = {
  weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
  input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
};

const tiny = () =>
  Nn.sequential(
    Nn.named("head", Nn.conv2d({ in: 3, out: 4 })),
    Nn.named(
      "body",
      Nn.repeat(2, () => Nn.sequential(Nn.named("conv", Nn.conv2d({ in: 4, out: 4 })), Nn.relu(4))),
    ),
    Nn.named("tail", Nn.conv2d({ in: 4, out: 3 })),
  );

Deno.test("a scheme wraps matching layers only; quantizer params sit beside the weights", () => {
  const model = Quant.quantize(tiny(), [{ match: "body.*.conv", ...w2a2 }]);
  assertEquals(Quant.layers(model).map((l) => l.path), ["body.0.conv", "body.1.conv"]);
  const p = model.init(0);
  const paths = [...Tree.flatten(p).keys()];
  assert(paths.includes("head.weight") && paths.includes("body.0.conv.weight"));
  assert(paths.includes("body.0.conv.wq.gamma") && paths.includes("body.1.conv.aq.lower"));
  assertEquals(paths.filter(Quant.isQuantizerParam), [
    "body.0.conv.wq.gamma",
    "body.0.conv.aq.lower",
    "body.0.conv.aq.upper",
    "body.1.conv.wq.gamma",
    "body.1.conv.aq.lower",
    "body.1.conv.aq.upper",
  ]);
  // The FP model's parameters load unchanged into the quantized one (same paths).
  const fpPaths = [...Tree.flatten(tiny().init(0)).keys()];
  assertEquals(paths.filter((q) => !Quant.isQuantizerParam(q)), fpPaths);
  Tree.dispose(p);
  assertThrows(() => Quant.wrap(w2a2)(tiny()), Error, "leaf");
});

Deno.test("the wrapped layer quantizes weight and input and reports (x, q(x)) through ctx.tap", async () => {
  const conv = Nn.conv2d({ in: 1, out: 1, kernel: 1, bias: false });
  const wq = Quantizer.symmetric({ bits: 2, range: Range.learnable() });
  const aq = Quantizer.asymmetric({ bits: 2, range: Range.learnable() });
  const q = Quant.wrap({ weight: wq, input: aq })(conv);
  const p = {
    weight: tf.tensor4d([0.8], [1, 1, 1, 1]),
    wq: { upper: tf.scalar(0.9) },
    aq: { lower: tf.scalar(0), upper: tf.scalar(3) },
  };
  const x = tf.tensor4d([0.4, 1.2, 5], [1, 1, 3, 1]);
  const taps: Nn.Tap[] = [];
  const y = q.apply(p, x, { ...Nn.context("train", { tap: (t) => taps.push(t) }), path: "c" });
  // w: 0.8 → 0.9 (levels ±0.3, ±0.9); x: 0.4 → 0, 1.2 → 1, 5 → 3 (levels 0, 1, 2, 3).
  const got = await values(y);
  [0, 0.9, 2.7].forEach((v, i) => assertAlmostEquals(got[i], v, 1e-6));
  assertEquals(taps.length, 1);
  assertEquals(taps[0].path, "c");
  assertEquals(await values(taps[0].q), [0, 1, 3]);
  // Calibration mode is full precision and reports the raw input.
  const cal: Nn.Tap[] = [];
  const yc = q.apply(p, x, { ...Nn.context("calibrate", { tap: (t) => cal.push(t) }), path: "c" });
  const gotc = await values(yc);
  [0.32, 0.96, 4].forEach((v, i) => assertAlmostEquals(gotc[i], v, 1e-6));
  assertEquals(await values(cal[0].q), await values(x));
  tf.dispose([y, yc, x, p.weight, p.wq.upper, p.aq.lower, p.aq.upper]);
});

Deno.test("calibrate: weight params from the weights, activation params averaged over batches", async () => {
  const model = Quant.quantize(tiny(), [{ match: "body.0.conv", ...w2a2 }]);
  const p = model.init(3);
  const inputs = new Map<string, tf.Tensor[]>();
  const batches = [tf.tensor1d([0, 1, 2, 3, 4]), tf.tensor1d([10, 11, 12, 13, 14])];
  const ctx = Nn.context("calibrate", {
    tap: (t) => inputs.set(t.path, [...(inputs.get(t.path) ?? []), t.x]),
  });
  model.apply(p, tf.ones([1, 3, 3, 3]), ctx);
  assertEquals([...inputs.keys()], ["body.0.conv"]);
  const cal = Quant.calibrate(model, p, new Map([["body.0.conv", batches]]));
  const flat = Tree.flatten(cal);
  assertEquals([...flat.keys()], [
    "body.0.conv.wq.gamma",
    "body.0.conv.aq.lower",
    "body.0.conv.aq.upper",
  ]);
  // percentile(0.01) of [0..4] = 0.04, of [10..14] = 10.04 → mean 5.04; 0.99 → 3.96, 13.96 → 8.96.
  assertAlmostEquals((await values(flat.get("body.0.conv.aq.lower")!))[0], 5.04, 1e-5);
  assertAlmostEquals((await values(flat.get("body.0.conv.aq.upper")!))[0], 8.96, 1e-5);
  assertEquals(await values(flat.get("body.0.conv.wq.gamma")!), [1]);
  Tree.dispose(p);
  Tree.dispose(cal);
});

Deno.test("a range policy written outside lib/ plugs into a scheme unchanged", async () => {
  // A user's policy: u = 3·mean|x| (a constant statistic), no learnable parameters.
  const threeMeanAbs: Range.Range<Record<never, never>> = {
    name: "3·mean|x|",
    init: () => ({}),
    defaults: () => ({}),
    bounds: (_p, x) => {
      const u = tf.mul(tf.mean(tf.abs(x)), 3) as tf.Scalar;
      return { lower: tf.neg(u), upper: u };
    },
  };
  const weight = Quantizer.symmetric({ bits: 3, range: threeMeanAbs });
  const model = Quant.quantize(tiny(), [{ match: "head", weight }]);
  assertEquals(Quant.layers(model).map((l) => l.path), ["head"]);
  const p = model.init(0);
  const w = Tree.leaf(Tree.sub(p, "head"), "weight");
  const ws = await values(w);
  const u = 3 * ws.reduce((a, v) => a + Math.abs(v), 0) / ws.length;
  const got = await values(weight.apply({}, w));
  const s = (2 * u) / 7;
  ws.forEach((v, i) => {
    const t = (Math.min(Math.max(v, -u), u) + u) / s;
    if (Math.abs(t - Math.floor(t) - 0.5) > 1e-3) {
      assertAlmostEquals(got[i], Math.round(t) * s - u, 1e-5);
    }
  });
  Tree.dispose(p);
});
