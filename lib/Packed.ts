/**
 * The packed low-bit model file, `<name>.qsr.safetensors`: a trained model at its real size,
 * b bits per quantized weight, in the safetensors layout (lib/Safetensors.ts), so that any
 * safetensors reader lists it.
 *
 * Contents (format `qat-sr-packed`, version 1):
 *
 * - `__metadata__` (strings): `format`, `version`, `arch`, `scale`, `options` (JSON),
 *   `recipe` (the training recipe's JSON form, as the checkpoint stored it) and `layers` (JSON:
 *   one entry per quantized layer, `{path, weight?: {bits, shape}, input?: {bits}}`).
 * - `<layer>.weight.codes` (U8, `[⌈n·b/8⌉]`): the weight codes `k ∈ [0, 2^b − 1]` of the layer
 *   in our parameter layout (row-major HWIO for convs, `[in, out]` for linears), packed
 *   little-endian: code `i` occupies bits `i·b … i·b + b − 1` of the byte stream, low bits first
 *   (3-bit codes cross byte boundaries). The weight is `k·s + l`, `s = (u − l)/(2^b − 1)`.
 * - `<layer>.wq.upper` (F32 scalar; and `<layer>.wq.lower` when the grid is not symmetric,
 *   else `l = −u`): the weight range, evaluated once from the trained quantizer (Eq. 9's
 *   percentile·γ for ODM).
 * - `<layer>.aq.lower`, `<layer>.aq.upper` (F32 scalars): the input activation range.
 * - every other parameter at its path, F32: biases, full-precision layers, norms, batch-norm
 *   running statistics, SwinIR's bias tables.
 *
 * So the file holds what `deno task cost` counts as storage (quantized weights at b bits, all
 * else at 32, three quantizer scalars per ODM layer), plus the header.
 *
 * Loading ({@link decode}) rebuilds the recipe's network with the same placement and gives each
 * quantized layer fixed-range quantizers (`Range.learnable` bounds holding the stored `l, u`):
 * the dequantized weights lie on the stored grid, so the fake-quant forward quantizes them to
 * the same codes and computes, on the same backend, exactly the trained model's forward.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as z from "zod";
import * as Export from "./Export.ts";
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import * as Quantizer from "./Quantizer.ts";
import * as Range from "./Range.ts";
import * as Recipe from "./Recipe.ts";
import * as Safetensors from "./Safetensors.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";
import * as Registry from "../models/registry.ts";

/** The `format` metadata value. */
export const FORMAT = "qat-sr-packed";
/** The version {@link encode} writes. */
export const VERSION = 1;
/** The file name suffix. */
export const EXTENSION = ".qsr.safetensors";

/** A packed file is invalid or does not fit its recipe's model; names the file and field. */
export class PackedError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = "PackedError";
  }
}

/** Packs codes of `bits` bits (1–8) densely, little-endian (see the module comment). */
export function packCodes(codes: ArrayLike<number>, bits: number): Uint8Array {
  if (!(Number.isInteger(bits) && bits >= 1 && bits <= 8)) {
    throw new RangeError(`packCodes: bits must be 1–8, got ${bits}`);
  }
  const out = new Uint8Array(Math.ceil((codes.length * bits) / 8));
  const top = (1 << bits) - 1;
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (!(Number.isInteger(c) && c >= 0 && c <= top)) {
      throw new RangeError(`packCodes: code ${c} at ${i} does not fit ${bits} bits`);
    }
    const bit = i * bits;
    const v = c << (bit & 7); // at most 15 bits
    out[bit >> 3] |= v & 0xff;
    if ((bit & 7) + bits > 8) out[(bit >> 3) + 1] |= v >> 8;
  }
  return out;
}

