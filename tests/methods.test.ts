/**
 * Each method against its official code: the quantizers of PAMS, DDTB and DAQ against float64
 * ports written from the official files (tests/fixtures/official.ts, file and line cited
 * there) at 2, 3 and 4 bits; their straight-through gradients against finite differences of
 * the ports with the roundings frozen (which is what autograd's STE differentiates); DDTB's gate
 * forward and gradients; DAQ's post-ReLU branch on a real post-ReLU tensor; where each method
 * puts its quantizers; and the costs of Table 6 for EDSR W2A2 from the model walk.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertAlmostEquals, assertEquals, assertLess } from "@std/assert";
import * as Calibration from "../lib/Calibration.ts";
import * as Cost from "../lib/Cost.ts";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Rng from "../lib/Rng.ts";
import * as Tree from "../lib/Tree.ts";
import * as Methods from "../lib/methods/mod.ts";
import { Daq, Ddtb, Pams } from "../lib/methods/mod.ts";
import * as Registry from "../models/registry.ts";
import * as Official from "./fixtures/official.ts";
import { values } from "./_setup.ts";

const BITS = [2, 3, 4];
const data = (n: number, seed: number, scale = 1) => Array.from(Rng.normal(seed, n, 0, scale));

/** Max |a − b| relative to the reference's largest magnitude. */
function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string) {
  assertEquals(a.length, b.length, what);
  let scale = 1e-12, diff = 0, at = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > diff) [diff, at] = [d, i];
  }
  assertLess(diff / scale, tol, `${what}: at ${at} ${a[at]} vs ${b[at]}`);
}

const noCtx = Nn.context("eval");

Deno.test("PAMS weights and activations equal the float64 port of quant_ops.py (2, 3, 4 bits)", async () => {
  const w = data(3 * 3 * 8 * 8, 1, 0.05);
  const x = data(4 * 6 * 6 * 8, 2, 3);
  for (const b of BITS) {
    const qw = await values(Pams.weight(b).apply({}, tf.tensor1d(w), noCtx));
    close(qw, Official.pamsWeight(w, b), 1e-6, `weight ${b} bits`);
    assertEquals(new Set(qw).size, 2 ** b - 1, "2^b − 1 levels, zero among them");
    const alpha = 2.5;
    const qx = await values(Pams.activation(b).apply({ alpha: tf.scalar(alpha) }, tf.tensor1d(x)));
    close(qx, Official.pamsActivation(x, alpha, b), 1e-6, `activation ${b} bits`);
  }
  // α's initial value: the batch mean of each image's max|x| (`_ema`).
  const img = tf.tensor4d(x, [4, 6, 6, 8]);
  const a = await values(Pams.activation(4).init(img).alpha);
  const images = Array.from({ length: 4 }, (_, i) => x.slice(i * 288, (i + 1) * 288));
  assertAlmostEquals(a[0], Official.pamsMeanImageMax(images), 1e-5);
});

Deno.test("PAMS's α gradient and DDTB's bound gradients equal finite differences of the ported STE", async () => {
  const x = data(200, 3, 2);
  const r = data(200, 4);
  const eps = 1e-4;
  for (const b of BITS) {
    // PAMS: d/dα of Σ r·q(x; α).
    const alpha = 1.7;
    const [, da] = tf.grads((xx: tf.Tensor, aa: tf.Tensor) =>
      tf.sum(tf.mul(Pams.zeroLevelQuant(xx, aa as tf.Scalar, b), tf.tensor1d(r)))
    )([tf.tensor1d(x), tf.scalar(alpha)]);
    const rec = new Official.Rounder();
    Official.pamsActivation(x, alpha, b, rec);
    const f = (al: number) =>
      Official.pamsActivation(x, al, b, rec.frozen()).reduce((s, v, i) => s + v * r[i], 0);
    assertAlmostEquals((await values(da))[0], (f(alpha + eps) - f(alpha - eps)) / (2 * eps), 1e-3);
    // DDTB: d/dl, d/du and d/dx of Σ r·q(x; l, u).
    const [l, u] = [-1.3, 2.1];
    const [dx, dl, du] = tf.grads((xx: tf.Tensor, ll: tf.Tensor, uu: tf.Tensor) =>
      tf.sum(tf.mul(Ddtb.quant(xx, ll as tf.Scalar, uu as tf.Scalar, b), tf.tensor1d(r)))
    )([tf.tensor1d(x), tf.scalar(l), tf.scalar(u)]);
    const rd = new Official.Rounder();
    Official.ddtbQuant(x, l, u, b, rd);
    const g = (ll: number, uu: number) =>
      Official.ddtbQuant(x, ll, uu, b, rd.frozen()).reduce((s, v, i) => s + v * r[i], 0);
    assertAlmostEquals((await values(dl))[0], (g(l + eps, u) - g(l - eps, u)) / (2 * eps), 1e-3);
    assertAlmostEquals((await values(du))[0], (g(l, u + eps) - g(l, u - eps)) / (2 * eps), 1e-3);
    const gx = await values(dx);
    x.forEach((v, i) => assertEquals(gx[i], v >= l && v <= u ? r[i] : 0, `dx ${i}`));
  }
});

