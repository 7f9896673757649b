/**
 * ONNX export (lib/Export.ts) against ONNX Runtime (onnxruntime-node, cpu EP): on crops of the
 * embedded evaluation photographs (several sizes through one graph: the height and width are
 * dynamic) ORT's output equals our own forward to ≤ 0.5 on 0–255 before rounding and the PSNR
 * to ±0.01 dB, for the default W4A4 model (pretrained esrgan-slim ×4, calibrated) and for
 * W2A2 EDSR, RDN and SwinIR-S. The activation Q/DQ pattern is bit-exact with Eq. 1; the weights
 * are UINT2/UINT4 codes; dynamic-range quantizers and non-Eq. 1 grids are refused by name.
 */
import * as tf from "@tensorflow/tfjs";
import * as ort from "onnxruntime-node";
import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import * as Export from "../lib/Export.ts";
import * as Image from "../lib/Image.ts";
import * as Iqa from "../lib/Iqa.ts";
import * as Nn from "../lib/Nn.ts";
import * as Onnx from "../lib/Onnx.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Resize from "../lib/Resize.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import { edsr, placement as edsrPlacement } from "../models/edsr.ts";
import * as Deploy from "./_deploy.ts";
import "./_setup.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const EVAL = [...Deno.readDirSync(`${ROOT}data/eval`)].map((e) => e.name).filter((f) =>
  f.endsWith(".png")
).sort();

/** HR crops of every eval image (sizes vary) and their bicubic LR. */
async function pairs(scale: number) {
  const out: Array<{ file: string; hr: Image.Image; lr: Image.Image }> = [];
  for (const [i, f] of EVAL.entries()) {
    const img = await Image.read(`${ROOT}data/eval/${f}`);
    const [w, h] = [(20 + 3 * (i % 3)) * scale, (18 + 2 * (i % 4)) * scale];
    const hr = Image.crop(
      img,
      Math.floor((img.width - w) / 2),
      Math.floor((img.height - h) / 2),
      w,
      h,
    );
    out.push({ file: f, hr, lr: Resize.downscale(hr, scale) });
  }
  return out;
}

const toImage = (v: Float32Array, w: number, h: number) =>
  Image.make(w, h, Uint8Array.from(v, (x) => (x > 0 ? (x < 255 ? Math.round(x) : 255) : 0)));

/** ORT's output for an LR image (HWC floats). */
async function runOrt(session: ort.InferenceSession, lr: Image.Image): Promise<Float32Array> {
  const { width: w, height: h } = lr;
  const chw = new Float32Array(3 * w * h);
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) chw[c * w * h + i] = lr.data[3 * i + c];
  }
  const out = (await session.run({ input: new ort.Tensor("float32", chw, [1, 3, h, w]) })).output;
  const [, , oh, ow] = out.dims as number[];
  const d = out.data as Float32Array;
  const hwc = new Float32Array(3 * oh * ow);
  for (let i = 0; i < oh * ow; i++) for (let c = 0; c < 3; c++) hwc[3 * i + c] = d[c * oh * ow + i];
  return hwc;
}

/** Our forward for an LR image (HWC floats). */
async function ours(model: Nn.AnyLayer, params: Params, lr: Image.Image): Promise<Float32Array> {
  const y = tf.tidy(() =>
    model.apply(params, Image.toTensor(lr).expandDims(0), Nn.context("eval"))
  );
  const v = (await y.data()) as Float32Array;
  y.dispose();
  return v;
}