/** The inverse of {@link packCodes}: `n` codes. */
export function unpackCodes(bytes: Uint8Array, bits: number, n: number): Uint8Array {
  if (bytes.length !== Math.ceil((n * bits) / 8)) {
    throw new RangeError(
      `unpackCodes: ${bytes.length} bytes, ${n} ${bits}-bit codes need ${
        Math.ceil((n * bits) / 8)
      }`,
    );
  }
  const out = new Uint8Array(n);
  const top = (1 << bits) - 1;
  for (let i = 0; i < n; i++) {
    const bit = i * bits;
    const lo = bytes[bit >> 3];
    const hi = (bit & 7) + bits > 8 ? bytes[(bit >> 3) + 1] : 0;
    out[i] = ((lo | (hi << 8)) >> (bit & 7)) & top;
  }
  return out;
}

const LayerSchema = z.object({
  path: z.string().min(1),
  weight: z.object({
    bits: z.number().int().min(1).max(8),
    shape: z.array(z.number().int().positive()),
  }).strict().optional(),
  input: z.object({ bits: z.number().int().min(1).max(8) }).strict().optional(),
}).strict();
type LayerEntry = z.output<typeof LayerSchema>;

const MetadataSchema = z.object({
  format: z.literal(FORMAT),
  version: z.literal(String(VERSION)),
  arch: z.string().min(1),
  scale: z.enum(["2", "3", "4"]),
  options: z.string(),
  recipe: z.string(),
  layers: z.string(),
}).loose();

/** What {@link encode} takes: the model, its parameters and the recipe (JSON form) it came from. */
export interface Source {
  readonly model: Nn.AnyLayer;
  readonly params: Params;
  /** The recipe's JSON form (`Recipe.toJSON`, as a checkpoint stores it). */
  readonly recipe: unknown;
  readonly arch: string;
  readonly scale: number;
  readonly options: Readonly<Record<string, number>>;
}

/**
 * The packed file of a model: codes from the fake-quant kernel's output (`Export.collect`),
 * everything else FP32. Refuses what `Export` refuses (run-time ranges, non-Eq. 1 grids).
 */
export async function encode(s: Source): Promise<Uint8Array> {
  const c = await Export.collect(s.model, s.params);
  const tensors: Array<[string, Safetensors.Writable]> = [];
  const covered = new Set<string>();
  const layers: LayerEntry[] = [];
  const scalar = (v: number): Safetensors.Writable => ({
    dtype: "F32",
    shape: [],
    values: Float32Array.of(v),
  });
  for (const l of c.layers.values()) {
    const entry: LayerEntry = { path: l.path };
    if (l.weight) {
      const w = l.weight;
      tensors.push([`${l.path}.weight.codes`, {
        dtype: "U8",
        shape: [Math.ceil((w.codes.length * w.bits) / 8)],
        raw: packCodes(w.codes, w.bits),
      }]);
      tensors.push([`${l.path}.wq.upper`, scalar(w.upper)]);
      if (w.lower !== -w.upper) tensors.push([`${l.path}.wq.lower`, scalar(w.lower)]);
      entry.weight = { bits: w.bits, shape: [...w.shape] };
      covered.add(`${l.path}.weight`);
    }
    if (l.input) {
      tensors.push([`${l.path}.aq.lower`, scalar(l.input.lower)]);
      tensors.push([`${l.path}.aq.upper`, scalar(l.input.upper)]);
      entry.input = { bits: l.input.bits };
    }
    if (entry.weight || entry.input) layers.push(entry);
  }
  // The grids stored above replace their quantizers' own parameters (γ, learnable bounds);
  // a quantizer whose grid is not stored (32 bits) keeps its parameters, as FP32 tensors.
  const replaced = (p: string) =>
    [...c.layers.values()].some((l) =>
      (l.weight && p.startsWith(`${l.path}.wq.`)) || (l.input && p.startsWith(`${l.path}.aq.`))
    );
  for (const [p, v] of c.values) {
    if (covered.has(p) || replaced(p)) continue;
    tensors.push([p, { dtype: "F32", shape: c.shapes.get(p)!, values: v }]);
  }
  return Safetensors.encode(tensors, {
    format: FORMAT,
    version: String(VERSION),
    arch: s.arch,
    scale: String(s.scale),
    options: JSON.stringify(s.options),
    recipe: JSON.stringify(s.recipe),
    layers: JSON.stringify(layers),
  });
}

