/**
 * The packed low-bit file (lib/Packed.ts): codes pack densely and back for every bit-width; a
 * trained-and-calibrated model written and read back computes its fake-quant forward bit for
 * bit (the dequantized weights are the ones the forward uses); any safetensors reader lists it;
 * EDSR-baseline ×4 W2A2 is within 2% of `deno task cost`'s storage (411.7K words ≈ 1.65 MB);
 * damaged files are refused naming the file and the field.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import * as Cost from "../lib/Cost.ts";
import * as Nn from "../lib/Nn.ts";
import * as Packed from "../lib/Packed.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Safetensors from "../lib/Safetensors.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import * as Deploy from "./_deploy.ts";
import "./_setup.ts";

Deno.test("codes of 1–8 bits pack little-endian and back; 3-bit codes cross bytes", () => {
  // 3-bit codes 1, 2, 3, 4, 5, 6, 7, 0 → bits 001 010 011 100 101 110 111 000, low first:
  // byte 0 = 1 | 2<<3 | (3 & 3)<<6 = 0xd1, byte 1 = 3>>2 | 4<<1 | 5<<4 | (6 & 1)<<7 = 0x58, …
  assertEquals(Array.from(Packed.packCodes([1, 2, 3, 4, 5, 6, 7, 0], 3)), [0xd1, 0x58, 0x1f]);
  for (let bits = 1; bits <= 8; bits++) {
    const n = 1000 + bits;
    const codes = Uint8Array.from({ length: n }, (_, i) => (i * 2654435761) % 2 ** bits);
    const packed = Packed.packCodes(codes, bits);
    assertEquals(packed.length, Math.ceil((n * bits) / 8));
    assertEquals(Array.from(Packed.unpackCodes(packed, bits, n)), Array.from(codes));
  }
});

async function forward(model: Nn.AnyLayer, params: Params, seed: number): Promise<Float32Array> {
  const x = tf.randomUniform([1, 19, 23, 3], 0, 255, "float32", seed);
  const y = tf.tidy(() => model.apply(params, x, Nn.context("eval")));
  const v = (await y.data()) as Float32Array;
  tf.dispose([x, y]);
  return v;
}

const subAt = (p: Params, path: string): Params =>
  path.split(".").reduce((n, k) => Tree.sub(n, k), p);

async function roundTrip(b: Deploy.Built) {
  const bytes = await Packed.encode({
    model: b.model,
    params: b.params,
    recipe: Recipe.toJSON(b.recipe),
    arch: b.recipe.model.arch,
    scale: b.recipe.model.scale,
    options: b.recipe.model.options as Record<string, number>,
  });
  const loaded = await Packed.decode(bytes, "round-trip.qsr.safetensors");
  // Every quantized layer: the weight the fake-quant forward uses is the same, bit for bit.
  const before = Quant.layers(b.model), after = Quant.layers(loaded.model);
  assertEquals(after.map((l) => l.path), before.map((l) => l.path));
  for (const [i, { path, layer }] of before.entries()) {
    const q = layer.spec.weight, q2 = after[i].layer.spec.weight;
    if (!q || q.bits === 32) continue;
    const p = subAt(b.params, path), p2 = subAt(loaded.params, path);
    const w = tf.tidy(() => q.apply((p.wq ?? {}) as Params, Tree.leaf(p, "weight")));
    const w2 = tf.tidy(() => q2!.apply((p2.wq ?? {}) as Params, Tree.leaf(p2, "weight")));
    assertEquals(Array.from(await w2.data()), Array.from(await w.data()), `${path}: weights`);
    tf.dispose([w, w2]);
  }
  // And the whole forward.
  assertEquals(
    Array.from(await forward(loaded.model, loaded.params, 3)),
    Array.from(await forward(b.model, b.params, 3)),
  );
  Tree.dispose(loaded.params);
  return bytes;
}

for (const arch of ["edsr", "rdn", "swinir"] as const) {
  Deno.test(`a W2A2 ${arch} reads back from the packed file with the same forward, bit for bit`, async () => {
    const b = await Deploy.built(Deploy.small[arch]);
    const bytes = await roundTrip(b);
    // Any safetensors reader lists it: codes as U8, ranges as F32 scalars, metadata strings.
    const st = Safetensors.decode(bytes, "x");
    assertEquals(st.metadata.format, Packed.FORMAT);
    assertEquals(st.metadata.arch, arch);
    const codes = [...st.tensors].filter(([k]) => k.endsWith(".weight.codes"));
    assertEquals(codes.length, Quant.layers(b.model).length);
    for (const [, t] of codes) assertEquals(t.dtype, "U8");
    Tree.dispose(b.params);
  });
}

Deno.test("W4A32 and W32A4 EDSR (one side full precision) read back bit for bit", async () => {
  for (const quant of [{ wbits: 4, abits: 32 }, { wbits: 32, abits: 4 }]) {
    const b = await Deploy.built({ ...Deploy.small.edsr, quant });
    await roundTrip(b);
    Tree.dispose(b.params);
  }
});

Deno.test("the default W4A4 model reads back bit for bit", async () => {
  const b = await Deploy.defaultModel();
  await roundTrip(b);
  Tree.dispose(b.params);
});

Deno.test("EDSR-baseline ×4 W2A2: the packed file is within 2% of deno task cost's storage", async () => {
  const b = await Deploy.built({
    name: "edsr-baseline",
    model: { arch: "edsr", scale: 4 },
    quant: { wbits: 2, abits: 2 },
    train: { steps: 0 },
  });
  const bytes = await Packed.encode({
    model: b.model,
    params: b.params,
    recipe: Recipe.toJSON(b.recipe),
    arch: "edsr",
    scale: 4,
    options: {},
  });
  const cost = Cost.of(b.model, { outputHeight: 1080, outputWidth: 1920, scale: 4 });
  const costBytes = cost.storageK * 4000;
  console.log(
    `EDSR W2A2: file ${bytes.length} bytes, cost ${cost.storageK.toFixed(1)}K = ${costBytes} bytes`,
  );
  assertLess(Math.abs(bytes.length / costBytes - 1), 0.02);
  assert(bytes.length < 1.7e6, `${bytes.length} bytes`);
  Tree.dispose(b.params);
});

Deno.test("damaged packed files are refused, naming the file and field", async () => {
  const b = await Deploy.built(Deploy.small.edsr);
  const bytes = await Packed.encode({
    model: b.model,
    params: b.params,
    recipe: Recipe.toJSON(b.recipe),
    arch: "edsr",
    scale: 2,
    options: b.recipe.model.options as Record<string, number>,
  });
  Tree.dispose(b.params);
  await assertRejects(
    () => Packed.decode(bytes.subarray(0, bytes.length - 10), "cut.qsr.safetensors"),
    Packed.PackedError,
    "cut.qsr.safetensors: truncated",
  );
  // Rewrite the header: a layer's codes missing, the format renamed.
  const h = Safetensors.parseHeader(bytes, "x");
  const data = bytes.subarray(h.dataStart);
  const rewrite = (edit: (json: Record<string, unknown>) => void) => {
    const json = JSON.parse(new TextDecoder().decode(bytes.subarray(8, h.dataStart)));
    edit(json);
    const head = new TextEncoder().encode(JSON.stringify(json));
    const out = new Uint8Array(8 + head.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
    out.set(head, 8);
    out.set(data, 8 + head.length);
    return out;
  };
  await assertRejects(
    () =>
      Packed.decode(
        rewrite((j) => ((j.__metadata__ as Record<string, string>).format = "other")),
        "f",
      ),
    Packed.PackedError,
    "f: not a qat-sr-packed v1 file",
  );
  await assertRejects(
    () =>
      Packed.decode(
        rewrite((j) => {
          const m = j.__metadata__ as Record<string, string>;
          m.layers = m.layers.replace('"bits":2', '"bits":3');
        }),
        "g",
      ),
    Packed.PackedError,
    "W3A2",
  );
});