async function compareWithOrt(name: string, b: Deploy.Built, opts: Export.Options = {}) {
  const ex = await Export.toOnnx(b.model, b.params, opts);
  const session = await ort.InferenceSession.create(ex.bytes, { executionProviders: ["cpu"] });
  const s = b.recipe.model.scale;
  let worst = 0, worstPsnr = 0;
  for (const p of await pairs(s)) {
    const a = await ours(b.model, b.params, p.lr);
    const o = await runOrt(session, p.lr);
    assertEquals(o.length, a.length, `${name} ${p.file}: output size`);
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - o[i]));
    const [w, h] = [p.lr.width * s, p.lr.height * s];
    const dp = Math.abs(
      Iqa.psnr(toImage(a, w, h), p.hr, { shave: s }) -
        Iqa.psnr(toImage(o, w, h), p.hr, { shave: s }),
    );
    worstPsnr = Math.max(worstPsnr, dp);
  }
  await session.release();
  console.log(
    `${name}: ORT vs ours max |Δ| ${worst.toExponential(2)} (0–255), max ΔPSNR ${
      worstPsnr.toFixed(5)
    } dB`,
  );
  assertLess(worst, 0.5, `${name}: max |ORT − ours| ${worst}`);
  assertLess(worstPsnr, 0.01, `${name}: PSNR differs by ${worstPsnr} dB`);
  return ex;
}

/** The code type of every quantized layer's weight initializer. */
function codeTypes(bytes: Uint8Array): Map<string, number> {
  const s = Onnx.inspect(bytes);
  return new Map(
    s.initializers.filter((i) => i.name.endsWith(".weight.codes")).map((i) => [i.name, i.dataType]),
  );
}

Deno.test("ORT runs the activation Q/DQ pattern bit for bit as Eq. 1", async () => {
  for (
    const grid of [{ bits: 2, lower: -0.37, upper: 1.91 }, { bits: 4, lower: 0.1, upper: 7.3 }]
  ) {
    const g = new Onnx.Graph();
    const s = Export.stepOf(grid);
    const zp = g.code(0, Onnx.DataType.UINT8);
    const d = g.op("Sub", ["input", g.scalar(grid.lower)], "aq");
    const c = g.op("Clip", [d, g.scalar(0), g.scalar(Math.fround(grid.upper - grid.lower))], "aq");
    const q = g.op("DequantizeLinear", [
      g.op("QuantizeLinear", [c, g.scalar(s), zp], "aq"),
      g.scalar(s),
      zp,
    ], "aq");
    g.nodes.push({
      op: "Add",
      inputs: [q, g.scalar(grid.lower)],
      outputs: ["output"],
      name: "out",
      attributes: {},
    });
    const bytes = Onnx.encodeModel({
      irVersion: 10,
      opset: 21,
      producer: { name: "test", version: "0" },
      graph: {
        name: "aq",
        nodes: g.nodes,
        initializers: g.initializers,
        inputs: [{ name: "input", dataType: 1, dims: ["n"] }],
        outputs: [{ name: "output", dataType: 1, dims: ["n"] }],
      },
      metadata: {},
    });
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["cpu"] });
    // Random values across and past the range, and every level's midpoint (the ties).
    const n = 20000;
    const xs = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      xs[i] = i < 2 ** grid.bits
        ? Math.fround(grid.lower + (i + 0.5) * s)
        : grid.lower - 1 + (grid.upper - grid.lower + 2) * ((i * 7919) % n) / n;
    }
    const out = (await session.run({ input: new ort.Tensor("float32", xs, [n]) })).output
      .data as Float32Array;
    // The fake-quant kernel itself (cpu or webgpu) and its float32 reference.
    const kernel = tf.tidy(() =>
      Quantizer.fakeQuant(tf.tensor1d(xs), tf.scalar(grid.lower), tf.scalar(grid.upper), grid.bits)
    );
    const k = await kernel.data();
    kernel.dispose();
    // ORT = the float32 reference exactly. The backend's kernel agrees within float32 rounding
    // of the same level, except at exact ties, where WGSL's division (not correctly rounded)
    // may land on the other side.
    for (let i = 0; i < n; i++) {
      assertEquals(out[i], Export.quantize(xs[i], grid), `x = ${xs[i]}`);
      const t = (Math.min(Math.max(xs[i], grid.lower), grid.upper) - grid.lower) / s;
      const tie = Math.abs(t - Math.floor(t) - 0.5) < 1e-4;
      if (!tie) {
        assertLess(
          Math.abs(out[i] - k[i]),
          1e-5 * (grid.upper - grid.lower),
          `x = ${xs[i]}`,
        );
      }
    }
    await session.release();
  }
});

