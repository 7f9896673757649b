/**
 * DDTB (dynamic dual trainable bounds) against a float64 scalar reference: static bounds are
 * Eq. 1; a gated layer quantizes each image over its own bounds, scaled by the gate computed
 * from that image alone (the same output whether the image is alone or in a batch); the gate's
 * gradients match finite differences of the STE surrogate; the dynamic layers are picked from
 * data; and `Cost.of` charges the gate's storage and arithmetic.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertNotEquals,
  assertThrows,
} from "@std/assert";
import * as Baselines from "../lib/Baselines.ts";
import * as Cost from "../lib/Cost.ts";
import * as Data from "../lib/Data.ts";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";
import { roundHalfEven, values } from "./_setup.ts";

const tinyDir = new URL("./fixtures/tiny/", import.meta.url).pathname;

type Img = number[][][]; // H × W × C
const imgA: Img = [[[0.1, 5], [0.7, -2]], [[1.9, 3.3], [0.4, 8]], [[-0.6, 1], [2.2, 0.5]]];
const imgB: Img = [[[10, -1], [13, -0.2]], [[7.5, -3], [9, -0.7]], [[21, 0.4], [11, 0.1]]];

/** Eq. 1 in float64: `round((clip(x, l, u) − l)/s)·s + l`, `s = (u − l)/(2^b − 1)`. */
function eq1(x: number, l: number, u: number, bits: number): number {
  const s = (u - l) / (2 ** bits - 1);
  return roundHalfEven((Math.min(Math.max(x, l), u) - l) / s) * s + l;
}

interface Gate {
  w1: number[][];
  b1: number[];
  w2: number[][];
  b2: number[];
}

/** The gate in float64: spatial mean → FC → ReLU → FC → 2·sigmoid, `[s_u, s_l]`. */
function gateRef(img: Img, g: Gate): [number, number] {
  const c = img[0][0].length;
  const ctx = Array.from({ length: c }, (_, k) => {
    const all = img.flat().map((px) => px[k]);
    return all.reduce((a, b) => a + b, 0) / all.length;
  });
  const hid = g.b1.map((b, j) => Math.max(0, b + ctx.reduce((a, v, k) => a + v * g.w1[k][j], 0)));
  const z = g.b2.map((b, o) => b + hid.reduce((a, h, j) => a + h * g.w2[j][o], 0));
  return [2 / (1 + Math.exp(-z[0])), 2 / (1 + Math.exp(-z[1]))];
}

/** The bounds image `img` is quantized over: `[s_l·l, max(s_u·u, s_l·l + ε)]`. */
function boundsRef(img: Img, g: Gate, l: number, u: number): [number, number] {
  const [su, sl] = gateRef(img, g);
  return [sl * l, Math.max(su * u, sl * l + 1e-6)];
}

/** A gate with non-trivial second layer (deterministic), on 2 channels. */
async function gateOf(q: ReturnType<typeof Baselines.ddtb>) {
  const d = q.defaults();
  const h = Baselines.DDTB_HIDDEN;
  const w2 = Array.from({ length: h }, (_, j) => [0.05 * Math.sin(j + 1), -0.04 * Math.cos(2 * j)]);
  const g: Gate = {
    w1: (await d.gate!.w1.array()) as number[][],
    b1: Array.from({ length: h }, (_, j) => 0.1 * ((j % 5) - 2)),
    w2,
    b2: [0.3, -0.2],
  };
  tf.dispose([...Tree.flatten(d as unknown as Tree.Params).values()]);
  return g;
}

const paramsOf = (g: Gate, l: number, u: number): Baselines.DdtbParams => ({
  lower: tf.scalar(l),
  upper: tf.scalar(u),
  gate: {
    w1: tf.tensor2d(g.w1),
    b1: tf.tensor1d(g.b1),
    w2: tf.tensor2d(g.w2),
    b2: tf.tensor1d(g.b2),
  },
});

Deno.test("DDTB static layer: Eq. 1 over the learnable [l, u] (scalar reference)", async () => {
  for (const bits of [2, 3, 4]) {
    const q = Baselines.ddtb(bits);
    const [l, u] = [-0.45, 4.1];
    const x = [imgA, imgB];
    const got = await values(q.apply({ lower: tf.scalar(l), upper: tf.scalar(u) }, tf.tensor4d(x)));
    x.flat(3).forEach((v, i) => assertAlmostEquals(got[i], eq1(v, l, u, bits), 1e-4, `${bits}b`));
  }
});

