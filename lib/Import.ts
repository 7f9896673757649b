/**
 * Importing PyTorch weights: the state-dict layouts of the reference repositories mapped onto
 * our models' parameter paths, with every layout conversion done once, here.
 *
 * Layouts (the key names are the reference's own; file and line cited at each map below):
 *
 * | arch       | layout         | reference                                                     |
 * |------------|----------------|---------------------------------------------------------------|
 * | `edsr`     | `edsr-pytorch` | sanghyun-son/EDSR-PyTorch `src/model/edsr.py`, `common.py` (EDSR and EDSR-baseline releases) |
 * | `edsr`     | `basicsr`      | XPixelGroup/BasicSR `basicsr/archs/edsr_arch.py`             |
 * | `rdn`      | `edsr-pytorch` | EDSR-PyTorch `src/model/rdn.py` (= zysxmu/DDTB `model/rdn_org.py`) |
 * | `srresnet` | `ddtb`         | zysxmu/DDTB `model/bnsrresnet_org.py` (SRResNet with batch norm, the model of models/srresnet.ts) |
 * | `swinir`   | `swinir`       | JingyunLiang/SwinIR `models/network_swinir.py`, lightweight (`pixelshuffledirect`); BasicSR's `swinir_arch.py` has the same keys |
 *
 * BasicSR has no RDN (there is no `rdn_arch.py`), and its `MSRResNet`
 * (`basicsr/archs/srresnet_arch.py`) is a different network from our SRResNet (no batch norm,
 * LeakyReLU, 3×3 head, an extra `conv_hr`, a bilinear skip): such a file is refused with the
 * first key that does not fit, not mapped approximately.
 *
 * Conversions: conv weights OIHW → HWIO; linear weights `[out, in]` → `[in, out]`; the conv
 * before each pixel shuffle gets its output channels (and bias) permuted from PyTorch's
 * `PixelShuffle` order (CRD: channel `c·r² + k`) to tfjs `depthToSpace` order (DCR: `k·C + c`),
 * found from the model's own layers (a conv directly followed by a `pixelShuffle`); batch-norm
 * running statistics are copied as the buffers they are (`num_batches_tracked` is dropped).
 * Buffers our layers recompute are checked, not copied: EDSR-PyTorch's `MeanShift` convs must
 * be the identity with bias `∓rgbRange·mean`, SwinIR's `relative_position_index` must equal
 * ours, and `attn_mask` (made for the training patch size) is recomputed for each input.
 *
 * Options the flags leave out are read from the file (channels from the first conv, blocks by
 * counting keys, SwinIR's heads and window from the bias table). Then every parameter of the
 * model is looked up and its shape checked; the first key that is missing, has another shape,
 * or is left over is named with both shapes ({@link ImportError}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Nn from "./Nn.ts";
import * as Recipe from "./Recipe.ts";
import type { HostTensor } from "./Safetensors.ts";
import * as Safetensors from "./Safetensors.ts";
import * as Torch from "./Torch.ts";
import * as Tree from "./Tree.ts";
import * as Registry from "../models/registry.ts";
import { RGB_MEAN } from "../models/edsr.ts";

/** The architectures that can be imported. */
export type Arch = "edsr" | "rdn" | "srresnet" | "swinir";

/** The state-dict layouts we map. */
export type Layout = "edsr-pytorch" | "basicsr" | "ddtb" | "swinir";

/** A file's weights do not fit the requested model; the message names the key and shapes. */
export class ImportError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = "ImportError";
  }
}

/** A state dict read from a file. */
export interface StateDict {
  readonly file: string;
  readonly tensors: ReadonlyMap<string, HostTensor>;
  /** `zip`, `legacy` (torch.save) or `safetensors`. */
  readonly format: string;
  /** The wrapper key the tensors were under (`params`, `params_ema`, …), "" for none. */
  readonly key: string;
}

