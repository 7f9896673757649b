/**
 * safetensors (lib/Safetensors.ts): the hand-written fixtures of make_torch_fixture.py read as
 * PyTorch wrote them (F16 and BF16 of bfloat16-exact weights equal the F32 file), encode and
 * decode round-trip, and every malformed header is refused naming the file and the field.
 */
import { assertEquals, assertThrows } from "@std/assert";
import * as Safetensors from "../lib/Safetensors.ts";

const DIR = new URL("./fixtures/torch/", import.meta.url).pathname;

Deno.test("F32, F16 and BF16 files of the same weights decode to the same values", async () => {
  const f32 = await Safetensors.read(`${DIR}edsr_basicsr_x4.safetensors`);
  assertEquals(f32.metadata, { format: "pt" });
  for (const f of ["edsr_basicsr_x4_f16.safetensors", "edsr_basicsr_x4_bf16.safetensors"]) {
    const other = await Safetensors.read(`${DIR}${f}`);
    assertEquals([...other.tensors.keys()], [...f32.tensors.keys()]);
    for (const [k, t] of other.tensors) {
      assertEquals(t.dtype, f.includes("bf16") ? "BF16" : "F16");
      assertEquals(Array.from(t.values), Array.from(f32.tensors.get(k)!.values), `${f}: ${k}`);
    }
  }
  // The SwinIR file keeps its int64 relative_position_index buffers exactly.
  const swin = await Safetensors.read(`${DIR}swinir_x2.safetensors`);
  const idx = swin.tensors.get("layers.0.residual_group.blocks.0.attn.relative_position_index")!;
  assertEquals(idx.dtype, "I64");
  assertEquals([idx.values[0], idx.values[1], idx.values[15]], [24, 23, 0]);
});

Deno.test("halves decode as IEEE binary16, subnormals and infinities included", () => {
  assertEquals([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000].map(Safetensors.halfToFloat), [
    1,
    -2,
    65504,
    2 ** -24,
    Infinity,
    -0,
  ]);
});

Deno.test("encode → decode round-trips F32 and raw U8 tensors with metadata", () => {
  const bytes = Safetensors.encode([
    ["a.weight", { dtype: "F32", shape: [2, 3], values: Float32Array.of(1, 2, 3, 4, 5, 6.5) }],
    ["a.codes", { dtype: "U8", shape: [3], raw: Uint8Array.of(7, 8, 9) }],
    ["s", { dtype: "F32", shape: [], values: Float32Array.of(-0.25) }],
  ], { format: "x", n: "3" });
  const h = Safetensors.parseHeader(bytes, "y");
  assertEquals(h.dataStart % 8, 0);
  const c = Safetensors.decode(bytes, "y");
  assertEquals(c.metadata, { format: "x", n: "3" });
  assertEquals(Array.from(c.tensors.get("a.weight")!.values), [1, 2, 3, 4, 5, 6.5]);
  assertEquals(Array.from(c.raw.get("a.codes")!), [7, 8, 9]);
  assertEquals(c.tensors.get("s")!.shape, []);
});

Deno.test("malformed files are refused, naming the file and the field", () => {
  const make = (header: unknown, data = new Uint8Array(0)) => {
    const h = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + h.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    out.set(data, 8 + h.length);
    return out;
  };
  const err = (bytes: Uint8Array, msg: string) =>
    assertThrows(
      () => Safetensors.decode(bytes, "m.safetensors"),
      Safetensors.SafetensorsError,
      msg,
    );
  err(Uint8Array.of(1, 2), "m.safetensors: shorter than the 8-byte header length");
  err(
    make({ w: { dtype: "F32", shape: [3, 4], data_offsets: [0, 40] } }, new Uint8Array(40)),
    'tensor "w": data_offsets [0, 40] hold 40 bytes, but F32 [3,4] needs 48',
  );
  err(
    make({ w: { dtype: "Q4", shape: [1], data_offsets: [0, 1] } }),
    'tensor "w": dtype "Q4" is not supported',
  );
  err(make({ __metadata__: { n: 3 } }), "__metadata__");
  err(
    make({ w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
    "truncated: the tensors need 8 bytes of data, the file has 4",
  );
  err(
    make({ a: { dtype: "U8", shape: [2], data_offsets: [2, 4] } }, new Uint8Array(4)),
    'tensor "a": data_offsets start at 2, but the previous tensor ends at 0',
  );
  err(make({ w: { dtype: "F32", shape: [2], data_offsets: [0, 8], extra: 1 } }), 'tensor "w"');
});
