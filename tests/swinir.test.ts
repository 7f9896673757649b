/**
 * SwinIR-S and its layers: linear, layer norm and window attention against hand-written
 * references, their gradients against finite differences, output shapes at every scale (with
 * and without padding to the window), the official parameter counts, the SPEC §6 placement.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess, assertThrows } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import { placement, swinir } from "../models/swinir.ts";
import { checkGradients, maxRelDiff, values } from "./_setup.ts";

const ctx = Nn.context();

/** A fixed random readout `Σ y·r`, so every output element carries gradient. */
const readout = (shape: number[], seed: number) => tf.randomNormal(shape, 0, 1, "float32", seed);

Deno.test("linear: x·W + b on the last dim of any rank; PyTorch init bound; gradients", async () => {
  const lin = Nn.linear({ in: 3, out: 2 });
  assertEquals(lin.kind, "linear");
  const p = lin.init(1);
  assertEquals(Tree.leaf(p, "weight").shape, [3, 2]);
  assert((await values(Tree.leaf(p, "weight"))).every((v) => Math.abs(v) <= 1 / Math.sqrt(3)));
  const q = { weight: tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]), bias: tf.tensor1d([0.5, -1]) };
  const y = lin.apply(q, tf.tensor3d([1, 0, -1, 2, 1, 0], [1, 2, 3]), ctx);
  assertEquals(y.shape, [1, 2, 2]);
  // [1, 0, −1]·W = [1 − 5, 2 − 6]; [2, 1, 0]·W = [2 + 3, 4 + 4]; plus the bias.
  assertEquals(await values(y), [-3.5, -5, 5.5, 7]);
  const x = tf.randomNormal([2, 3, 4, 3], 0, 1, "float32", 2);
  const r = readout([2, 3, 4, 2], 3);
  await checkGradients(
    (xx, w, b) => tf.sum(tf.mul(lin.apply({ weight: w, bias: b }, xx, ctx), r)) as tf.Scalar,
    [x, Tree.leaf(p, "weight"), Tree.leaf(p, "bias")],
    { names: ["x", "weight", "bias"] },
  );
  tf.dispose([y, x, r, q.weight, q.bias]);
  Tree.dispose(p);
  assertThrows(() => lin.apply(lin.init(0), tf.ones([2, 4]), ctx), Error, "3 input features");
  const wrong = () =>
    Nn.sequential(
      Nn.linear({ in: 3, out: 8 }),
      // @ts-expect-error an 8-feature linear cannot feed a 4-channel layer norm
      Nn.layerNorm({ channels: 4 }),
    );
  assertEquals(typeof wrong, "function");
});

Deno.test("layerNorm: normalises the last dim (biased variance, eps), weight and bias; gradients", async () => {
  const ln = Nn.layerNorm({ channels: 4 });
  const x = tf.randomNormal([2, 3, 3, 4], 1, 2, "float32", 5);
  const w = tf.randomNormal([4], 1, 0.5, "float32", 6);
  const b = tf.randomNormal([4], 0, 0.5, "float32", 7);
  const y = ln.apply({ weight: w, bias: b }, x, ctx);
  // Scalar reference, float64.
  const [xv, wv, bv] = [await values(x), await values(w), await values(b)];
  const ref = xv.map((_, k) => {
    const row = xv.slice(k - (k % 4), k - (k % 4) + 4);
    const m = row.reduce((s, v) => s + v, 0) / 4;
    const v = row.reduce((s, t) => s + (t - m) ** 2, 0) / 4;
    return ((xv[k] - m) / Math.sqrt(v + 1e-5)) * wv[k % 4] + bv[k % 4];
  });
  assertLess(maxRelDiff(await values(y), ref), 1e-5);
  const r = readout([2, 3, 3, 4], 8);
  await checkGradients(
    (xx, ww, bb) => tf.sum(tf.mul(ln.apply({ weight: ww, bias: bb }, xx, ctx), r)) as tf.Scalar,
    [x, w, b],
    { names: ["x", "weight", "bias"] },
  );
  tf.dispose([x, w, b, y, r]);
});