/** Reads a `.pt`/`.pth` (torch.save, zip or legacy) or `.safetensors` file. */
export async function readStateDict(file: string, key?: string): Promise<StateDict> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new ImportError(file, `cannot read (${(e as Error).message})`);
  }
  const isZip = bytes[0] === 0x50 && bytes[1] === 0x4b;
  const isPickle = bytes[0] === 0x80;
  if (!isZip && !isPickle && bytes.length >= 8) {
    // safetensors: a little-endian header length, then JSON starting with "{".
    const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
    if (n > 1 && n + 8 <= bytes.length && bytes[8] === 0x7b) {
      const c = Safetensors.decode(bytes, file);
      const names = [...c.tensors.keys()];
      const strip = names.length > 0 && names.every((n) => n.startsWith("module."));
      const tensors = new Map([...c.tensors].map(([k, t]) => [strip ? k.slice(7) : k, t]));
      return { file, tensors, format: "safetensors", key: "" };
    }
  }
  const ckpt = await Torch.decode(bytes, file);
  const sd = Torch.findStateDict(ckpt.object, file, key);
  return { file, tensors: sd.tensors, format: ckpt.format, key: sd.key };
}

// ---------------------------------------------------------------------------------------------
// Layouts: our parameter path → the reference's key.

/** How one layout names our parameters, and what else its files hold. */
interface LayoutMap {
  readonly layout: Layout;
  readonly reference: string;
  /** The file's key for our parameter `path` (a dotted path ending in the leaf name). */
  readonly key: (path: string, o: Options) => string;
  /** Keys every file of this layout has (how the layout is recognised). */
  readonly signature: ReadonlyArray<string>;
  /** Keys the file may hold that are not parameters of ours (buffers to check or drop). */
  readonly extra: (key: string) => boolean;
  /** Options read from the file (only those the user did not give are used). */
  readonly infer: (t: ReadonlyMap<string, HostTensor>) => Options;
}

/** Numeric model options (the recipe's `model.options`). */
export type Options = Readonly<Record<string, number>>;

const count = (t: ReadonlyMap<string, HostTensor>, re: RegExp) => {
  const found = new Set<string>();
  for (const k of t.keys()) {
    const m = re.exec(k);
    if (m) found.add(m[1]);
  }
  return found.size;
};

const dim = (t: ReadonlyMap<string, HostTensor>, key: string, i: number) => {
  const v = t.get(key);
  return v && v.shape.length > i ? v.shape[i] : undefined;
};

const defined = (o: Record<string, number | undefined>): Options =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Options;

/** Rewrites a path by the first matching rule. */
const rewrite = (path: string, rules: ReadonlyArray<readonly [RegExp, string]>): string => {
  for (const [re, to] of rules) if (re.test(path)) return path.replace(re, to);
  return path;
};

const isBnCounter = (k: string) => k.endsWith(".num_batches_tracked");