Deno.test("DDTB gated layer: each image over its own gate-scaled bounds, alone or in a batch", async () => {
  const bits = 2;
  const q = Baselines.ddtb(bits, { gate: { channels: 2 } });
  const g = await gateOf(q);
  const [l, u] = [-0.8, 6];
  const p = paramsOf(g, l, u);
  // Through a wrapped 1×1 identity conv in eval mode, as at evaluation time.
  const layer = Quant.wrap({ input: q })(Nn.conv2d({ in: 2, out: 2, kernel: 1 }));
  const params = { weight: tf.tensor4d([1, 0, 0, 1], [1, 1, 2, 2]), bias: tf.zeros([2]), aq: p };
  const run = (imgs: Img[]) => values(layer.apply(params, tf.tensor4d(imgs), Nn.context("eval")));
  const both = await run([imgA, imgB]);
  const [a, b] = [await run([imgA]), await run([imgB])];
  const [bA, bB] = [boundsRef(imgA, g, l, u), boundsRef(imgB, g, l, u)];
  imgA.flat(2).forEach((v, i) => assertAlmostEquals(both[i], eq1(v, ...bA, bits), 1e-4, `A${i}`));
  imgB.flat(2).forEach((v, i) =>
    assertAlmostEquals(both[12 + i], eq1(v, ...bB, bits), 1e-4, `B${i}`)
  );
  assertEquals(a, both.slice(0, 12));
  assertEquals(b, both.slice(12));
  // The two images really get different ranges, and a static quantizer would differ.
  assertGreater(Math.abs(bA[1] - bB[1]), 1e-2);
  const fixed = await values(
    Baselines.ddtb(bits).apply({ lower: p.lower, upper: p.upper }, tf.tensor4d([imgB])),
  );
  assertGreater(Math.max(...fixed.map((v, i) => Math.abs(v - b[i]))), 1e-2);
});

Deno.test("DDTB gate at initialisation scales by exactly 1: the layer starts static", async () => {
  const q = Baselines.ddtb(3, { gate: { channels: 2 } });
  const d = q.defaults();
  const p = { ...d, lower: tf.scalar(-1), upper: tf.scalar(9) };
  const x = tf.tensor4d([imgA, imgB]);
  assertEquals(await values(Baselines.gateScales(d.gate!, x)), [1, 1, 1, 1]);
  assertEquals(await values(q.apply(p, x)), await values(Baselines.ddtb(3).apply(p, x)));
});

Deno.test("DDTB gradients of l, u and the gate match finite differences of the STE surrogate", async () => {
  const bits = 2;
  const q = Baselines.ddtb(bits, { gate: { channels: 2 } });
  const g = await gateOf(q);
  const [l, u] = [-0.8, 6];
  const imgs = [imgA, imgB];
  const weights = imgs.flat(3).map((_, i) => 0.2 + 0.05 * (i % 7));
  // The surrogate: clip(x, l_n, u_n) + r·s_n with the rounding residual r frozen at the base.
  const residuals = imgs.map((img) => {
    const [ln, un] = boundsRef(img, g, l, u);
    const s = (un - ln) / (2 ** bits - 1);
    return img.flat(2).map((v) => {
      const t = (Math.min(Math.max(v, ln), un) - ln) / s;
      return roundHalfEven(t) - t;
    });
  });
  const surrogate = (gg: Gate, lv: number, uv: number) => {
    let sum = 0, k = 0;
    imgs.forEach((img, n) => {
      const [ln, un] = boundsRef(img, gg, lv, uv);
      const s = (un - ln) / (2 ** bits - 1);
      img.flat(2).forEach((v, i) => {
        sum += weights[k++] * (Math.min(Math.max(v, ln), un) + residuals[n][i] * s);
      });
    });
    return sum;
  };
  const p = paramsOf(g, l, u);
  const [dl, du, dw2, db2] = tf.grads((lo, up, w2, b2) =>
    tf.sum(tf.mul(
      q.apply(
        { lower: lo as tf.Scalar, upper: up as tf.Scalar, gate: { ...p.gate!, w2, b2 } } as never,
        tf.tensor4d(imgs),
      ),
      tf.tensor4d(weights, [2, 3, 2, 2]),
    ))
  )([p.lower, p.upper, p.gate!.w2, p.gate!.b2]);
  const h = 1e-6;
  const fd = (f: (e: number) => number) => (f(h) - f(-h)) / (2 * h);
  const tol = (v: number) => 1e-3 * (1 + Math.abs(v));
  const close = (an: number, num: number, what: string) =>
    assert(Math.abs(an - num) < tol(num), `${what}: analytic ${an} vs finite difference ${num}`);
  close((await values(dl))[0], fd((e) => surrogate(g, l + e, u)), "∂/∂l");
  close((await values(du))[0], fd((e) => surrogate(g, l, u + e)), "∂/∂u");
  const gb2 = await values(db2);
  for (const o of [0, 1]) {
    const shifted = (e: number) => ({ ...g, b2: g.b2.map((b, k) => (k === o ? b + e : b)) });
    close(gb2[o], fd((e) => surrogate(shifted(e), l, u)), `∂/∂b2[${o}]`);
  }
  const gw2 = (await dw2.array()) as number[][];
  for (const [j, o] of [[0, 0], [3, 1], [17, 0]]) {
    const shifted = (e: number) => ({
      ...g,
      w2: g.w2.map((row, jj) => row.map((v, oo) => (jj === j && oo === o ? v + e : v))),
    });
    close(gw2[j][o], fd((e) => surrogate(shifted(e), l, u)), `∂/∂w2[${j}][${o}]`);
  }
  assert(gb2.some((v) => Math.abs(v) > 1e-3), "the gate receives a gradient");
});

