/**
 * Reading torch.save files without Python (lib/Torch.ts), against the values PyTorch itself
 * wrote next to them (tests/fixtures/torch/tensors.json): views with storage offsets and
 * strides, shared storages, float16, bfloat16, int64, scalars and parameters, in the zip and
 * the legacy format, inside a wrapper dict with non-tensor entries; damaged files are named.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import * as Torch from "../lib/Torch.ts";

const DIR = new URL("./fixtures/torch/", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(`${DIR}tensors.json`)) as Record<
  string,
  { shape: number[]; values: number[] }
>;

for (const file of ["tensors.pt", "tensors_legacy.pt"]) {
  Deno.test(`${file}: every tensor equals PyTorch's values`, async () => {
    const c = await Torch.read(`${DIR}${file}`);
    assertEquals(c.format, file.includes("legacy") ? "legacy" : "zip");
    const sd = Torch.findStateDict(c.object, file);
    assertEquals(sd.key, "state_dict");
    assertEquals([...sd.tensors.keys()], Object.keys(expected));
    for (const [k, t] of sd.tensors) {
      assertEquals([...t.shape], expected[k].shape, k);
      const want = expected[k].values;
      // float32 values are exact; PyTorch printed float16/bfloat16 through float32 too.
      assertEquals(
        Array.from(t.values),
        want.map((v) => (t.dtype.startsWith("I") ? v : Math.fround(v))),
        k,
      );
    }
    assertEquals(sd.tensors.get("half")!.dtype, "F16");
    assertEquals(sd.tensors.get("bf16")!.dtype, "BF16");
    assertEquals(sd.tensors.get("long")!.dtype, "I64");
    // The wrapper's other entries survive as plain values.
    assert(c.object instanceof Map);
    assertEquals(c.object.get("epoch"), 12);
    assertEquals(c.object.get("note"), "not a tensor");
  });
}

Deno.test("the unpickler reads protocol-2 containers and names unsupported opcodes", () => {
  // {'a': [1, 2.5, None, True], 'b': (u'x', -3)} as pickle protocol 2 wrote it.
  const bytes = Uint8Array.from([
    0x80,
    0x02,
    0x7d,
    0x71,
    0x00,
    0x28,
    0x58,
    0x01,
    0x00,
    0x00,
    0x00,
    0x61,
    0x71,
    0x01,
    0x5d,
    0x71,
    0x02,
    0x28,
    0x4b,
    0x01,
    0x47,
    0x40,
    0x04,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x4e,
    0x88,
    0x65,
    0x58,
    0x01,
    0x00,
    0x00,
    0x00,
    0x62,
    0x71,
    0x03,
    0x58,
    0x01,
    0x00,
    0x00,
    0x00,
    0x78,
    0x71,
    0x04,
    0x4a,
    0xfd,
    0xff,
    0xff,
    0xff,
    0x86,
    0x71,
    0x05,
    0x75,
    0x2e,
  ]);
  const v = Torch.unpickle(bytes).value as Map<string, unknown>;
  assertEquals(v.get("a"), [1, 2.5, null, true]);
  assertEquals(v.get("b"), ["x", -3]);
  assertThrows(
    () => Torch.unpickle(Uint8Array.from([0x80, 0x02, 0xff])),
    Error,
    "unsupported opcode 0xff at byte 2",
  );
  assertThrows(
    () => Torch.unpickle(Uint8Array.from([0x80, 0x02, 0x58, 0x09])),
    Error,
    "pickle truncated",
  );
});

Deno.test("damaged checkpoints are refused, naming the file and the part", async () => {
  const good = await Deno.readFile(`${DIR}edsr_pytorch_x2.pt`);
  await assertRejects(
    () => Torch.decode(good.subarray(0, good.length - 200), "cut.pt"),
    Torch.TorchError,
    "cut.pt: zip archive: no end of central directory record",
  );
  const legacy = await Deno.readFile(`${DIR}edsr_pytorch_x2_legacy.pt`);
  await assertRejects(
    () => Torch.decode(legacy.subarray(0, legacy.length - 100), "cut_legacy.pt"),
    Torch.TorchError,
    "cut_legacy.pt: storage",
  );
  const e = await assertRejects(
    () => Torch.decode(new TextEncoder().encode("{}"), "x.pt"),
    Torch.TorchError,
  );
  assertStringIncludes(e.message, "not a PyTorch checkpoint");
  // A wrapper without tensors.
  assertThrows(
    () => Torch.findStateDict(new Map([["epoch", 3]]), "w.pt"),
    Torch.TorchError,
    "no state dict found: the top-level keys are epoch",
  );
  assertThrows(
    () => Torch.findStateDict(new Map(), "w.pt", "params"),
    Torch.TorchError,
    'no "params"',
  );
});

Deno.test("BasicSR/SwinIR wrappers: params_ema is preferred, module. prefixes are dropped", () => {
  const t = (v: number) => ({ dtype: "F32" as const, shape: [1], values: Float32Array.of(v) });
  const obj = new Map<unknown, unknown>([
    ["params", new Map([["module.conv.weight", t(1)]])],
    ["params_ema", new Map([["module.conv.weight", t(2)]])],
  ]);
  const sd = Torch.findStateDict(obj, "x.pth");
  assertEquals(sd.key, "params_ema");
  assertEquals(sd.tensors.get("conv.weight")!.values[0], 2);
  assertEquals(
    Torch.findStateDict(obj, "x.pth", "params").tensors.get("conv.weight")!.values[0],
    1,
  );
});