const LAYOUTS: Readonly<Record<Arch, ReadonlyArray<LayoutMap>>> = {
  edsr: [
    {
      // EDSR-PyTorch src/model/edsr.py: sub_mean/add_mean (MeanShift, a 1×1 conv, common.py
      // `class MeanShift`), head = Sequential(conv), body = Sequential(ResBlock × n, conv)
      // with ResBlock.body = Sequential(conv, ReLU, conv) (common.py `class ResBlock`),
      // tail = Sequential(Upsampler(conv, PixelShuffle, …), conv) (edsr.py `m_tail`).
      layout: "edsr-pytorch",
      reference: "EDSR-PyTorch src/model/edsr.py",
      signature: ["head.0.weight", "body.0.body.0.weight"],
      key: (p, o) =>
        rewrite(p, [
          [/^head\./, "head.0."],
          [/^body\.blocks\.(\d+)\.conv1\./, "body.$1.body.0."],
          [/^body\.blocks\.(\d+)\.conv2\./, "body.$1.body.2."],
          [/^body\.conv\./, `body.${o.numBlock ?? 16}.`],
          [/^upsample\.(\d+)\./, "tail.0.$1."],
          [/^tail\./, "tail.1."],
        ]),
      extra: (k) => /^(sub_mean|add_mean)\.(weight|bias)$/.test(k),
      infer: (t) =>
        defined({
          numFeat: dim(t, "head.0.weight", 0),
          numBlock: count(t, /^body\.(\d+)\.body\.0\.weight$/),
          rgbRange: t.has("sub_mean.bias")
            ? Math.round(-t.get("sub_mean.bias")!.values[0] / RGB_MEAN[0])
            : undefined,
        }),
    },
    {
      // BasicSR basicsr/archs/edsr_arch.py `class EDSR`: conv_first, body =
      // make_layer(ResidualBlockNoBN) (arch_util.py: conv1, relu, conv2), conv_after_body,
      // upsample = Upsample (arch_util.py: Conv2d + PixelShuffle per ×2 or one ×3), conv_last.
      // Its input is in [0, 1] and `(x − mean)·img_range` happens inside (edsr_arch.py
      // forward): with img_range 255 that is our [0, 255] model exactly.
      layout: "basicsr",
      reference: "BasicSR basicsr/archs/edsr_arch.py",
      signature: ["conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight"],
      key: (p) =>
        rewrite(p, [
          [/^head\./, "conv_first."],
          [/^body\.blocks\.(\d+)\.(conv[12])\./, "body.$1.$2."],
          [/^body\.conv\./, "conv_after_body."],
          [/^tail\./, "conv_last."],
        ]),
      extra: () => false,
      infer: (t) =>
        defined({
          numFeat: dim(t, "conv_first.weight", 0),
          numBlock: count(t, /^body\.(\d+)\.conv1\.weight$/),
        }),
    },
  ],
  rdn: [
    {
      // EDSR-PyTorch src/model/rdn.py (copied by zysxmu/DDTB model/rdn_org.py): SFENet1/2,
      // RDBs (ModuleList of RDB: convs = Sequential(RDB_Conv: conv = Sequential(Conv2d,
      // ReLU)), LFF), GFF = Sequential(1×1, k×k), UPNet = Sequential(conv, PixelShuffle, …,
      // conv): its last conv is our `tail`.
      layout: "edsr-pytorch",
      reference: "EDSR-PyTorch src/model/rdn.py",
      signature: ["SFENet1.weight", "RDBs.0.LFF.weight", "GFF.0.weight"],
      key: (p, o) =>
        rewrite(p, [
          [/^sfe1\./, "SFENet1."],
          [/^sfe2\./, "SFENet2."],
          [/^rdbs\.(\d+)\.convs\.(\d+)\./, "RDBs.$1.convs.$2.conv.0."],
          [/^rdbs\.(\d+)\.lff\./, "RDBs.$1.LFF."],
          [/^gff\./, "GFF."],
          [/^upsample\./, "UPNet."],
          [/^tail\./, `UPNet.${o.__upsampleLength}.`],
        ]),
      extra: () => false,
      infer: (t) =>
        defined({
          numFeat: dim(t, "SFENet1.weight", 0),
          kernel: dim(t, "SFENet1.weight", 2),
          numBlock: count(t, /^RDBs\.(\d+)\.LFF\.weight$/),
          numConv: count(t, /^RDBs\.0\.convs\.(\d+)\.conv\.0\.weight$/),
          growRate: dim(t, "RDBs.0.convs.0.conv.0.weight", 0),
        }),
    },
  ],
  srresnet: [
    {
      // zysxmu/DDTB model/bnsrresnet_org.py `class SRResNet`: conv_input (9×9, no bias), relu
      // (nn.PReLU()), residual = Sequential(_Residual_Block: conv1, in1 (BatchNorm2d), relu
      // (PReLU), conv2, in2), conv_mid, bn_mid, upscale = Sequential(conv, PixelShuffle(2),
      // PReLU, …), conv_output (9×9).
      layout: "ddtb",
      reference: "zysxmu/DDTB model/bnsrresnet_org.py",
      signature: ["conv_input.weight", "residual.0.conv1.weight", "bn_mid.running_var"],
      key: (p) =>
        rewrite(p, [
          [/^head\./, "conv_input."],
          [/^act\./, "relu."],
          [/^body\.blocks\.(\d+)\.conv1\./, "residual.$1.conv1."],
          [/^body\.blocks\.(\d+)\.bn1\./, "residual.$1.in1."],
          [/^body\.blocks\.(\d+)\.act\./, "residual.$1.relu."],
          [/^body\.blocks\.(\d+)\.conv2\./, "residual.$1.conv2."],
          [/^body\.blocks\.(\d+)\.bn2\./, "residual.$1.in2."],
          [/^body\.conv\./, "conv_mid."],
          [/^body\.bn\./, "bn_mid."],
          [/^upsample\./, "upscale."],
          [/^tail\./, "conv_output."],
        ]),
      extra: isBnCounter,
      infer: (t) =>
        defined({
          numFeat: dim(t, "conv_input.weight", 0),
          numBlock: count(t, /^residual\.(\d+)\.conv1\.weight$/),
        }),
    },
  ],
  swinir: [
    {
      // JingyunLiang/SwinIR models/network_swinir.py `class SwinIR` with
      // upsampler='pixelshuffledirect' (UpsampleOneStep: Conv2d + PixelShuffle), '1conv':
      // conv_first, patch_embed.norm, layers.i (RSTB: residual_group.blocks.j
      // (SwinTransformerBlock: norm1, attn.{relative_position_bias_table, qkv, proj}, norm2,
      // mlp.fc1/fc2), conv), norm, conv_after_body, upsample.0. Our paths are the same.
      layout: "swinir",
      reference: "SwinIR models/network_swinir.py",
      signature: ["conv_first.weight", "layers.0.residual_group.blocks.0.attn.qkv.weight"],
      key: (p) => p,
      extra: (k) => /\.attn\.relative_position_index$/.test(k) || /\.attn_mask$/.test(k),
      infer: (t) => {
        const table = t.get("layers.0.residual_group.blocks.0.attn.relative_position_bias_table");
        const embed = dim(t, "conv_first.weight", 0);
        const hidden = dim(t, "layers.0.residual_group.blocks.0.mlp.fc1.weight", 0);
        return defined({
          embedDim: embed,
          numLayers: count(t, /^layers\.(\d+)\.conv\.weight$/),
          depth: count(t, /^layers\.0\.residual_group\.blocks\.(\d+)\.norm1\.weight$/),
          numHeads: table?.shape[1],
          windowSize: table ? (Math.sqrt(table.shape[0]) + 1) / 2 : undefined,
          mlpRatio: embed && hidden ? hidden / embed : undefined,
        });
      },
    },
  ],
};

