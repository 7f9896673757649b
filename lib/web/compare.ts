/**
 * What the page computes: one image upscaled three ways, each timed — MATLAB-exact bicubic
 * (lib/Resize.ts), the FP32 network the packed model was quantized from, and the packed model
 * itself with its quantized convs on the integer kernels (lib/Engine.ts) — through the same
 * library code as `deno task upscale` (lib/Packed.ts decodes, lib/Upscale.ts tiles and runs).
 *
 * The FP32 network arrives as a packed file of the full-precision recipe (every parameter F32,
 * no quantized layer: `Packed.encode` of the 32/32 model, which lib/Serve.ts builds from the
 * packed model's recipe), so one decoder reads both.
 *
 * Times are wall-clock milliseconds of the whole call, read-back of the pixels included. The
 * first upscale of a model also measures its tile footprint (lib/Tile.ts, cached per model) and
 * compiles its shaders, so {@link load} upscales a small image with each network once,
 * and `warmup` runs each network once more on the image itself before timing it.
 *
 * @module
 */
import { Effect } from "effect";
import * as Engine from "../Engine.ts";
import * as Image from "../Image.ts";
import * as Packed from "../Packed.ts";
import * as Resize from "../Resize.ts";
import * as Tree from "../Tree.ts";
import * as Upscale from "../Upscale.ts";

/** Side of the grey image {@link load} warms the networks up on. */
const WARMUP = 16;

/** The two networks of one packed file, ready to run. */
export interface Models {
  /** The packed file's name (for errors and the page). */
  readonly name: string;
  /** Size of the packed file in bytes. */
  readonly bytes: number;
  readonly packed: Packed.Loaded;
  /** The packed model on the engine. */
  readonly engine: Engine.Engine;
  /** The FP32 network, or why there is none. */
  readonly fp32: Packed.Loaded | { readonly error: string };
  /** Milliseconds to decode and prepare both (warm-up included). */
  readonly loadMs: number;
}

/** Options of {@link load}. */
export interface LoadOptions {
  /** Which engine runs the quantized layers (default `int`: the integer kernels). */
  readonly engine?: Engine.Kind;
}

/**
 * Decodes a packed file, prepares it on the engine, and builds its FP32 network from
 * `fp32Of(recipe JSON)` (the bytes of its FP32 packed file; a rejection becomes `fp32.error`).
 */
export async function load(
  bytes: Uint8Array,
  name: string,
  fp32Of: (packed: Packed.Loaded) => Promise<Uint8Array>,
  opts: LoadOptions = {},
): Promise<Models> {
  const t0 = performance.now();
  const packed = await Packed.decode(bytes, name);
  const engine = await Engine.prepare(packed, { kind: opts.engine ?? "int" });
  let fp32: Models["fp32"];
  try {
    fp32 = await Packed.decode(await fp32Of(packed), `${name} (FP32)`);
    if (fp32.layers.length > 0) {
      Tree.dispose(fp32.params);
      fp32 = { error: `the FP32 file of ${name} has ${fp32.layers.length} quantized layers` };
    } else if (fp32.scale !== packed.scale) {
      Tree.dispose(fp32.params);
      fp32 = { error: `the FP32 network is ×${fp32.scale}, ${name} is ×${packed.scale}` };
    }
  } catch (e) {
    fp32 = { error: (e as Error).message };
  }
  const small = Image.make(WARMUP, WARMUP, new Uint8Array(WARMUP * WARMUP * 3).fill(128));
  await sr(engine)(small);
  if (!("error" in fp32)) await sr(fp32)(small);
  return { name, bytes: bytes.length, packed, engine, fp32, loadMs: performance.now() - t0 };
}

/** Frees the models' tensors and integer layers. */
export function dispose(m: Models): void {
  m.engine.dispose();
  Tree.dispose(m.packed.params);
  if (!("error" in m.fp32)) Tree.dispose(m.fp32.params);
}

/** One upscaled image: RGBA pixels, ready for `ImageData`. */
export interface Picture {
  readonly width: number;
  readonly height: number;
  readonly rgba: Uint8ClampedArray;
  /** Milliseconds the upscale took. */
  readonly ms: number;
}

/** The three upscales of one image. */
export interface Result {
  /** The input (LR) image. */
  readonly input: Omit<Picture, "ms">;
  readonly scale: number;
  readonly bicubic: Picture;
  readonly quantized: Picture;
  /** The FP32 network's upscale, or why there is none. */
  readonly fp32: Picture | { readonly error: string };
  /** `Engine.describe` of the quantized model: how many layers ran on the integer kernels. */
  readonly engine: string;
  /** Size of the packed file in bytes. */
  readonly modelBytes: number;
}

/** RGB → RGBA (opaque). */
export function rgba(img: Image.Image): Uint8ClampedArray {
  const out = new Uint8ClampedArray(img.width * img.height * 4);
  for (let i = 0, j = 0; i < img.data.length; i += 3, j += 4) {
    out[j] = img.data[i];
    out[j + 1] = img.data[i + 1];
    out[j + 2] = img.data[i + 2];
    out[j + 3] = 255;
  }
  return out;
}

const timed = async (f: () => Promise<Image.Image> | Image.Image): Promise<Picture> => {
  const t0 = performance.now();
  const img = await f();
  const ms = performance.now() - t0;
  return { width: img.width, height: img.height, rgba: rgba(img), ms };
};

/** lib/Upscale.ts's upscale (tiled, 8-bit output) with one network. */
const sr =
  (m: { model: Engine.Engine["model"]; params: Engine.Engine["params"] }) => (img: Image.Image) =>
    Effect.runPromise(Upscale.upscale(m, img));

/** Options of {@link upscale}. */
export interface UpscaleOptions {
  /** Run each network once on this image before timing it (steadier times). */
  readonly warmup?: boolean;
}

/** Upscales a PNG or JPEG image (its bytes) three ways; see the module comment. */
export async function upscale(
  m: Models,
  imageBytes: Uint8Array,
  imageName: string,
  opts: UpscaleOptions = {},
): Promise<Result> {
  const img = Image.decode(imageBytes, imageName);
  const quantizedOf = sr(m.engine);
  const fp32Of = "error" in m.fp32 ? undefined : sr(m.fp32);
  if (opts.warmup) {
    await quantizedOf(img);
    if (fp32Of) await fp32Of(img);
  }
  const bicubic = await timed(() => Resize.bicubicUpscale(img, m.packed.scale));
  const fp32 = fp32Of
    ? await timed(() => fp32Of(img))
    : { error: (m.fp32 as { error: string }).error };
  const quantized = await timed(() => quantizedOf(img));
  return {
    input: { width: img.width, height: img.height, rgba: rgba(img) },
    scale: m.packed.scale,
    bicubic,
    quantized,
    fp32,
    engine: Engine.describe(m.engine),
    modelBytes: m.bytes,
  };
}

/** One line for the page: which engine, how many layers integer, FP32 availability. */
export function describeEngine(m: Models): string {
  const fp = "error" in m.fp32 ? `; FP32: ${m.fp32.error}` : "";
  return `engine ${Engine.describe(m.engine)}${fp}`;
}
