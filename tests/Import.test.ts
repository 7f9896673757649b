/**
 * Importing PyTorch weights (lib/Import.ts) against PyTorch itself: each reference layout's
 * random-initialised state dict (tests/fixtures/torch/, made by make_torch_fixture.py with
 * Debian's python3-torch), read from .pt (zip and legacy) and .safetensors (F32, F16, BF16),
 * gives our model the forward PyTorch computed on a real image crop, to 1e-4 relative. Wrong
 * architectures, scales and widths are refused with the first key and both shapes named.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess, assertRejects, assertStringIncludes } from "@std/assert";
import * as Image from "../lib/Image.ts";
import * as Import from "../lib/Import.ts";
import * as Nn from "../lib/Nn.ts";
import * as Tree from "../lib/Tree.ts";
import { maxRelDiff } from "./_setup.ts";

const DIR = new URL("./fixtures/torch/", import.meta.url).pathname;

interface FixtureModel {
  readonly arch: Import.Arch;
  readonly layout: Import.Layout;
  readonly scale: 2 | 3 | 4;
  readonly options: Record<string, number>;
  readonly files: string[];
  readonly output: string;
  readonly outputShape: [number, number, number];
}
const manifest = JSON.parse(await Deno.readTextFile(`${DIR}manifest.json`)) as {
  input: string;
  msrresnet: string;
  models: Record<string, FixtureModel>;
};
const crop = await Image.read(`${DIR}${manifest.input}`);

/** Our forward of imported weights on the fixture crop, as HWC floats. */
async function forward(imported: Import.Imported): Promise<Float32Array> {
  const params = Tree.unflatten(imported.params);
  const y = tf.tidy(() =>
    imported.model.apply(params, Image.toTensor(crop).expandDims(0), Nn.context("eval"))
  );
  const out = (await y.data()) as Float32Array;
  y.dispose();
  return out;
}

for (const [name, m] of Object.entries(manifest.models)) {
  for (const file of m.files) {
    Deno.test(`import ${file} (${m.layout}) equals PyTorch's forward to 1e-4`, async () => {
      const before = tf.memory().numTensors;
      const sd = await Import.readStateDict(`${DIR}${file}`);
      // Options come from the file (nothing given), and must be the fixture's.
      const imported = Import.importStateDict(sd, m.arch, m.scale);
      assertEquals(imported.layout, m.layout);
      assertEquals(imported.options, m.options);
      const expected = new Float32Array(
        (await Deno.readFile(`${DIR}${m.output}`)).buffer,
      );
      const ours = await forward(imported);
      assertEquals(ours.length, m.outputShape.reduce((a, b) => a * b, 1));
      const d = maxRelDiff(ours, expected);
      assertLess(d, 1e-4, `${name} from ${file}: max relative difference ${d}`);
      for (const t of imported.params.values()) t.dispose();
      assertEquals(tf.memory().numTensors, before);
    });
  }
}

Deno.test("F16 and BF16 safetensors of bfloat16-exact weights import bit for bit as F32", async () => {
  const base = Import.importStateDict(
    await Import.readStateDict(`${DIR}edsr_basicsr_x4.pth`),
    "edsr",
    4,
  );
  for (const f of ["edsr_basicsr_x4_f16.safetensors", "edsr_basicsr_x4_bf16.safetensors"]) {
    const other = Import.importStateDict(await Import.readStateDict(`${DIR}${f}`), "edsr", 4);
    for (const [p, t] of base.params) {
      assertEquals(
        Array.from(await other.params.get(p)!.data()),
        Array.from(await t.data()),
        `${f}: ${p}`,
      );
    }
    for (const t of other.params.values()) t.dispose();
  }
  for (const t of base.params.values()) t.dispose();
});

const refused = async (
  file: string,
  arch: Import.Arch,
  scale: 2 | 3 | 4,
  options: Record<string, number> = {},
) => {
  const sd = await Import.readStateDict(`${DIR}${file}`);
  try {
    const r = Import.importStateDict(sd, arch, scale, options);
    for (const t of r.params.values()) t.dispose();
  } catch (e) {
    assert(e instanceof Import.ImportError, String(e));
    return e.message;
  }
  throw new Error(`${file} as ${arch} ×${scale} was not refused`);
};

Deno.test("a wrong scale names the first key and both shapes", async () => {
  const msg = await refused("edsr_pytorch_x2.pt", "edsr", 3);
  assertStringIncludes(msg, '"tail.0.0.weight" is [32,8,3,3] in the file');
  assertStringIncludes(
    msg,
    "edsr ×3 (numFeat 8, numBlock 2) needs [72,8,3,3] for our upsample.0.weight",
  );
  // ×4 has a second upsampler conv the ×2 file lacks.
  assertStringIncludes(
    await refused("edsr_pytorch_x2.pt", "edsr", 4),
    '"tail.0.2.weight" is missing',
  );
  // A ×4 file read as ×2: its second upsampler conv is left over.
  assertStringIncludes(
    await refused("edsr_basicsr_x4.pth", "edsr", 2),
    '"upsample.2.weight" [32,8,3,3] is in the file but edsr ×2',
  );
});

Deno.test("a wrong width or depth names the key and shapes", async () => {
  assertStringIncludes(
    await refused("edsr_pytorch_x2.pt", "edsr", 2, { numFeat: 16 }),
    '"head.0.weight" is [8,3,3,3] in the file, but edsr ×2 (numFeat 16, numBlock 2) needs [16,3,3,3]',
  );
  assertStringIncludes(
    await refused("edsr_pytorch_x2.pt", "edsr", 2, { numBlock: 1 }),
    '"body.1.weight" is missing: edsr ×2 (numFeat 8, numBlock 1) needs it',
  );
  assertStringIncludes(
    await refused("rdn_x4.pt", "rdn", 4, { growRate: 8 }),
    '"RDBs.0.convs.0.conv.0.weight" is [4,8,3,3] in the file, but rdn ×4',
  );
});

Deno.test("a wrong architecture, MSRResNet and a torch-free file are refused by name", async () => {
  const msg = await refused(manifest.msrresnet, "srresnet", 4);
  assertStringIncludes(msg, "BasicSR's MSRResNet");
  assertStringIncludes(msg, "cannot be imported as --arch srresnet");
  assertStringIncludes(msg, "conv_first.weight [8,3,3,3]");
  assertStringIncludes(await refused("rdn_x4.pt", "edsr", 4), "no edsr layout fits");
  assertStringIncludes(await refused("swinir_x2.pth", "edsr", 2), "no edsr layout fits");
  const bogus = await Deno.makeTempFile({ suffix: ".pt" });
  await Deno.writeTextFile(bogus, "hello, not a checkpoint");
  await assertRejects(() => Import.readStateDict(bogus), Error, "not a PyTorch checkpoint");
  await Deno.remove(bogus);
});