Deno.test("windowPartition / windowReverse / roll follow Swin's index maps", async () => {
  const x = tf.range(0, 2 * 4 * 6 * 3).reshape([2, 4, 6, 3]);
  const win = Nn.windowPartition(x, 2);
  assertEquals(win.shape, [2 * 2 * 3, 4, 3]);
  const xv = await values(x), wv = await values(win);
  // Window (b, wi, wj), token (ri, rj) is pixel (b, 2wi + ri, 2wj + rj).
  for (let k = 0; k < wv.length; k++) {
    const c = k % 3, t = Math.floor(k / 3) % 4, win_ = Math.floor(k / 12);
    const b = Math.floor(win_ / 6), wi = Math.floor((win_ % 6) / 3), wj = win_ % 3;
    const i = 2 * wi + Math.floor(t / 2), j = 2 * wj + (t % 2);
    assertEquals(wv[k], xv[((b * 4 + i) * 6 + j) * 3 + c]);
  }
  const back = Nn.windowReverse(win, 2, 4, 6);
  assertEquals(await values(back), xv);
  // torch.roll(x, -1, dim=2): y[..., j, :] = x[..., (j + 1) mod 6, :].
  const rolled = await values(Nn.roll(x, -1, 2));
  assertEquals(rolled[0], xv[3]);
  assertEquals(rolled[5 * 3], xv[0]);
  tf.dispose([x, win, back]);
});

/** Plain-JS shifted-window attention, straight from the definition (float64). */
function attentionReference(
  x: number[],
  [bs, h, w, c]: number[],
  p: { qkvW: number[]; qkvB: number[]; projW: number[]; projB: number[]; table: number[] },
  heads: number,
  ws: number,
  shift: number,
): number[] {
  const hd = c / heads, scale = hd ** -0.5;
  const at = (b: number, i: number, j: number) => ((b * h + i) * w + j) * c;
  // q, k, v of every pixel: qkv = x·W + b, channel = which·C + head·hd + d.
  const qkv = (b: number, i: number, j: number) =>
    Array.from({ length: 3 * c }, (_, o) => {
      let s = p.qkvB[o];
      for (let k = 0; k < c; k++) s += x[at(b, i, j) + k] * p.qkvW[k * 3 * c + o];
      return s;
    });
  const region = (t: number, n: number) => (t < n - ws ? 0 : t < n - shift ? 1 : 2);
  const out = new Array(x.length).fill(0);
  for (let b = 0; b < bs; b++) {
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        // Coordinates in the map rolled by −shift, window and position inside it.
        const si = (i - shift + h) % h, sj = (j - shift + w) % w;
        const qa = qkv(b, i, j);
        const keys: Array<{ kv: number[]; ri: number; rj: number; label: number }> = [];
        for (let i2 = 0; i2 < h; i2++) {
          for (let j2 = 0; j2 < w; j2++) {
            const ti = (i2 - shift + h) % h, tj = (j2 - shift + w) % w;
            if (Math.floor(ti / ws) !== Math.floor(si / ws)) continue;
            if (Math.floor(tj / ws) !== Math.floor(sj / ws)) continue;
            keys.push({
              kv: qkv(b, i2, j2),
              ri: ti % ws,
              rj: tj % ws,
              label: region(ti, h) * 3 + region(tj, w),
            });
          }
        }
        const labelA = region(si, h) * 3 + region(sj, w);
        const o = new Array(c).fill(0);
        for (let hh = 0; hh < heads; hh++) {
          const scores = keys.map((k) => {
            let s = 0;
            for (let d = 0; d < hd; d++) s += qa[hh * hd + d] * k.kv[c + hh * hd + d];
            const idx = ((si % ws) - k.ri + ws - 1) * (2 * ws - 1) + ((sj % ws) - k.rj + ws - 1);
            return s * scale + p.table[idx * heads + hh] +
              (shift > 0 && k.label !== labelA ? -100 : 0);
          });
          const mx = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - mx));
          const z = e.reduce((s, v) => s + v, 0);
          keys.forEach((k, t) => {
            for (let d = 0; d < hd; d++) o[hh * hd + d] += (e[t] / z) * k.kv[2 * c + hh * hd + d];
          });
        }
        for (let oc = 0; oc < c; oc++) {
          let s = p.projB[oc];
          for (let k = 0; k < c; k++) s += o[k] * p.projW[k * c + oc];
          out[at(b, i, j) + oc] = s;
        }
      }
    }
  }
  return out;
}