Deno.test("DDTB weights (asym99, min/max) and static activations equal the port (2, 3, 4 bits)", async () => {
  const w = data(3 * 3 * 16 * 8, 5, 0.05);
  const x = data(2 * 5 * 5 * 8, 6, 2);
  for (const b of BITS) {
    const p99 = await values(Ddtb.weight(b, "p99").apply({}, tf.tensor1d(w), noCtx));
    close(p99, Official.ddtbWeight99(w, b), 1e-5, `asym99 ${b}`);
    const mm = await values(Ddtb.weight(b, "minmax").apply({}, tf.tensor1d(w), noCtx));
    close(mm, Official.ddtbWeightMinMax(w, b), 1e-5, `asym ${b}`);
    const q = Ddtb.activation(b, { percentile: 0.99 });
    const [l, u] = Official.ddtbInitialBounds(x, 99);
    const init = q.init(tf.tensor4d(x, [2, 5, 5, 8]));
    assertAlmostEquals((await values(init.lower))[0], l, 1e-5);
    assertAlmostEquals((await values(init.upper))[0], u, 1e-5);
    const got = await values(q.apply(init, tf.tensor4d(x, [2, 5, 5, 8]), noCtx));
    close(got, Official.ddtbQuant(x, l, u, b), 1e-5, `activation ${b}`);
  }
  // The grid is DDTB's, anchored at zero: 4 or 5 levels at 2 bits, zero one of them.
  const q2 = new Set(Official.ddtbQuant(data(1000, 7, 3), -1.1, 2.3, 2));
  assert(q2.has(0) && (q2.size === 4 || q2.size === 5), `levels ${[...q2]}`);
});

/** A DDTB gate's parameters from fixed draws. */
function gateParams(c: number, key: number) {
  const w1 = Rng.uniform(key, c * 32, -1 / Math.sqrt(c), 1 / Math.sqrt(c));
  const w2 = Rng.uniform(key + 1, 64, -1 / Math.sqrt(32), 1 / Math.sqrt(32));
  return { w1: Array.from(w1), w2: Array.from(w2) };
}

