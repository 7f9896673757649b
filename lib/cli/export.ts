/**
 * `deno task export --checkpoint <run folder, checkpoint or packed file> --format onnx|packed
 * [--out FILE] [--opset 25|21] [--activations qdq|float] [--json]`
 *
 * Writes a trained model for deployment, atomically:
 *
 * - `--format onnx` (default `<run>/model.onnx`): a standard ONNX graph (lib/Export.ts), FP32
 *   where the model is FP32, each quantized layer as its low-bit weight codes (UINT2/UINT4/
 *   UINT8 initializers, `DequantizeLinear`) and its input quantized exactly as in training
 *   (Q/DQ with a clip); NCHW RGB in [0, 255], any input size. `--opset 21` stores 2-bit codes
 *   in UINT4 for runtimes without UINT2.
 * - `--format packed` (default `<run>/model.qsr.safetensors`): the packed low-bit file
 *   (lib/Packed.ts), b bits per quantized weight in the safetensors layout, loadable by
 *   `deno task upscale --model`.
 *
 * It prints the file size next to `deno task cost`'s storage for the same model. Models whose
 * activation ranges are computed from each input (DAQ, DDTB's gates, per-batch percentiles)
 * are refused, naming the layer.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Checkpoint from "../Checkpoint.ts";
import * as Cost from "../Cost.ts";
import * as Export from "../Export.ts";
import * as Packed from "../Packed.ts";
import * as Quant from "../Quant.ts";
import * as Recipe from "../Recipe.ts";
import * as Tree from "../Tree.ts";
import * as Upscale from "../Upscale.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  checkpoint: z.string().min(1),
  format: z.enum(["onnx", "packed"]).default("onnx"),
  out: z.string().min(1).optional(),
  opset: z.enum(["21", "25"]).default("25").transform(Number),
  activations: z.enum(["qdq", "float"]).default("qdq"),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE =
  `usage: deno task export --checkpoint <run folder | checkpoint.bin | model${Packed.EXTENSION}> \
--format onnx|packed [--out FILE]
                         [--opset 25|21] [--activations qdq|float] [--json]
  --checkpoint   the trained model (a folder means <dir>/checkpoint.bin)
  --format       onnx (standard ONNX, low-bit codes + DequantizeLinear) or packed
                 (${Packed.EXTENSION}: b bits per weight in the safetensors layout)
  --out          output file (default <run>/model.onnx or <run>/model${Packed.EXTENSION})
  --opset        25 (default: 2-bit codes as UINT2) or 21 (2-bit codes stored in UINT4)
  --activations  qdq (default: QuantizeLinear/DequantizeLinear with a clip) or float
                 (Div/Round/Mul): both compute the training forward's quantizer exactly
  --json         print the summary as JSON`;

/** What `--json` prints. */
export interface Summary {
  readonly source: string;
  readonly format: "onnx" | "packed";
  readonly out: string;
  readonly bytes: number;
  readonly costStorageK: number | null;
  readonly costBytes: number | null;
  readonly quantizedLayers: number;
  readonly wbits: number;
  readonly abits: number;
  readonly arch: string;
  readonly scale: number;
}

const defaultOut = (source: string, format: "onnx" | "packed") => {
  const dir = source.endsWith(".bin") || source.endsWith(Packed.EXTENSION)
    ? source.slice(0, source.lastIndexOf("/") + 1) || "./"
    : `${source.replace(/\/+$/, "")}/`;
  return `${dir}model${format === "onnx" ? ".onnx" : Packed.EXTENSION}`;
};

/** The whole `export` task as an Effect program. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const opts = Args.parse(Options, argv, ["json", "help"]);
    if (opts.help) {
      console.log(USAGE);
      return undefined;
    }
    const log = (s: string) => (opts.json ? console.error(s) : console.log(s));
    const m = yield* Effect.tryPromise({
      try: () => Upscale.load(opts.checkpoint),
      catch: (e) => e as Error,
    });
    const out = opts.out ?? defaultOut(opts.checkpoint, opts.format);
    const { recipe } = m;
    const options = recipe.model.options as Record<string, number>;
    const quantized = Quant.layers(m.model).length;
    log(
      `model: ${recipe.model.arch} ×${recipe.model.scale}, W${recipe.quant.wbits}A${recipe.quant.abits}, ` +
        `${quantized} quantized layers, from ${m.source}`,
    );
    const bytes = yield* Effect.tryPromise({
      try: async () => {
        if (opts.format === "onnx") {
          const r = await Export.toOnnx(m.model, m.params, {
            opset: opts.opset as 21 | 25,
            activations: opts.activations,
            rgbRange: options.rgbRange,
            name: recipe.name,
            metadata: {
              "qat-sr.arch": recipe.model.arch,
              "qat-sr.scale": String(recipe.model.scale),
              "qat-sr.options": JSON.stringify(options),
              "qat-sr.recipe": JSON.stringify(Recipe.toJSON(recipe)),
              "qat-sr.io": "input/output NCHW float32 RGB in [0, 255]; output = input size × scale",
            },
          });
          log(
            `graph: ${r.summary.nodes} nodes, ${r.summary.initializers} initializers, opset ${r.summary.opset}`,
          );
          return r.bytes;
        }
        return await Packed.encode({
          model: m.model,
          params: m.params,
          recipe: Recipe.toJSON(recipe),
          arch: recipe.model.arch,
          scale: recipe.model.scale,
          options,
        });
      },
      catch: (e) => e as Error,
    }).pipe(Effect.ensuring(Effect.sync(() => Tree.dispose(m.params))));
    yield* Effect.tryPromise({
      try: () => Checkpoint.writeAtomic(out, bytes),
      catch: (e) => new Error(`cannot write ${out}: ${(e as Error).message}`),
    });
    let storageK: number | null = null;
    try {
      const s = recipe.model.scale;
      storageK = Cost.of(m.model, { outputHeight: 1080, outputWidth: 1920, scale: s }).storageK;
    } catch {
      storageK = null;
    }
    const summary: Summary = {
      source: m.source,
      format: opts.format,
      out,
      bytes: bytes.length,
      costStorageK: storageK,
      costBytes: storageK === null ? null : storageK * 4000,
      quantizedLayers: quantized,
      wbits: recipe.quant.wbits,
      abits: recipe.quant.abits,
      arch: recipe.model.arch,
      scale: recipe.model.scale,
    };
    if (opts.json) {
      console.log(JSON.stringify(summary));
      return summary;
    }
    const mb = (n: number) => `${(n / 1e6).toFixed(3)} MB`;
    console.log(
      `wrote ${out}: ${mb(bytes.length)}` +
        (storageK === null
          ? ""
          : `; deno task cost's storage: ${storageK.toFixed(1)}K words = ${mb(storageK * 4000)} ` +
            `(file ${((bytes.length / (storageK * 4000) - 1) * 100).toFixed(1)}% over)`),
    );
    return summary;
  });

if (import.meta.main) {
  await Main.run(program(Deno.args), { log: !Deno.args.includes("--json") });
}