/** Window-attention parameters with a bias table large enough to matter. */
const attentionParams = (c: number, heads: number, ws: number, seed: number): Params => ({
  qkv: {
    weight: tf.randomNormal([c, 3 * c], 0, 0.7, "float32", seed),
    bias: tf.randomNormal([3 * c], 0, 0.3, "float32", seed + 1),
  },
  proj: {
    weight: tf.randomNormal([c, c], 0, 0.7, "float32", seed + 2),
    bias: tf.randomNormal([c], 0, 0.3, "float32", seed + 3),
  },
  relative_position_bias_table: tf.randomNormal(
    [(2 * ws - 1) ** 2, heads],
    0,
    1,
    "float32",
    seed + 4,
  ),
});

Deno.test("window attention (W-MSA and shifted SW-MSA with the mask) equals a loop reference", async () => {
  const [c, heads, ws] = [4, 2, 2];
  const shape = [2, 4, 6, c];
  const x = tf.randomNormal(shape, 0, 1, "float32", 11);
  for (const shift of [0, 1]) {
    const attn = Nn.windowAttention({ channels: c, heads, window: ws, shift });
    assertEquals(attn.children.map(([n]) => n), ["qkv", "proj"]);
    const p = attentionParams(c, heads, ws, 20 + shift);
    const y = tf.tidy(() => attn.apply(p, x, ctx));
    assertEquals(y.shape, shape);
    const flat = Tree.flatten(p);
    const get = async (k: string) => await values(flat.get(k)!);
    const ref = attentionReference(
      await values(x),
      shape,
      {
        qkvW: await get("qkv.weight"),
        qkvB: await get("qkv.bias"),
        projW: await get("proj.weight"),
        projB: await get("proj.bias"),
        table: await get("relative_position_bias_table"),
      },
      heads,
      ws,
      shift,
    );
    assertLess(maxRelDiff(await values(y), ref), 1e-4, `shift ${shift}`);
    y.dispose();
    Tree.dispose(p);
  }
  x.dispose();
  // The attention mask of SwinIR's calculate_mask for an 4×4 map, window 2, shift 1: the last
  // window mixes all four regions, the first one none.
  const m = Nn.shiftedWindowMask(4, 4, 2, 1);
  assertEquals([...m.slice(0, 16)], new Array(16).fill(0));
  assertEquals([...m.slice(3 * 16, 3 * 16 + 4)], [0, -100, -100, -100]);
  assertThrows(() => Nn.windowAttention({ channels: 4, heads: 3, window: 2 }), RangeError);
});

Deno.test("window attention gradients (x, qkv, proj, bias table) match finite differences", async () => {
  const [c, heads, ws] = [4, 2, 2];
  const attn = Nn.windowAttention({ channels: c, heads, window: ws, shift: 1 });
  const p = attentionParams(c, heads, ws, 40);
  const flat = Tree.flatten(p);
  const names = [...flat.keys()];
  const x = tf.randomNormal([1, 4, 4, c], 0, 1, "float32", 41);
  const r = readout([1, 4, 4, c], 42);
  await checkGradients(
    (xx, ...leaves) =>
      tf.sum(
        tf.mul(
          attn.apply(Tree.unflatten(names.map((k, i) => [k, leaves[i]] as const)), xx, ctx),
          r,
        ),
      ) as tf.Scalar,
    [x, ...flat.values()],
    { names: ["x", ...names] },
  );
  tf.dispose([x, r]);
  Tree.dispose(p);
});