/** A model loaded from a packed file. */
export interface Loaded {
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly recipe: Recipe.Recipe;
  readonly arch: string;
  readonly scale: number;
  readonly options: Readonly<Record<string, number>>;
  /** The quantized layers as stored. */
  readonly layers: ReadonlyArray<LayerEntry>;
}

/** True when bytes look like a packed file (safetensors whose metadata says our format). */
export function isPacked(bytes: Uint8Array): boolean {
  try {
    return Safetensors.parseHeader(bytes, "(probe)").metadata.format === FORMAT;
  } catch {
    return false;
  }
}

const parseJson = <T>(file: string, field: string, text: string, schema: z.ZodType<T>): T => {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PackedError(file, `__metadata__.${field} is not JSON (${(e as Error).message})`);
  }
  const r = schema.safeParse(v);
  if (!r.success) throw new PackedError(file, `__metadata__.${field}: ${z.prettifyError(r.error)}`);
  return r.data;
};

/** Loads a packed file into our model (see the module comment); `file` names it in errors. */
export async function decode(bytes: Uint8Array, file: string): Promise<Loaded> {
  let contents: Safetensors.Contents;
  try {
    contents = Safetensors.decode(bytes, file);
  } catch (e) {
    throw new PackedError(file, (e as Error).message.replace(`${file}: `, ""));
  }
  const meta = MetadataSchema.safeParse(contents.metadata);
  if (!meta.success) {
    throw new PackedError(
      file,
      `not a ${FORMAT} v${VERSION} file: __metadata__ ${z.prettifyError(meta.error)}`,
    );
  }
  const m = meta.data;
  const options = parseJson(file, "options", m.options, z.record(z.string(), z.number()));
  const layers = parseJson(file, "layers", m.layers, z.array(LayerSchema));
  const recipeJson = parseJson(file, "recipe", m.recipe, z.unknown());
  let recipe: Recipe.Recipe;
  try {
    recipe = await Recipe.fromJSON(recipeJson, `${file} (__metadata__.recipe)`);
  } catch (e) {
    throw new PackedError(file, (e as Error).message);
  }
  if (recipe.model.arch !== m.arch || String(recipe.model.scale) !== m.scale) {
    throw new PackedError(
      file,
      `__metadata__.arch/scale (${m.arch} ×${m.scale}) differ from the recipe's`,
    );
  }
  const fail = (reason: string): never => {
    throw new PackedError(file, reason);
  };
  // The recipe's network and placement, with fixed-range quantizers holding the stored grids.
  const arch = Registry.architecture(recipe.model);
  const structure = Registry.quantize(recipe, arch);
  const byPath = new Map(layers.map((l) => [l.path, l]));
  const seen = new Set<string>();
  const model = Nn.transform(structure, (path, layer) => {
    if (!Quant.isQuantized(layer)) return undefined;
    const entry = byPath.get(path);
    const wbits = layer.spec.weight?.bits ?? 32, abits = layer.spec.input?.bits ?? 32;
    if ((entry?.weight?.bits ?? 32) !== wbits || (entry?.input?.bits ?? 32) !== abits) {
      fail(
        `layer "${path}" is W${wbits}A${abits} in the recipe's model, but the file stores ` +
          `W${entry?.weight?.bits ?? 32}A${entry?.input?.bits ?? 32}`,
      );
    }
    if (!entry) return undefined;
    seen.add(path);
    const symmetric = !contents.tensors.has(`${path}.wq.lower`);
    // A side whose grid is not stored (32 bits) keeps the recipe's quantizer and parameters.
    const weight = entry.weight
      ? (symmetric ? Quantizer.symmetric : Quantizer.asymmetric)({
        bits: entry.weight.bits,
        range: Range.learnable(),
      })
      : layer.spec.weight;
    const input = entry.input
      ? Quantizer.asymmetric({ bits: entry.input.bits, range: Range.learnable() })
      : layer.spec.input;
    return Quant.wrap({ weight, input })(layer.inner);
  });
  for (const l of layers) {
    if (!seen.has(l.path)) {
      fail(`layers: "${l.path}" is not a quantized layer of the recipe's model`);
    }
  }

  const values = new Map<string, tf.Tensor>();
  const get = (name: string): Safetensors.HostTensor =>
    contents.tensors.get(name) ?? fail(`tensor "${name}" is missing`);
  const scalarOf = (name: string) => {
    const t = get(name);
    if (t.dtype !== "F32" || t.shape.length !== 0) fail(`tensor "${name}" must be an F32 scalar`);
    return t.values[0];
  };
  const used = new Set<string>();
  try {
    for (const l of layers) {
      if (l.weight) {
        const name = `${l.path}.weight.codes`;
        const raw = contents.raw.get(name) ?? fail(`tensor "${name}" is missing`);
        if (get(name).dtype !== "U8") fail(`tensor "${name}" must be U8`);
        const n = l.weight.shape.reduce((a, b) => a * b, 1);
        let codes: Uint8Array;
        try {
          codes = unpackCodes(raw, l.weight.bits, n);
        } catch (e) {
          return fail(`tensor "${name}": ${(e as Error).message}`);
        }
        const upper = scalarOf(`${l.path}.wq.upper`);
        const lower = contents.tensors.has(`${l.path}.wq.lower`)
          ? scalarOf(`${l.path}.wq.lower`)
          : -upper;
        const grid = { bits: l.weight.bits, lower, upper };
        const s = Export.stepOf(grid);
        const w = new Float32Array(n);
        for (let i = 0; i < n; i++) w[i] = Math.fround(Math.fround(codes[i] * s) + lower);
        values.set(`${l.path}.weight`, tf.tensor(w, l.weight.shape, "float32"));
        values.set(`${l.path}.wq.upper`, tf.scalar(upper));
        if (contents.tensors.has(`${l.path}.wq.lower`)) {
          values.set(`${l.path}.wq.lower`, tf.scalar(lower));
        }
        used.add(name).add(`${l.path}.wq.upper`).add(`${l.path}.wq.lower`);
      }
      if (l.input) {
        values.set(`${l.path}.aq.lower`, tf.scalar(scalarOf(`${l.path}.aq.lower`)));
        values.set(`${l.path}.aq.upper`, tf.scalar(scalarOf(`${l.path}.aq.upper`)));
        used.add(`${l.path}.aq.lower`).add(`${l.path}.aq.upper`);
      }
    }
    const init = Tree.flatten(model.init(0));
    const shapes = new Map([...init].map(([p, t]) => [p, t.shape] as const));
    Tree.dispose(Tree.unflatten(init));
    for (const [p, shape] of shapes) {
      if (values.has(p)) continue;
      const t = get(p);
      if (t.dtype !== "F32") fail(`tensor "${p}" must be F32, is ${t.dtype}`);
      if (t.shape.join(",") !== shape.join(",")) {
        fail(`tensor "${p}" is [${t.shape}], the recipe's model needs [${shape}]`);
      }
      values.set(p, tf.tensor(t.values as Float32Array, [...shape], "float32"));
      used.add(p);
    }
    for (const [p, t] of values) {
      const want = shapes.get(p);
      if (!want) fail(`tensor for "${p}" is not a parameter of the recipe's model`);
      if (want!.join(",") !== t.shape.join(",")) {
        fail(`"${p}" is [${t.shape}], the model needs [${want}]`);
      }
    }
    for (const name of contents.tensors.keys()) {
      if (!used.has(name)) fail(`tensor "${name}" is not a parameter of the recipe's model`);
    }
  } catch (e) {
    for (const t of values.values()) t.dispose();
    throw e;
  }
  return {
    model,
    params: Tree.unflatten(values),
    recipe,
    arch: m.arch,
    scale: Number(m.scale),
    options,
    layers,
  };
}

/** Reads a packed file. */
export async function read(file: string): Promise<Loaded> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new PackedError(file, `cannot read (${(e as Error).message})`);
  }
  return decode(bytes, file);
}
