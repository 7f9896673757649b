/**
 * qat-sr: quantization-aware training of image super-resolution networks in TypeScript, on
 * tfjs's WebGPU backend under Deno. Its first method is ODM (Hong & Lee, ECCV 2024).
 *
 * Each module is one concept and is re-exported here as a namespace:
 *
 * ```ts
 * import { Nn, Quant, Quantizer, Range } from "./mod.ts";
 * const conv = Nn.conv2d({ in: 64, out: 64 });
 * const qconv = Quant.wrap({
 *   weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
 *   input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
 * })(conv);
 * ```
 *
 * @module
 */
export * as Backend from "./lib/Backend.ts";
export * as Benchmark from "./lib/Benchmark.ts";
export * as Calibration from "./lib/Calibration.ts";
export * as Checkpoint from "./lib/Checkpoint.ts";
export * as Cooperative from "./lib/Cooperative.ts";
export * as Cost from "./lib/Cost.ts";
export * as Data from "./lib/Data.ts";
export * as Engine from "./lib/Engine.ts";
export * as Evaluate from "./lib/Evaluate.ts";
export * as Export from "./lib/Export.ts";
export * as Figures from "./lib/Figures.ts";
export * as Image from "./lib/Image.ts";
export * as Import from "./lib/Import.ts";
export * as Iqa from "./lib/Iqa.ts";
export * as Loader from "./lib/Loader.ts";
export * as Loss from "./lib/Loss.ts";
export * as Method from "./lib/Method.ts";
export * as Methods from "./lib/methods/mod.ts";
export * as Nn from "./lib/Nn.ts";
export * as Onnx from "./lib/Onnx.ts";
export * as Optim from "./lib/Optim.ts";
export * as Packed from "./lib/Packed.ts";
export * as Prepare from "./lib/Prepare.ts";
export * as Pretrained from "./lib/Pretrained.ts";
export * as Quant from "./lib/Quant.ts";
export * as Quantizer from "./lib/Quantizer.ts";
export * as Range from "./lib/Range.ts";
export * as Recipe from "./lib/Recipe.ts";
export * as Report from "./lib/Report.ts";
export * as Resize from "./lib/Resize.ts";
export * as Run from "./lib/Run.ts";
export * as Rng from "./lib/Rng.ts";
export * as Safetensors from "./lib/Safetensors.ts";
export * as Ste from "./lib/Ste.ts";
export * as Sweep from "./lib/Sweep.ts";
export * as SweepEngine from "./lib/SweepEngine.ts";
export * as Tile from "./lib/Tile.ts";
export * as Torch from "./lib/Torch.ts";
export * as Train from "./lib/Train.ts";
export * as Tree from "./lib/Tree.ts";
export * as Upscale from "./lib/Upscale.ts";
export * as Edsr from "./models/edsr.ts";
export * as Rdn from "./models/rdn.ts";
export * as Models from "./models/registry.ts";