/** What a file's keys say about its origin, for the refusal of look-alikes. */
function recognise(keys: ReadonlySet<string>): string | undefined {
  if (keys.has("conv_first.weight") && keys.has("upconv1.weight") && keys.has("conv_hr.weight")) {
    return "BasicSR's MSRResNet (basicsr/archs/srresnet_arch.py: no batch norm, LeakyReLU, " +
      "a 3×3 conv_first, conv_hr and a bilinear skip), a different network from our SRResNet " +
      "(DDTB's, with batch norm and PReLU)";
  }
  if (keys.has("conv_before_upsample.0.weight")) {
    return "a classical SwinIR (upsampler 'pixelshuffle', conv_before_upsample + Upsample + " +
      "conv_last), while our SwinIR is the lightweight one ('pixelshuffledirect')";
  }
  if ([...keys].some((k) => k.startsWith("RRDB_trunk.") || k.startsWith("body.0.rdb1."))) {
    return "an ESRGAN RRDBNet, which is not one of our architectures";
  }
  return undefined;
}

/** Picks the layout of `arch` whose keys the file has. */
function detect(arch: Arch, sd: StateDict): LayoutMap {
  const keys = new Set(sd.tensors.keys());
  const found = LAYOUTS[arch].find((m) => m.signature.every((k) => keys.has(k)));
  if (found) return found;
  const what = recognise(keys);
  const layouts = LAYOUTS[arch].map((m) =>
    `${m.layout} (${m.reference}: ${m.signature.map((k) => `"${k}"`).join(", ")})`
  );
  const sample = [...keys].slice(0, 4).map((k) => `${k} [${sd.tensors.get(k)!.shape}]`);
  throw new ImportError(
    sd.file,
    (what ? `this looks like ${what}: it cannot be imported as --arch ${arch}. ` : "") +
      `no ${arch} layout fits: expected the keys of ${layouts.join(" or ")}; ` +
      `the file starts with ${sample.join(", ")}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Conversions.

/** How a parameter's values move from the file's layout to ours. */
type Conversion =
  | { readonly kind: "copy" }
  | { readonly kind: "conv"; readonly shuffle: number }
  | { readonly kind: "bias"; readonly shuffle: number }
  | { readonly kind: "linear" };

/** The conv paths directly followed by a pixel shuffle in a sequential, with the factor. */
function shuffledConvs(model: Nn.AnyLayer): Map<string, number> {
  const out = new Map<string, number>();
  Nn.walk(model, (path, layer) => {
    if (layer.kind !== "sequential") return;
    layer.children.forEach(([name, child], i) => {
      const next = layer.children[i + 1]?.[1];
      if (child.kind === "conv2d" && next?.kind === "pixelShuffle") {
        out.set(path === "" ? name : `${path}.${name}`, next.meta.factor as number);
      }
    });
  });
  return out;
}

/** The kind of every leaf layer by path (to tell conv weights from linear ones). */
function leafKinds(model: Nn.AnyLayer): Map<string, string> {
  const out = new Map<string, string>();
  Nn.walk(model, (path, layer) => {
    if (layer.children.length === 0) out.set(path, layer.kind);
  });
  return out;
}

const layerOf = (path: string) => path.slice(0, path.lastIndexOf("."));
const leafOf = (path: string) => path.slice(path.lastIndexOf(".") + 1);

/** The file-side shape of one of our parameters. */
function sourceShape(shape: ReadonlyArray<number>, c: Conversion): number[] {
  if (c.kind === "conv") return [shape[3], shape[2], shape[0], shape[1]];
  if (c.kind === "linear") return [shape[1], shape[0]];
  return [...shape];
}

/** Our layout of a file tensor. */
function convert(t: HostTensor, c: Conversion, shape: ReadonlyArray<number>): Float32Array {
  const v = t.values;
  if (c.kind === "copy") return Float32Array.from(v);
  if (c.kind === "linear") {
    const [inF, outF] = shape;
    const out = new Float32Array(inF * outF);
    for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) out[i * outF + o] = v[o * inF + i];
    return out;
  }
  // PyTorch PixelShuffle (CRD) channel c·r² + k ↔ depthToSpace (DCR) channel k·C + c.
  const r2 = c.shuffle * c.shuffle;
  const ours = (o: number, n: number) => {
    if (r2 === 1) return o;
    const per = n / r2;
    return (o % r2) * per + Math.floor(o / r2);
  };
  if (c.kind === "bias") {
    const out = new Float32Array(v.length);
    for (let o = 0; o < v.length; o++) out[ours(o, v.length)] = v[o];
    return out;
  }
  const [kh, kw, inC, outC] = shape;
  const out = new Float32Array(kh * kw * inC * outC);
  for (let o = 0; o < outC; o++) {
    const oo = ours(o, outC);
    for (let i = 0; i < inC; i++) {
      for (let y = 0; y < kh; y++) {
        for (let x = 0; x < kw; x++) {
          out[((y * kw + x) * inC + i) * outC + oo] = v[((o * inC + i) * kh + y) * kw + x];
        }
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The import.

/** The result of {@link importStateDict}. */
export interface Imported {
  /** The FP32 recipe of the model (store it with the checkpoint). */
  readonly recipe: Recipe.Recipe;
  readonly model: Nn.Layer<3, 3>;
  /** Our parameters (new tensors, the caller disposes them). */
  readonly params: Map<string, tf.Tensor>;
  readonly layout: Layout;
  readonly reference: string;
  /** The options used, and which of them were read from the file. */
  readonly options: Options;
  readonly inferred: ReadonlyArray<string>;
  /** Remarks for the user (conventions applied, buffers checked). */
  readonly notes: ReadonlyArray<string>;
}

/** Model defaults that need not be written into a recipe. */
const DEFAULTS: Options = { rgbRange: 255, kernel: 3, resScale: 1 };

const fmtOptions = (o: Options) =>
  Object.entries(o).filter(([k]) => !k.startsWith("__")).map(([k, v]) => `${k} ${v}`).join(", ");

/**
 * Maps a state dict onto our `arch` at `scale`: options not given are read from the file, the
 * layout is recognised from its first key, every parameter is converted, and the buffers are
 * checked. Throws {@link ImportError} naming the first key that does not fit.
 */
export function importStateDict(
  sd: StateDict,
  arch: Arch,
  scale: 2 | 3 | 4,
  given: Options = {},
  name = `${arch}-x${scale}-imported`,
): Imported {
  const fail = (reason: string): never => {
    throw new ImportError(sd.file, reason);
  };
  const map = detect(arch, sd);
  const fromFile = map.infer(sd.tensors);
  const notes: string[] = [];
  let options: Record<string, number> = { ...fromFile, ...given };
  if (
    arch === "edsr" && options.resScale === undefined && options.numFeat === 256 &&
    options.numBlock === 32
  ) {
    options.resScale = 0.1;
    notes.push(
      "resScale 0.1: EDSR with 32 blocks of 256 features is trained with --res_scale 0.1 in " +
        "EDSR-PyTorch (the file cannot say); pass --options '{\"resScale\":1}' otherwise",
    );
  }
  if (arch === "swinir" && options.depth !== undefined) {
    const depths = Array.from(
      { length: options.numLayers ?? 0 },
      (_, i) =>
        count(
          sd.tensors,
          new RegExp(`^layers\\.${i}\\.residual_group\\.blocks\\.(\\d+)\\.norm1\\.weight$`),
        ),
    );
    if (given.depth === undefined && depths.some((d) => d !== depths[0])) {
      fail(
        `the RSTBs have ${depths.join(", ")} blocks: our SwinIR (and a recipe's options) take ` +
          "one depth for every RSTB",
      );
    }
  }
  // Options equal to the models' defaults are left out of the recipe.
  for (const [k, v] of Object.entries(DEFAULTS)) if (options[k] === v) delete options[k];
  options = Object.fromEntries(Object.entries(options).filter(([k]) => !k.startsWith("__")));
  const inferred = Object.keys(fromFile).filter((k) => given[k] === undefined && k in options);
  let recipe: Recipe.Recipe;
  let model: Nn.Layer<3, 3>;
  try {
    recipe = Recipe.parse({
      name,
      model: { arch, scale, options },
      quant: { wbits: 32, abits: 32 },
      regularizer: { merge: "reconstruction" },
      train: { steps: 0 },
    }, `(import of ${sd.file})`);
    model = Registry.architecture(recipe.model).model;
  } catch (e) {
    return fail(`cannot build ${arch} ×${scale} (${fmtOptions(options)}): ${(e as Error).message}`);
  }
  const describe = `${arch} ×${scale} (${fmtOptions(options)})`;
  const shuffles = shuffledConvs(model);
  const kinds = leafKinds(model);
  const upsample = model.children.find(([n]) => n === "upsample")?.[1];
  const keyOpts = { ...options, __upsampleLength: upsample?.children.length ?? 0 };

  const init = Tree.flatten(model.init(0));
  const shapes = new Map([...init].map(([p, t]) => [p, t.shape] as const));
  Tree.dispose(Tree.unflatten(init));

  const used = new Set<string>();
  const params = new Map<string, tf.Tensor>();
  try {
    for (const [path, shape] of shapes) {
      const layer = layerOf(path);
      const kind = kinds.get(layer);
      const leaf = leafOf(path);
      const factor = shuffles.get(layer) ?? 1;
      const conversion: Conversion = kind === "conv2d" && leaf === "weight"
        ? { kind: "conv", shuffle: factor }
        : kind === "conv2d" && leaf === "bias"
        ? { kind: "bias", shuffle: factor }
        : kind === "linear" && leaf === "weight"
        ? { kind: "linear" }
        : { kind: "copy" };
      const key = map.key(path, keyOpts);
      const t = sd.tensors.get(key);
      const want = sourceShape(shape, conversion);
      if (!t) {
        const what = recognise(new Set(sd.tensors.keys()));
        fail(
          `"${key}" is missing: ${describe} needs it (${want.join("×") || "scalar"}) for our ` +
            `${path}` + (what ? `; the file looks like ${what}` : "") +
            ` (layout ${map.layout}, ${map.reference})`,
        );
      }
      if (t!.shape.join(",") !== want.join(",")) {
        const what = recognise(new Set(sd.tensors.keys()));
        fail(
          `"${key}" is [${t!.shape}] in the file, but ${describe} needs [${want}] for our ${path}` +
            (what ? `; the file looks like ${what}` : ": wrong --arch, --scale or options?"),
        );
      }
      used.add(key);
      params.set(path, tf.tensor(convert(t!, conversion, shape), [...shape], "float32"));
    }
    // What is left must be buffers this layout is known to carry.
    for (const [key, t] of sd.tensors) {
      if (used.has(key) || map.extra(key) || isBnCounter(key)) continue;
      const what = recognise(new Set(sd.tensors.keys()));
      fail(
        `"${key}" [${t.shape}] is in the file but ${describe} has no place for it` +
          (what ? `: the file looks like ${what}` : ": wrong --scale or options (more blocks?)"),
      );
    }
    checkBuffers(sd, map, options, notes);
  } catch (e) {
    for (const t of params.values()) t.dispose();
    throw e;
  }
  return {
    recipe,
    model,
    params,
    layout: map.layout,
    reference: map.reference,
    options,
    inferred,
    notes,
  };
}