Deno.test("DDTB's gate: per-image factors and quantized images equal the port; its gradients equal finite differences", async () => {
  // 5 images: with 3, the gate's BN output has exact ties at the 2-bit rounding boundaries.
  const shape = [5, 4, 4, 6] as const;
  const x = data(5 * 4 * 4 * 6, 8, 2);
  const { w1, w2 } = gateParams(6, 9);
  const [l, u] = [-2.2, 3.1];
  const q = Ddtb.activation(2, { percentile: 0.99, gate: { channels: 6, from: 0 } });
  const params = (ll: tf.Tensor, uu: tf.Tensor, ww2: tf.Tensor) => ({
    lower: ll as tf.Scalar,
    upper: uu as tf.Scalar,
    gate: {
      w1: tf.tensor2d(w1, [6, 32]),
      w2: ww2 as tf.Tensor2D,
      bn: {
        weight: tf.ones([32]),
        bias: tf.zeros([32]),
        running_mean: tf.zeros([32]),
        running_var: tf.ones([32]),
      },
    },
  });
  const train = Nn.context("train", { step: 5 });
  const rec = new Official.Rounder();
  const ref = Official.ddtbGated(x, shape, { lower: l, upper: u, w1, w2 }, 2, rec);
  const got = await values(
    q.apply(
      params(tf.scalar(l), tf.scalar(u), tf.tensor2d(w2, [32, 2])),
      tf.tensor4d(x, [...shape]),
      train,
    ),
  );
  close(got, ref.q, 1e-5, "gated output");
  const logits = await values(
    Ddtb.gateLogits(
      params(tf.scalar(l), tf.scalar(u), tf.tensor2d(w2, [32, 2])).gate,
      tf.tensor4d(x, [...shape]),
      train,
    ),
  );
  const scales = logits.map((v) => 2 / (1 + Math.exp(-v)));
  close(scales, ref.scales.flat(), 1e-5, "gate factors (s_u, s_l) per image");
  // Gradients of Σ r·q: αu, αl through the scaled bounds, w2 through the factors (STE through its
  // 2-bit quantizer); conv₁ and the BN get none (the official gate detaches them).
  const r = data(x.length, 10);
  const [dl, du, dw2] = tf.grads((ll: tf.Tensor, uu: tf.Tensor, ww2: tf.Tensor) =>
    tf.sum(
      tf.mul(
        q.apply(params(ll, uu, ww2), tf.tensor4d(x, [...shape]), train),
        tf.tensor1d(r).reshape([...shape]),
      ),
    )
  )([tf.scalar(l), tf.scalar(u), tf.tensor2d(w2, [32, 2])]);
  const w2Max = Math.max(...w2.map(Math.abs)) + 1e-8;
  const f = (ll: number, uu: number, ww2: number[]) =>
    Official.ddtbGated(x, shape, { lower: ll, upper: uu, w1, w2: ww2, w2Max }, 2, rec.frozen()).q
      .reduce((s, v, i) => s + v * r[i], 0);
  const eps = 1e-4;
  assertAlmostEquals(
    (await values(dl))[0],
    (f(l + eps, u, w2) - f(l - eps, u, w2)) / (2 * eps),
    2e-3,
  );
  assertAlmostEquals(
    (await values(du))[0],
    (f(l, u + eps, w2) - f(l, u - eps, w2)) / (2 * eps),
    2e-3,
  );
  const g2 = await values(dw2);
  for (const k of [0, 5, 17, 40, 63]) {
    const plus = w2.slice(), minus = w2.slice();
    plus[k] += eps;
    minus[k] -= eps;
    assertAlmostEquals(g2[k], (f(l, u, plus) - f(l, u, minus)) / (2 * eps), 2e-3, `w2[${k}]`);
  }
});

Deno.test("DDTB's first stage: static bounds while the logits go to the regulariser; the gate after", async () => {
  const shape = [2, 4, 4, 6] as const;
  const x = tf.tensor4d(data(2 * 4 * 4 * 6, 11, 2), [...shape]);
  const { w1, w2 } = gateParams(6, 12);
  const q = Ddtb.activation(2, { percentile: 0.99, gate: { channels: 6, from: 10 } });
  const p = {
    lower: tf.scalar(-2),
    upper: tf.scalar(3),
    gate: {
      w1: tf.tensor2d(w1, [6, 32]),
      w2: tf.tensor2d(w2, [32, 2]),
      bn: Nn.batchNorm({ channels: 32 }).init(0),
    },
  };
  const observed = new Map<string, tf.Tensor>();
  const early = Nn.context("train", { step: 9, observe: (k, t) => observed.set(k, t) });
  const staticQ = await values(Ddtb.quant(x, p.lower, p.upper, 2));
  assertEquals(await values(q.apply(p, x, { ...early, path: "l" })), staticQ);
  assert(observed.has("l.aq.gate"), "the first stage observes the gate's logits");
  const late = await values(q.apply(p, x, { ...Nn.context("train", { step: 10 }), path: "l" }));
  assert(late.some((v, i) => v !== staticQ[i]), "the gate scales the bounds from its step on");
  const term = Ddtb.gateTerm(10);
  assertEquals([term.weight(9), term.weight(10)], [1, 0]);
  const t = await values(term.loss(observed));
  const lg = await values(observed.get("l.aq.gate")!);
  assertAlmostEquals(t[0], lg.reduce((a, v) => a + v * v, 0) / lg.length, 1e-6);
  assertEquals(Ddtb.gateStep(60000), 5000, "from 5/60 of the schedule");
});

Deno.test("DAQ weights and activations equal the port of quantize.py, both branches (2, 3, 4 bits)", async () => {
  const w = data(3 * 3 * 8 * 8, 13, 0.05);
  const shape = [2, 5, 6, 8] as const;
  const x = data(2 * 5 * 6 * 8, 14, 2);
  for (const b of BITS) {
    const qw = await values(Daq.weight(b).apply({}, tf.tensor1d(w), noCtx));
    close(qw, Official.daqWeight(w, b), 1e-5, `weight ${b}`);
    const qx = await values(Daq.activation(b).apply({}, tf.tensor4d(x, [...shape]), noCtx));
    close(qx, Official.daqActivation(x, shape, b, 4), 1e-5, `activation ${b}`);
    const q32 = await values(Daq.activation(b, 32).apply({}, tf.tensor4d(x, [...shape]), noCtx));
    close(q32, Official.daqActivation(x, shape, b, 32), 1e-5, `activation ${b}, σ unquantized`);
  }
  assertEquals(Daq.GAUSSIAN_STEPS[2 - 1], 1.596, "the 2-bit step (bits − 1 indexing)");
});

