/**
 * Pretrained FP32 starting points (SPEC §7): the RDN weights of the MIT-licensed npm packages
 * `@upscalerjs/esrgan-slim` (idealo RDN C 1, D 2, G 4, G0 64) and `@upscalerjs/esrgan-medium`
 * (C 1, D 10, G 64, G0 64), trained on DIV2K, RGB in and out in [0, 255].
 *
 * Each package holds, per scale, a Keras layers-model as tfjs files: `models/x{s}/model.json`
 * (topology and weight manifest) and a float32 shard. We read both with `Deno.readFile`,
 * validate the parts of `model.json` we use, infer the RDN configuration from the Keras layers
 * (G0 from `F_0`, D from the `LFF_d`, C and G from the `F_1_c`, the scale from `UpSampling2D`),
 * build {@link Rdn.rdn} with it, decode the shard with `tf.io.decodeWeights`, and rename every
 * Keras weight to our dotted path (`F_1_1/kernel` → `rdbs.0.convs.0.weight`, see
 * {@link paramPath}), checking each shape against the model's own. tfjs-layers is not used.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data } from "effect";
import * as z from "zod";
import * as Rdn from "../models/rdn.ts";
import type * as Nn from "./Nn.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";

/** The pretrained packages. */
export type Name = "esrgan-slim" | "esrgan-medium";

/** The scales we load (the packages also ship ×8, which our RDN does not build). */
export type Scale = 2 | 3 | 4;

/** Weights could not be found, read, or matched to the model; names the file and weight. */
export class PretrainedError extends Data.TaggedError("PretrainedError")<{
  readonly file: string;
  readonly reason: string;
  /** The Keras weight (`F_1_1/kernel`) when one is at fault. */
  readonly weight?: string;
}> {
  override get message(): string {
    const w = this.weight === undefined ? "" : ` (weight ${this.weight})`;
    return `pretrained model ${this.file}${w}: ${this.reason}`;
  }
}

/** What was loaded. */
export interface Info {
  /** Package name, or the directory for {@link loadDir}. */
  readonly name: string;
  readonly scale: Scale;
  /** The `model.json` that was read. */
  readonly file: string;
  /** The RDN options inferred from the Keras topology. */
  readonly options: Rdn.Options<number>;
  /** Scalars loaded (equals the model's parameter count). */
  readonly parameters: number;
  /** Pixel range of input and output. */
  readonly range: readonly [0, 255];
}

/** A model with its weights. */
export interface Loaded {
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly info: Info;
}

// ---------------------------------------------------------------------------------------------
// model.json: only the parts we use.

const Conv = z.object({
  class_name: z.literal("Conv2D"),
  config: z.object({
    name: z.string(),
    filters: z.number().int().positive(),
    kernel_size: z.tuple([z.number().int().positive(), z.number().int().positive()]),
    strides: z.tuple([z.literal(1), z.literal(1)]),
    dilation_rate: z.tuple([z.literal(1), z.literal(1)]).optional(),
    padding: z.enum(["same", "valid"]),
    activation: z.literal("linear"),
    use_bias: z.literal(true),
  }),
});

const Upsampling = z.object({
  class_name: z.literal("UpSampling2D"),
  config: z.object({
    name: z.string(),
    size: z.tuple([z.number().int().positive(), z.number().int().positive()]),
    interpolation: z.literal("nearest").optional(),
  }),
});

const OtherLayer = z.object({
  class_name: z.string(),
  config: z.object({ name: z.string() }).loose(),
});

const WeightSpec = z.object({
  name: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  dtype: z.literal("float32"),
  // A quantized manifest would need the field we would otherwise drop: refuse it.
  quantization: z.undefined().optional(),
});

const ModelJson = z.object({
  format: z.literal("layers-model"),
  modelTopology: z.object({
    model_config: z.object({
      class_name: z.enum(["Functional", "Model"]),
      config: z.object({ layers: z.array(z.unknown()) }),
    }),
  }),
  weightsManifest: z.array(
    z.object({ paths: z.array(z.string()).min(1), weights: z.array(WeightSpec) }),
  ).min(1),
});

type ConvLayer = z.infer<typeof Conv>["config"];

/**
 * Our dotted path for a Keras weight of the idealo RDN, or undefined for a name it does not
 * have: `F_m1` → `sfe1`, `F_0` → `sfe2`, `F_d_c` → `rdbs.{d−1}.convs.{c−1}`, `LFF_d` →
 * `rdbs.{d−1}.lff`, `GFF_1|2` → `gff.0|1`, `UPN1|2|3` → `upsample.0|2|4`, `SR` → `tail`;
 * `kernel` → `weight`, `bias` → `bias`.
 */