Deno.test("a Swin block and an RSTB keep the shape; their gradients match finite differences", async () => {
  const block = Nn.swinBlock({ channels: 4, heads: 2, window: 2, shift: 1, mlpRatio: 2 });
  assertEquals(block.children.map(([n]) => n), ["norm1", "attn", "norm2", "mlp"]);
  const p = block.init(3);
  const flat = Tree.flatten(p);
  const x = tf.randomNormal([1, 4, 4, 4], 0, 1, "float32", 51);
  const r = readout([1, 4, 4, 4], 52);
  const checked = ["norm1.weight", "attn.qkv.bias", "mlp.fc1.weight", "mlp.fc2.bias"];
  await checkGradients(
    (xx, ...leaves) => {
      const tree = new Map(flat);
      checked.forEach((k, i) => tree.set(k, leaves[i]));
      return tf.sum(tf.mul(block.apply(Tree.unflatten(tree), xx, ctx), r)) as tf.Scalar;
    },
    [x, ...checked.map((k) => flat.get(k)!)],
    { names: ["x", ...checked], directions: 2 },
  );
  Tree.dispose(p);
  const group = Nn.rstb({ channels: 4, depth: 2, heads: 2, window: 2, mlpRatio: 2 });
  const q = group.init(0);
  assert(Tree.flatten(q).has("residual_group.blocks.1.attn.relative_position_bias_table"));
  assert(Tree.flatten(q).has("conv.weight"));
  const y = group.apply(q, x, ctx);
  assertEquals(y.shape, [1, 4, 4, 4]);
  Tree.dispose(q);
  tf.dispose([x, r, y]);
});

Deno.test("SwinIR-S output shapes at ×2, ×3, ×4, on sizes that are and are not multiples of 8", async () => {
  for (const upscale of [2, 3, 4] as const) {
    const model = swinir({ upscale });
    const p = model.init(0);
    for (const [h, w] of [[12, 12], [10, 13]]) {
      const y = tf.tidy(() =>
        model.apply(p, tf.randomUniform([1, h, w, 3], 0, 255, "float32", h), ctx)
      );
      assertEquals(y.shape, [1, h * upscale, w * upscale, 3], `×${upscale} ${h}×${w}`);
      assert((await values(y)).every(Number.isFinite));
      y.dispose();
    }
    Tree.dispose(p);
  }
});

Deno.test("SwinIR pads by reflection to the window and crops: a 5×6 input equals its padded 8×8 crop", async () => {
  // With the window at 4, a 5×6 input is reflect-padded to 8×8; padding it ourselves and
  // cropping the model's output must give the same numbers.
  const model = swinir({ upscale: 2, embedDim: 8, depths: [2], numHeads: 2, windowSize: 4 });
  const p = model.init(1);
  const x = tf.randomUniform([1, 5, 6, 3], 0, 255, "float32", 3);
  const y = tf.tidy(() => model.apply(p, x, ctx));
  const padded = tf.mirrorPad(x as tf.Tensor4D, [[0, 0], [0, 3], [0, 2], [0, 0]], "reflect");
  const yPad = tf.tidy(() => model.apply(p, padded, ctx));
  assertEquals(yPad.shape, [1, 16, 16, 3]);
  const crop = tf.slice(yPad, [0, 0, 0, 0], [1, 10, 12, 3]);
  assertLess(maxRelDiff(await values(y), await values(crop)), 1e-4);
  tf.dispose([x, y, padded, yPad, crop]);
  Tree.dispose(p);
});