Deno.test("the default W4A4 model (esrgan-slim ×4): ORT equals our forward", async () => {
  const b = await Deploy.defaultModel();
  const ex = await compareWithOrt("esrgan-slim W4A4", b);
  const types = codeTypes(ex.bytes);
  assertEquals(types.size, Quant.layers(b.model).length);
  for (const [name, t] of types) assertEquals(t, Onnx.DataType.UINT4, name);
  const s = Onnx.inspect(ex.bytes);
  assertEquals(s.opsets, [{ domain: "", version: 25 }]);
  assertEquals(s.inputs[0].dims, ["batch", 3, "height", "width"]);
  Tree.dispose(b.params);
});

for (const arch of ["edsr", "rdn", "swinir"] as const) {
  Deno.test(`W2A2 ${arch}: ORT equals our forward; 2-bit codes are UINT2 (UINT4 at opset 21)`, async () => {
    const b = await Deploy.built(Deploy.small[arch]);
    const ex = await compareWithOrt(`${arch} W2A2`, b);
    const types = codeTypes(ex.bytes);
    assertEquals(types.size, Quant.layers(b.model).length);
    for (const [name, t] of types) assertEquals(t, Onnx.DataType.UINT2, name);
    if (arch === "edsr") {
      const old = await compareWithOrt(`${arch} W2A2 opset 21`, b, { opset: 21 });
      for (const [name, t] of codeTypes(old.bytes)) assertEquals(t, Onnx.DataType.UINT4, name);
      await compareWithOrt(`${arch} W2A2 float pattern`, b, { activations: "float" });
    }
    Tree.dispose(b.params);
  });
}

Deno.test("an FP32 model exports FP32 initializers only, and ORT equals our forward", async () => {
  const b = await Deploy.built({ ...Deploy.small.edsr, quant: { wbits: 32, abits: 32 } });
  const ex = await compareWithOrt("edsr FP32", b);
  const s = Onnx.inspect(ex.bytes);
  assert(
    s.initializers.every((i) =>
      i.dataType === Onnx.DataType.FLOAT || i.dataType === Onnx.DataType.INT64
    ),
  );
  assertEquals(s.nodes.filter((n) => n.op === "DequantizeLinear").length, 0);
  Tree.dispose(b.params);
});

Deno.test("run-time ranges and non-Eq. 1 grids are refused, naming the layer", async () => {
  const tiny = edsr({ upscale: 2, numFeat: 4, numBlock: 1 });
  const dynamic = Quant.quantize(
    tiny,
    edsrPlacement({
      weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
      input: Quantizer.asymmetric({ bits: 2, range: Range.percentile(0.99) }),
    }),
  );
  const p1 = dynamic.init(0);
  await assertRejects(
    () => Export.toOnnx(dynamic, p1),
    Export.ExportError,
    '"body.blocks.0.conv1": its input quantizer asym2·percentile(0.99) takes its range from each input',
  );
  Tree.dispose(p1);
  // A symmetric grid with a zero level (PAMS-like): 3 levels at 2 bits, not Eq. 1's 4.
  const base = Quantizer.symmetric({ bits: 2, range: Range.max });
  const zeroLevel: Quantizer.Any = {
    ...base,
    name: "zero2·max",
    apply: (_p, w) =>
      tf.tidy(() => {
        const u = tf.max(tf.abs(w));
        return tf.mul(tf.round(tf.div(tf.clipByValue(w, -1e9, 1e9), u)), u);
      }),
  };
  const zero = Quant.quantize(
    tiny,
    edsrPlacement({
      weight: zeroLevel,
      input: Quantizer.asymmetric({ bits: 2, range: Range.learnable() }),
    }),
  );
  const p2 = zero.init(0);
  await assertRejects(() => Export.toOnnx(zero, p2), Export.ExportError, "not on the Eq. 1 grid");
  Tree.dispose(p2);
});