export function paramPath(kerasWeight: string): string | undefined {
  const m = /^([A-Za-z0-9_]+)\/(kernel|bias)$/.exec(kerasWeight);
  if (!m) return undefined;
  const layer = layerPath(m[1]);
  return layer === undefined ? undefined : `${layer}.${m[2] === "kernel" ? "weight" : "bias"}`;
}

function layerPath(keras: string): string | undefined {
  const fixed: Record<string, string> = {
    F_m1: "sfe1",
    F_0: "sfe2",
    GFF_1: "gff.0",
    GFF_2: "gff.1",
    UPN1: "upsample.0",
    UPN2: "upsample.2",
    UPN3: "upsample.4",
    SR: "tail",
  };
  if (Object.hasOwn(fixed, keras)) return fixed[keras];
  const conv = /^F_([1-9][0-9]*)_([1-9][0-9]*)$/.exec(keras);
  if (conv) return `rdbs.${Number(conv[1]) - 1}.convs.${Number(conv[2]) - 1}`;
  const lff = /^LFF_([1-9][0-9]*)$/.exec(keras);
  if (lff) return `rdbs.${Number(lff[1]) - 1}.lff`;
  return undefined;
}

/** The directory of a package's `model.json` and shard for one scale (not checked). */
export function directory(name: Name, scale: Scale): string {
  const url = new URL(`../node_modules/@upscalerjs/${name}/models/x${scale}/`, import.meta.url);
  return decodeURIComponent(url.pathname);
}

/**
 * Loads `@upscalerjs/<name>` at ×`scale` as our RDN and its parameters.
 *
 * @example
 * ```ts ignore
 * const { model, params } = await Pretrained.load("esrgan-slim", 4);
 * const sr = model.apply(params, lr, Nn.context()); // lr: [1, h, w, 3] in [0, 255]
 * ```
 */
export async function load(name: Name, scale: Scale): Promise<Loaded> {
  const dir = directory(name, scale);
  try {
    await Deno.stat(`${dir}model.json`);
  } catch {
    throw new PretrainedError({
      file: `${dir}model.json`,
      reason: `not found: the package @upscalerjs/${name} is not installed; ` +
        "run `deno install` in the project root (deno.json imports the @upscalerjs packages)",
    });
  }
  const loaded = await loadDir(dir, `@upscalerjs/${name}`);
  if (loaded.info.scale !== scale) {
    Tree.dispose(loaded.params);
    throw new PretrainedError({
      file: loaded.info.file,
      reason: `is ×${loaded.info.scale}, expected ×${scale}`,
    });
  }
  return loaded;
}

/** Loads an idealo-RDN Keras layers-model directory (`model.json` and its shards). */
export async function loadDir(dir: string, name = dir): Promise<Loaded> {
  const file = `${dir.replace(/\/$/, "")}/model.json`;
  const fail: (reason: string, weight?: string) => never = (reason, weight) => {
    throw new PretrainedError({ file, reason, weight });
  };
  const describe = (e: unknown) => (e instanceof Error ? e.message : String(e));

  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    return fail(`cannot read (${describe(e)})`);
  }
  const parsed = ModelJson.safeParse(json);
  if (!parsed.success) return fail(`unexpected model.json: ${z.prettifyError(parsed.error)}`);
  const doc = parsed.data;

  const options = inferOptions(doc.modelTopology.model_config.config.layers, fail);
  const model = Rdn.rdn(options);
  const init = model.init(0);
  const shapes = new Map([...Tree.flatten(init)].map(([p, t]) => [p, t.shape] as const));
  Tree.dispose(init);

  // Decode each weight group (its shards concatenated in order), rename, check each shape.
  const out = new Map<string, tf.Tensor>();
  const decoded: tf.Tensor[] = [];
  try {
    for (const group of doc.weightsManifest) {
      const parts: Uint8Array[] = [];
      for (const p of group.paths) {
        const shard = `${dir.replace(/\/$/, "")}/${p}`;
        try {
          parts.push(await Deno.readFile(shard));
        } catch (e) {
          fail(`cannot read shard ${shard} (${describe(e)})`);
        }
      }
      const bytes = concatBytes(parts);
      const size = group.weights.reduce((n, w) => n + 4 * sizeOf(w.shape), 0);
      if (bytes.byteLength !== size) {
        fail(`shards [${group.paths}] hold ${bytes.byteLength} bytes, the manifest needs ${size}`);
      }
      const tensors = tf.io.decodeWeights(bytes.buffer as ArrayBuffer, group.weights);
      decoded.push(...Object.values(tensors));
      for (const w of group.weights) {
        const t = tensors[w.name];
        const path = paramPath(w.name);
        if (path === undefined) fail("is not a weight of the idealo RDN", w.name);
        const want = shapes.get(path);
        if (want === undefined) {
          fail(`maps to ${path}, which RDN ${JSON.stringify(options)} lacks`, w.name);
        }
        if (!sameShape(t.shape, want)) {
          fail(`has shape [${t.shape}] but ${path} needs [${want}]`, w.name);
        }
        if (out.has(path)) fail(`is a second weight for ${path}`, w.name);
        out.set(path, t);
      }
    }
    const missing = [...shapes.keys()].filter((p) => !out.has(p));
    if (missing.length > 0) fail(`has no weights for [${missing.join(", ")}]`);
  } catch (e) {
    tf.dispose(decoded);
    throw e;
  }
  const params = Tree.unflatten(out);
  return {
    model,
    params,
    info: {
      name,
      scale: options.upscale,
      file,
      options,
      parameters: Tree.size(params),
      range: [0, 255],
    },
  };
}