Deno.test("DAQ's post-ReLU branch on a real post-ReLU tensor (esrgan-slim's first conv on a photo)", async () => {
  const { params } = await Pretrained.load("esrgan-slim", 4);
  const img = Image.crop(await Image.read(`${Data.embedded.eval}butterfly.png`), 60, 60, 24, 20);
  const flat = Tree.flatten(params);
  const x = tf.tidy(() =>
    tf.relu(tf.add(
      tf.conv2d(Data.imageTensor(img), flat.get("sfe1.weight") as tf.Tensor4D, 1, "same"),
      flat.get("sfe1.bias")!,
    ))
  );
  const xs = await values(x);
  assertEquals(Math.min(...xs), 0, "a ReLU output has zeros");
  const shape = x.shape as [number, number, number, number];
  for (const b of BITS) {
    const got = await values(Daq.activation(b).apply({}, x, noCtx));
    close(got, Official.daqActivation(xs, shape, b, 4), 1e-5, `post-ReLU ${b}`);
    // NOTE: not all ≥ 0: a channel whose quantized σ comes out ≤ 0 gets t = (2^b/2 − 0.5)·Δ < 0
    // everywhere (the official code does the same).
  }
  // The identity gradient (`quantized_x.detach() + x - x.detach()`).
  const r = tf.randomNormal(shape, 0, 1, "float32", 3);
  const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(Daq.activation(2).apply({}, t, noCtx), r)))(x);
  assertEquals(await values(g), await values(r));
  Tree.dispose(params);
});

/** The quantized layers of a method on a small model of a family, by what they quantize. */
function placed(method: string, arch: "edsr" | "rdn") {
  const recipe = Recipe.parse({
    name: "p",
    model: {
      arch,
      scale: 2,
      options: arch === "edsr"
        ? { numFeat: 8, numBlock: 2 }
        : { numFeat: 8, numBlock: 2, numConv: 3, growRate: 4 },
    },
    method: method === "ddtb" ? Ddtb.method({ dynamic: [] }) : method as "odm",
    quant: { wbits: 2, abits: 2 },
    train: { steps: 1 },
    decisions: {},
  });
  const layers = Quant.layers(Registry.quantize(recipe, Registry.architecture(recipe.model)));
  const kind = (l: (typeof layers)[number]) =>
    `${l.layer.inner.kind}:${l.layer.spec.weight ? "w" : ""}${l.layer.spec.input ? "a" : ""}`;
  return layers.map((l) => `${l.path}=${kind(l)}`);
}

Deno.test("placement: PAMS and DDTB quantize in the data path as their code does; DAQ as its code", () => {
  // EDSR (PAMS_ResBlock): conv1 weights only, conv2 weights + input, the skip and body output.
  const edsr = ["conv1=conv2d:w", "conv2=conv2d:wa", "skip=point:a", "out=point:a"];
  for (const m of ["pams", "ddtb"]) {
    assertEquals(
      placed(m, "edsr"),
      [0, 1].flatMap((i) => edsr.map((e) => `body.blocks.${i}.${e}`)),
      m,
    );
  }
  assertEquals(placed("daq", "edsr"), placed("odm", "edsr"));
  assertEquals(placed("odm", "edsr").length, 4);
  // RDN (PAMS_RDB, PAMS_RDB_Conv_in, PAMS_RDN): the block input, the dense steps after the first,
  // LFF with its input, GFF's 1×1 with its input and its 3×3 weights only.
  const rdb = (i: number) => [
    `rdbs.${i}.convs.0=conv2d:w`,
    `rdbs.${i}.convs.in1=point:a`,
    `rdbs.${i}.convs.1=conv2d:w`,
    `rdbs.${i}.convs.in2=point:a`,
    `rdbs.${i}.convs.2=conv2d:w`,
    `rdbs.${i}.lff=conv2d:wa`,
    `rdbs.${i}.input=point:a`,
  ];
  assertEquals(placed("pams", "rdn"), [...rdb(0), ...rdb(1), "gff.0=conv2d:wa", "gff.1=conv2d:w"]);
  // DAQ's RDN: the dense convs only (LFF and GFF are FP32 in its model/rdn.py).
  assertEquals(placed("daq", "rdn").every((p) => /convs\.\d=conv2d:wa$/.test(p)), true);
});