/** Checks the buffers our layers recompute (see the module comment). */
function checkBuffers(sd: StateDict, map: LayoutMap, o: Options, notes: string[]): void {
  const fail = (reason: string): never => {
    throw new ImportError(sd.file, reason);
  };
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(b));
  if (map.layout === "edsr-pytorch" && sd.tensors.has("sub_mean.weight")) {
    const range = o.rgbRange ?? 255;
    for (const [name, sign] of [["sub_mean", -1], ["add_mean", 1]] as const) {
      const w = sd.tensors.get(`${name}.weight`), b = sd.tensors.get(`${name}.bias`);
      if (!w || !b) fail(`"${name}.weight" and "${name}.bias" must both be present`);
      const eye = [1, 0, 0, 0, 1, 0, 0, 0, 1];
      if (w!.values.length !== 9 || !eye.every((e, i) => close(w!.values[i], e))) {
        fail(`"${name}.weight" is not the identity: a MeanShift with rgb_std ≠ 1 is not supported`);
      }
      RGB_MEAN.forEach((m, i) => {
        if (!close(b!.values[i], sign * range * m)) {
          fail(
            `"${name}.bias"[${i}] is ${b!.values[i]}, but rgbRange ${range} with the DIV2K mean ` +
              `gives ${sign * range * m}`,
          );
        }
      });
    }
    notes.push(`checked: sub_mean/add_mean are the DIV2K mean shift at rgbRange ${range}`);
  }
  if (map.layout === "swinir") {
    const ws = o.windowSize ?? 8;
    const ours = Nn.relativePositionIndex(ws);
    let checked = 0;
    for (const [k, t] of sd.tensors) {
      if (!k.endsWith(".attn.relative_position_index")) continue;
      if (t.values.length !== ours.length || t.values.some((v, i) => v !== ours[i])) {
        fail(`"${k}" differs from the relative position index of a ${ws}×${ws} window`);
      }
      checked++;
    }
    if (checked > 0) notes.push(`checked: ${checked} relative_position_index buffers`);
    if ([...sd.tensors.keys()].some((k) => k.endsWith(".attn_mask"))) {
      notes.push("attn_mask buffers dropped: the mask is computed for each input size");
    }
  }
}