/** The RDN options of an idealo Keras topology; checks the conv layers that it implies. */
function inferOptions(
  layers: ReadonlyArray<unknown>,
  fail: (reason: string, weight?: string) => never,
): Rdn.Options<number> {
  const convs = new Map<string, ConvLayer>();
  let upsampling: number | undefined;
  for (const l of layers) {
    const other = OtherLayer.safeParse(l);
    if (!other.success) return fail(`unexpected layer: ${z.prettifyError(other.error)}`);
    const { class_name, config } = other.data;
    if (class_name === "Conv2D") {
      const c = Conv.safeParse(l);
      if (!c.success) return fail(`unsupported Conv2D ${config.name}: ${z.prettifyError(c.error)}`);
      convs.set(config.name, c.data.config);
    } else if (class_name === "UpSampling2D") {
      const u = Upsampling.safeParse(l);
      if (!u.success) return fail(`unsupported UpSampling2D: ${z.prettifyError(u.error)}`);
      const [sh, sw] = u.data.config.size;
      if (sh !== sw || upsampling !== undefined) fail("expects one square UpSampling2D");
      upsampling = sh;
    } else if (!["InputLayer", "Activation", "Concatenate", "Add"].includes(class_name)) {
      fail(`layer ${config.name} of class ${class_name} is not part of the idealo RDN`);
    }
  }
  const conv = (name: string) => convs.get(name) ?? fail(`has no Conv2D layer ${name}`);
  const count = (re: RegExp) => [...convs.keys()].filter((n) => re.test(n)).length;
  if (upsampling === undefined) {
    return fail("has no UpSampling2D (only the 'ups' RDN is supported)");
  }
  if (![2, 3, 4].includes(upsampling)) fail(`upsamples ×${upsampling}; supported: ×2, ×3, ×4`);
  const options: Rdn.Options<number> = {
    numFeat: conv("F_0").filters,
    numBlock: count(/^LFF_[0-9]+$/),
    numConv: count(/^F_1_[0-9]+$/),
    growRate: conv("F_1_1").filters,
    kernel: conv("F_0").kernel_size[0],
    upscale: upsampling as Scale,
    upsampler: "nearest",
  };
  // Every Keras conv must be one of ours, with our kernel size (shapes are checked later).
  const model = Rdn.rdn(options);
  const ours = new Map<string, number>();
  const walk = (l: Nn.AnyLayer, path: string) => {
    if (l.kind === "conv2d") ours.set(path, l.meta.kernel ?? 3);
    for (const [n, c] of l.children) walk(c, path === "" ? n : `${path}.${n}`);
  };
  walk(model, "");
  for (const [name, c] of convs) {
    const path = layerPath(name);
    const kernel = path === undefined ? undefined : ours.get(path);
    if (kernel === undefined) fail(`Conv2D ${name} has no place in RDN ${JSON.stringify(options)}`);
    const [kh, kw] = c.kernel_size;
    if (kh !== kw || kh !== kernel) {
      fail(`Conv2D ${name} has kernel ${kh}×${kw}, ${path} has ${kernel}`);
    }
  }
  if (convs.size !== ours.size) {
    fail(`has ${convs.size} Conv2D layers, RDN ${JSON.stringify(options)} has ${ours.size}`);
  }
  return options;
}

const sizeOf = (shape: ReadonlyArray<number>) => shape.reduce((a, b) => a * b, 1);

const sameShape = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

function concatBytes(parts: ReadonlyArray<Uint8Array>): Uint8Array {
  if (parts.length === 1) return parts[0].slice();
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