Deno.test("DDTB picks the int(ratio·L) layers with the largest var(batch max) + var(batch min)", async () => {
  const recipe = Recipe.parse({
    name: "d",
    model: { arch: "edsr", scale: 2, options: { numFeat: 8, numBlock: 2 } },
    method: "ddtb",
    quant: { wbits: 2, abits: 2 },
    train: { steps: 1, batch: 2, patch: 8, calibrationBatches: 4 },
  });
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const ds = await Effect.runPromise(
    Data.load(new URL("./fixtures/tiny/", import.meta.url).pathname, 2),
  );
  const resolved = await Effect.runPromise(Registry.resolve(recipe, built, ds));
  const dynamic = resolved.decisions!.dynamic as string[];
  // 6 activation quantizers (each block's conv2 input, skip and output): int(0.3·6) = 1.
  assertEquals(dynamic.length, Math.floor(0.3 * 6));
  // The oracle: the same statistics gathered here, the same ranking.
  const statics = Registry.quantize(Recipe.parse({ ...recipe, decisions: { dynamic: [] } }), built);
  const maxes = new Map<string, number[]>(), mins = new Map<string, number[]>();
  const batchOpts = Calibration.sampling({ batch: 2, patch: 8, seed: 0 });
  for (let i = 0; i < 4; i++) {
    const b = Data.batch(ds, batchOpts, i);
    const stats: Array<[string, tf.Tensor]> = [];
    tf.tidy(() => {
      statics.apply(
        built.params,
        Data.tensors(b).lr,
        Nn.context("calibrate", {
          tap: (t) => stats.push([t.path, tf.keep(tf.stack([tf.max(t.x), tf.min(t.x)]))]),
        }),
      );
    });
    for (const [p, t] of stats) {
      const [mx, mn] = await values(t);
      t.dispose();
      if (!Quant.layers(statics).find((l) => l.path === p)?.layer.spec.input) continue;
      maxes.set(p, [...(maxes.get(p) ?? []), mx]);
      mins.set(p, [...(mins.get(p) ?? []), mn]);
    }
  }
  const v = (xs: number[]) => {
    const m = xs.reduce((a, b) => a + b, 0) / xs.length;
    return xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length;
  };
  const ranked = [...maxes.keys()].sort((a, b) =>
    v(maxes.get(b)!) + v(mins.get(b)!) - (v(maxes.get(a)!) + v(mins.get(a)!))
  );
  assertEquals(ranked.length, 6);
  assertEquals(new Set(dynamic), new Set(ranked.slice(0, 1)));
  Tree.dispose(built.params);
});

Deno.test("Table 6, EDSR ×4 W2A2 at 1920×1080 from the model walk: DDTB and DAQ within 1% of the paper", () => {
  const fullHd = { outputHeight: 1080, outputWidth: 1920, scale: 4 };
  const cost = (method: Recipe.Input["method"], decisions = {}) => {
    const recipe = Recipe.parse({
      name: "c",
      model: { arch: "edsr", scale: 4 },
      method,
      quant: { wbits: 2, abits: 2 },
      train: { steps: 1 },
      decisions,
    });
    return Cost.of(Registry.quantize(recipe, Registry.architecture(recipe.model)), fullHd);
  };
  // DDTB: int(0.3·48) = 14 gated quantizers (which ones does not change the count: all 64-wide).
  const acts = placed("ddtb", "edsr").length; // a 2-block model: the 16-block one has 8× more
  assertEquals(acts, 8);
  const dynamic = Array.from({ length: 16 }, (_, i) => `body.blocks.${i}.conv2`).slice(0, 14);
  const ddtb = cost(Ddtb.method({ dynamic }), { dynamic });
  const daq = cost("daq");
  const within = (a: number, e: number, what: string) =>
    assertLess(Math.abs(a / e - 1), 0.01, `${what}: ${a.toFixed(2)} vs the paper's ${e}`);
  within(ddtb.storageK, 413.6, "DDTB storage (K)");
  within(ddtb.bitopsT, 215.1, "DDTB BitOPs (T)");
  within(daq.storageK, 411.7, "DAQ storage (K)");
  within(daq.bitopsT, 215.6, "DAQ BitOPs (T)");
  // The comparison's methods are all built in and rebuilt from their names.
  for (const [k, m] of Object.entries(Methods.comparison)) {
    assertEquals(Methods.byName(m.name, m.options)?.label, m.label, k);
  }
});
