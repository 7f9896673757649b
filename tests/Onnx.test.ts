/**
 * ONNX protobuf writing (lib/Onnx.ts): a model encoded by hand reads back through the decoder
 * with its opset, named dimensions, initializers (UINT4/UINT2 packed raw data) and metadata;
 * low-bit packing follows the ONNX layout (first value in the low bits). ONNX Runtime itself
 * is the oracle of tests/Export.test.ts.
 */
import { assertEquals, assertThrows } from "@std/assert";
import * as Onnx from "../lib/Onnx.ts";

Deno.test("4- and 2-bit values pack two / four per byte, the first in the low bits", () => {
  assertEquals(Array.from(Onnx.packBits([1, 2, 3], 4)), [0x21, 0x03]);
  assertEquals(Array.from(Onnx.packBits([1, 2, 3, 0, 3], 2)), [0b00111001, 0b11]);
  assertEquals(Array.from(Onnx.unpackBits(Onnx.packBits([1, 2, 3, 0, 3], 2), 2, 5)), [
    1,
    2,
    3,
    0,
    3,
  ]);
  assertThrows(() => Onnx.packBits([4], 2), RangeError, "code 4 at 0 does not fit 2 bits");
});

Deno.test("an encoded model reads back: opset, dims, initializers, nodes, metadata", () => {
  const g = new Onnx.Graph();
  const w = g.initializer(
    "w.codes",
    Onnx.DataType.UINT4,
    [2, 3],
    Onnx.packBits([0, 1, 2, 3, 4, 15], 4),
  );
  const s = g.scalar(0.5);
  const same = g.scalar(0.5);
  assertEquals(same, s); // small constants are shared
  const y = g.op("DequantizeLinear", [w, s, g.code(0, Onnx.DataType.UINT4)], "dq");
  g.nodes.push({
    op: "MatMul",
    inputs: ["input", y],
    outputs: ["output"],
    name: "mm",
    attributes: { note: { string: "x" }, k: { ints: [-1, 2] } },
  });
  const bytes = Onnx.encodeModel({
    irVersion: 12,
    opset: 25,
    producer: { name: "t", version: "1" },
    graph: {
      name: "g",
      nodes: g.nodes,
      initializers: g.initializers,
      inputs: [{ name: "input", dataType: Onnx.DataType.FLOAT, dims: ["batch", 2] }],
      outputs: [{ name: "output", dataType: Onnx.DataType.FLOAT, dims: ["batch", 3] }],
    },
    metadata: { "qat-sr.arch": "edsr" },
  });
  const m = Onnx.inspect(bytes);
  assertEquals(m.irVersion, 12);
  assertEquals(m.opsets, [{ domain: "", version: 25 }]);
  assertEquals(m.inputs, [{ name: "input", dataType: 1, dims: ["batch", 2] }]);
  assertEquals(m.nodes.map((n) => n.op), ["DequantizeLinear", "MatMul"]);
  assertEquals(m.initializers.find((i) => i.name === "w.codes"), {
    name: "w.codes",
    dataType: 21,
    dims: [2, 3],
    bytes: 3,
  });
  assertEquals(m.metadata, { "qat-sr.arch": "edsr" });
  assertThrows(() => Onnx.inspect(bytes.subarray(0, 40), "cut.onnx"), Error, "cut.onnx");
});