Deno.test("DDTB's variability score, by hand", () => {
  // max: 2 and 4 (mean 3, std 1); min: 0 and 0 (std 0): (1 + 0) / (3 − 0).
  assertAlmostEquals(Baselines.rangeVariability({ max: [2, 4], min: [0, 0] }), 1 / 3, 1e-12);
  // The same spread on a range ten times wider scores ten times lower.
  assertAlmostEquals(Baselines.rangeVariability({ max: [29, 31], min: [-1, 1] }), 2 / 30, 1e-12);
  assertEquals(Baselines.rangeVariability({ max: [1, 1], min: [1, 1] }), 0);
});

const ddtbRecipe = (dynamicLayers?: string[]) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 2 } },
    quant: { wbits: 2, abits: 2, weightRange: "pams", activationRange: "ddtb", dynamicLayers },
    train: { steps: 1, batch: 2, patch: 6, calibrationBatches: 2 },
    data: { train: tinyDir, eval: tinyDir },
  });

Deno.test("DDTB picks its dynamic layers from data; the recipe records them; bad paths are named", async () => {
  const recipe = ddtbRecipe();
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const ds = await Effect.runPromise(Data.load(tinyDir, 2));
  const resolved = await Effect.runPromise(Registry.resolve(recipe, built, ds));
  const again = await Effect.runPromise(Registry.resolve(recipe, built, ds));
  const all = Quant.layers(Quant.quantize(built.model, built.placement(Recipe.quantizers(recipe)!)))
    .map((l) => l.path);
  assertEquals(all.length, 4);
  const chosen = resolved.quant.dynamicLayers!;
  assertEquals(chosen.length, Math.ceil(0.3 * 4));
  assertEquals(chosen, again.quant.dynamicLayers, "deterministic");
  assertEquals(chosen, all.filter((p) => chosen.includes(p)), "forward order");
  // The quantized model has a gate exactly there.
  const model = Registry.quantize(resolved, built);
  const gated = Quant.layers(model).filter((l) => l.layer.spec.input!.name.includes("gate"));
  assertEquals(gated.map((l) => l.path), chosen);
  const init = Tree.flatten(model.init(0));
  assert([...init.keys()].some((k) => k === `${chosen[0]}.aq.gate.w2`));
  assert(Quant.isQuantizerParam(`${chosen[0]}.aq.gate.w2`), "gate parameters train with lrQuant");
  Tree.dispose(Tree.unflatten(init));
  Tree.dispose(built.params);
  // Errors name what is wrong.
  const arch = Registry.architecture(recipe.model);
  const e = assertThrows(() => Registry.quantize(ddtbRecipe(["head"]), arch), Error);
  assert(e.message.includes(`"head" is not a quantized layer`), e.message);
  assertThrows(() => Registry.quantize(recipe, arch), Error, "dynamicLayers is not set");
  const bad = assertThrows(() =>
    Recipe.parse({
      ...recipe,
      quant: { ...recipe.quant, activationRange: "learnable", dynamicLayers: ["head"] },
    })
  );
  assert(String(bad).includes("recipe.quant.dynamicLayers"), String(bad));
});

Deno.test("Cost charges DDTB's gates: more storage and BitOPs than ODM, by the gate's own count", () => {
  const arch = Registry.architecture({ arch: "edsr", scale: 2, options: {} });
  const size = { outputHeight: 64, outputWidth: 64, scale: 2 };
  const odm = Cost.of(
    Registry.quantize(
      Recipe.parse({
        ...ddtbRecipe(),
        model: { arch: "edsr", scale: 2 },
        quant: { wbits: 2, abits: 2 },
      }),
      arch,
    ),
    size,
  );
  const gatedPaths = ["body.blocks.0.conv1", "body.blocks.5.conv2"];
  const ddtb = Cost.of(
    Registry.quantize(
      Recipe.parse({ ...ddtbRecipe(gatedPaths), model: { arch: "edsr", scale: 2 } }),
      arch,
    ),
    size,
  );
  const staticOnly = Cost.of(
    Registry.quantize(Recipe.parse({ ...ddtbRecipe([]), model: { arch: "edsr", scale: 2 } }), arch),
    size,
  );
  const c = 64, h = Baselines.DDTB_HIDDEN;
  const gateParams = c * h + h + 2 * h + 2;
  assertAlmostEquals((ddtb.storageK - staticOnly.storageK) * 1000, 2 * gateParams, 1e-9);
  const pixels = 32 * 32;
  const gateFlops = pixels * c + c + (2 * c * h + h) + (4 * h + 2) + 8 + 2;
  assertEquals(ddtb.flops - staticOnly.flops, 2 * gateFlops);
  assertGreater(ddtb.storageK, odm.storageK);
  assertGreater(ddtb.bitopsT, odm.bitopsT);
  assertNotEquals(ddtb.bitops, staticOnly.bitops);
});
