/**
 * `deno run -A bench/deploy.ts`: the deployment table of the README ("Models in and out"):
 * file sizes of the default model (pretrained esrgan-slim ×4) and of EDSR-baseline ×4 (random
 * initialised: sizes and speed do not depend on the values) at FP32, W4A4 and W2A2, as ONNX
 * and packed, next to `Cost.of`'s storage; and ONNX Runtime's CPU time (cpu EP, 2 threads) for
 * the FP32 and the quantized ONNX of each on one 1×3×256×256 input, as ratios from this run.
 * Quantized models are calibrated on embedded training crops (tests/_deploy.ts).
 */
import * as ort from "onnxruntime-node";
import * as Backend from "../lib/Backend.ts";
import * as Cost from "../lib/Cost.ts";
import * as Export from "../lib/Export.ts";
import * as Packed from "../lib/Packed.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";
import * as Deploy from "../tests/_deploy.ts";

const info = await Backend.initialize({ log: false });
console.error(`backend: ${info.name} (${info.adapter})`);

interface Row {
  model: string;
  bits: string;
  costK: number;
  onnx: number;
  packed: number;
  ms?: number;
  /** With `session.disable_quant_qdq`: the dequantization folded at load. */
  folded?: number;
}

const rows: Row[] = [];
const timings: Array<{ model: string; bits: string; ms: number }> = [];

/** ORT sessions of a model's variants, timed in interleaved rounds (median of 5 per variant). */
async function timeOrt(
  variants: ReadonlyArray<{ readonly bytes: Uint8Array; readonly fold?: boolean }>,
): Promise<number[]> {
  const sessions = await Promise.all(variants.map((v) =>
    ort.InferenceSession.create(v.bytes, {
      executionProviders: ["cpu"],
      intraOpNumThreads: 2,
      graphOptimizationLevel: "all",
      // ORT keeps DequantizeLinear nodes for its QDQ fusions unless told to treat them as
      // ordinary nodes, which constant folding then evaluates once at load.
      ...(v.fold ? { extra: { session: { disable_quant_qdq: "1" } } } : {}),
    })
  ));
  const x = new ort.Tensor(
    "float32",
    Float32Array.from({ length: 3 * 256 * 256 }, (_, i) => (i * 37) % 256),
    [1, 3, 256, 256],
  );
  for (const s of sessions) await s.run({ input: x }); // warm-up
  const runs: number[][] = sessions.map(() => []);
  for (let round = 0; round < 5; round++) {
    for (const [i, s] of sessions.entries()) {
      const t = performance.now();
      await s.run({ input: x });
      runs[i].push(performance.now() - t);
    }
  }
  for (const s of sessions) await s.release();
  return runs.map((r) => r.sort((a, b) => a - b)[2]);
}

async function measure(name: string, input: Recipe.Input, fp: () => Promise<unknown>) {
  const onnxFiles: Uint8Array[] = [];
  const mine: Row[] = [];
  for (const bits of [32, 4, 2]) {
    const recipe = Recipe.parse({ ...input, quant: { wbits: bits, abits: bits } }, name);
    const arch = Registry.architecture(recipe.model);
    const model = Registry.quantize(recipe, arch);
    const start = (await fp()) as Tree.Params;
    const params = bits === 32
      ? start
      : Deploy.calibrate(model, start, await Deploy.calibrationImages(recipe.model.scale, 32));
    const onnx = await Export.toOnnx(model, params, { name });
    const packed = await Packed.encode({
      model,
      params,
      recipe: Recipe.toJSON(recipe),
      arch: recipe.model.arch,
      scale: recipe.model.scale,
      options: recipe.model.options as Record<string, number>,
    });
    const cost = Cost.of(model, {
      outputHeight: 1080,
      outputWidth: 1920,
      scale: recipe.model.scale,
    });
    const label = bits === 32 ? "FP32" : `W${bits}A${bits}`;
    onnxFiles.push(onnx.bytes);
    mine.push({
      model: name,
      bits: label,
      costK: cost.storageK,
      onnx: onnx.bytes.length,
      packed: packed.length,
    });
    Tree.dispose(params);
  }
  const ms = await timeOrt([
    ...onnxFiles.map((bytes) => ({ bytes })),
    ...onnxFiles.slice(1).map((bytes) => ({ bytes, fold: true })),
  ]);
  mine.forEach((r, i) => {
    r.ms = ms[i];
    r.folded = i > 0 ? ms[onnxFiles.length + i - 1] : ms[0];
    timings.push({ model: name, bits: r.bits, ms: ms[i] });
    console.error(
      `${name} ${r.bits}: onnx ${r.onnx}, packed ${r.packed}, cost ${r.costK.toFixed(1)}K, ORT ${
        ms[i].toFixed(0)
      } ms`,
    );
  });
  rows.push(...mine);
}

const defaultRecipe = (await import("../recipes/default.ts")).default as Recipe.Recipe;
await measure(
  "esrgan-slim ×4 (default)",
  {
    name: "default",
    model: { arch: "esrgan-slim", scale: 4, pretrained: true },
    quant: { wbits: 4, abits: 4 },
    train: defaultRecipe.train,
  },
  async () => (await Pretrained.load("esrgan-slim", 4)).params,
);
await measure(
  "EDSR-baseline ×4",
  {
    name: "edsr-baseline",
    model: { arch: "edsr", scale: 4 },
    quant: { wbits: 32, abits: 32 },
    train: { steps: 0 },
  },
  () =>
    Promise.resolve(Registry.architecture({ arch: "edsr", scale: 4, options: {} }).model.init(0)),
);

const mb = (n: number) => (n / 1e6).toFixed(3);
console.log(
  "| model | bits | `deno task cost` storage | = bytes | ONNX | packed (.qsr.safetensors) | " +
    "ORT CPU, 256² | vs FP32 | DQ folded at load | vs FP32 |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  const fp = timings.find((t) => t.model === r.model && t.bits === "FP32")!.ms;
  console.log(
    `| ${r.model} | ${r.bits} | ${r.costK.toFixed(1)}K | ${mb(r.costK * 4000)} MB | ${
      mb(r.onnx)
    } MB | ` +
      `${mb(r.packed)} MB (${((r.packed / (r.costK * 4000) - 1) * 100).toFixed(1)}%) | ${
        r.ms!.toFixed(0)
      } ms | ` +
      `${(r.ms! / fp).toFixed(2)}× | ${r.folded!.toFixed(0)} ms | ${
        (r.folded! / fp).toFixed(2)
      }× |`,
  );
}