Deno.test("SwinIR-S has the official model's parameter counts (910,152 / 918,267 / 929,628)", () => {
  // JingyunLiang/SwinIR models/network_swinir.py, SwinIR(upscale=s, window_size=8,
  // depths=[6,6,6,6], embed_dim=60, num_heads=[6,6,6,6], mlp_ratio=2,
  // upsampler='pixelshuffledirect'), sum(p.numel() for p in model.parameters()):
  // conv_first 1,680 + patch_embed.norm 120 + 4 × (6 × 30,810 + conv 32,460) + norm 120
  // + conv_after_body 32,460 + upsample (60·9 + 1)·3s². One Swin block: norm1 120 + bias
  // table 225·6 = 1,350 + qkv 10,980 + proj 3,660 + norm2 120 + fc1 7,320 + fc2 7,260.
  // The buffers relative_position_index and attn_mask are not parameters. Without the 24
  // bias tables (32,400) these are the 878K (×2) and 897K (×4) reported in the SwinIR paper.
  assertEquals(Nn.parameterCount(swinir({ upscale: 2 })), 910_152);
  assertEquals(Nn.parameterCount(swinir({ upscale: 3 })), 918_267);
  assertEquals(Nn.parameterCount(swinir({ upscale: 4 })), 929_628);
  assertEquals(
    Nn.parameterCount(swinir({ upscale: 2 }), (p) => !p.endsWith("relative_position_bias_table")),
    877_752,
  );
});

Deno.test("quantizing SwinIR-S at W2A2 wraps the 96 block linears and the 4 RSTB convs", () => {
  const q = {
    weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
    input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
  };
  const model = Quant.quantize(swinir({ upscale: 4 }), placement(q));
  const wrapped = Quant.layers(model).map((l) => l.path);
  assertEquals(wrapped.length, 100);
  assertEquals(wrapped.filter((p) => p.endsWith(".conv")), [
    "layers.0.conv",
    "layers.1.conv",
    "layers.2.conv",
    "layers.3.conv",
  ]);
  assertEquals(wrapped.slice(0, 4), [
    "layers.0.residual_group.blocks.0.attn.qkv",
    "layers.0.residual_group.blocks.0.attn.proj",
    "layers.0.residual_group.blocks.0.mlp.fc1",
    "layers.0.residual_group.blocks.0.mlp.fc2",
  ]);
  for (const fp of ["conv_first", "conv_after_body", "upsample.0"]) {
    assertEquals(wrapped.includes(fp), false, fp);
  }
  // 3 quantizer parameters per layer (l_a, u_a, γ_w).
  assertEquals(Nn.parameterCount(model, Quant.isQuantizerParam), 300);
});

Deno.test("a quantized SwinIR reports every wrapped layer's input, readable after the forward pass", async () => {
  const q = {
    weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
    input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
  };
  const model = Quant.quantize(
    swinir({ upscale: 2, embedDim: 8, depths: [2], numHeads: 2, windowSize: 4 }),
    placement(q),
  );
  const p = model.init(0);
  const before = tf.memory().numTensors;
  const [paths, norms] = tf.tidy(() => {
    const taps: Nn.Tap[] = [];
    const y = model.apply(
      p,
      tf.randomUniform([1, 6, 8, 3], 0, 255, "float32", 1),
      Nn.context("train", { tap: (t) => taps.push(t) }),
    );
    assertEquals(y.shape, [1, 12, 16, 3]);
    // The taps outlive the layers' own scopes: the mismatch loss reads them afterwards.
    return [taps.map((t) => t.path), tf.stack(taps.map((t) => tf.norm(tf.sub(t.x, t.q))))];
  });
  assertEquals(paths.length, 2 * 4 + 1);
  assertEquals(paths[0], "layers.0.residual_group.blocks.0.attn.qkv");
  assert((await values(norms)).every((v) => Number.isFinite(v) && v > 0));
  norms.dispose();
  assertEquals(tf.memory().numTensors, before);
  Tree.dispose(p);
});
