/**
 * RDN, the Residual Dense Network (Zhang, Tian, Kong, Zhong & Fu, CVPR 2018), in one
 * configurable definition covering two references:
 *
 * - **EDSR-PyTorch `src/model/rdn.py`** (the paper's authors' port, used by the quantization
 *   papers): config B = G0 64, D 16, C 8, G 64, 3×3 kernels; pixel-shuffle upsampler, ×2 / ×3
 *   `conv(G0 → G·r²) + PixelShuffle(r)`, ×4 twice `conv(· → 4G) + PixelShuffle(2)`, then a
 *   3×3 conv G → 3. No mean shift; RGB in [0, 255].
 * - **idealo `image-super-resolution` RDN** (the `@upscalerjs/esrgan-slim` / `esrgan-medium`
 *   npm weights, see `lib/Pretrained.ts`): the same trunk (`F_m1`, `F_0`, `F_d_c`, `LFF_d`,
 *   `GFF_1`, `GFF_2`) and the "ups" upsampler: conv 5×5 G0 → 64 + ReLU, conv 3×3 64 → 32 +
 *   ReLU, conv 3×3 32 → 3·r², nearest `UpSampling2D(r)`, conv 3×3 3·r² → 3.
 *
 * Forward: `F₋₁ = sfe1(x)`, `F₀ = sfe2(F₋₁)`, `F_d = RDB_d(F_{d−1})` with
 * `RDB(F) = F + lff([F, y₁, …, y_C])`, `y_c = ReLU(conv_c([F, y₁, …, y_{c−1}]))`;
 * `F_DF = gff.1(gff.0([F₁, …, F_D])) + F₋₁`; then the upsampler and the tail conv.
 *
 * Parameter paths follow EDSR-PyTorch's state dict, lower-cased: `sfe1`, `sfe2`,
 * `rdbs.{d}.convs.{c}`, `rdbs.{d}.lff`, `gff.0` (1×1), `gff.1` (3×3), `upsample.{i}`, `tail`.
 * The quantization placement of SPEC §6 wraps every RDB conv, every LFF and both GFF convs
 * (146 layers in config B); SFENet1/2, the upsampler and the tail stay FP32.
 *
 * NOTE: our pixel shuffle uses tfjs's DCR channel order (`depthToSpace`); EDSR-PyTorch's
 * `PixelShuffle` is CRD, so importing its `upsample` weights needs an output-channel permute.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import * as Nn from "../lib/Nn.ts";
import type * as Quant from "../lib/Quant.ts";
import type * as Quantizer from "../lib/Quantizer.ts";
import type { Params } from "../lib/Tree.ts";

/** RDN options: G0, D, C, G of the paper under BasicSR-style names. */
export interface Options<F extends number = 64> {
  /** G0: channels of the shallow features, the RDB outputs and the fused features (64). */
  readonly numFeat?: F;
  /** D: residual dense blocks (16). */
  readonly numBlock?: number;
  /** C: conv layers per RDB (8). */
  readonly numConv?: number;
  /** G: growth rate, channels each RDB conv adds (64). */
  readonly growRate?: number;
  /** Kernel of SFENet, the RDB convs and GFF's second conv (3). */
  readonly kernel?: number;
  /** Upscaling factor. */
  readonly upscale: 2 | 3 | 4;
  /**
   * `pixelShuffle` (EDSR-PyTorch, default) or `nearest` (idealo: three convs, nearest
   * upsampling, tail conv).
   */
  readonly upsampler?: "pixelShuffle" | "nearest";
}

/** The architectures of the paper and of the pretrained npm models (add `upscale`). */
export const configs = {
  /** Paper config A: D 20, C 6, G 32. */
  A: { numFeat: 64, numBlock: 20, numConv: 6, growRate: 32 },
  /** Paper config B (the RDN of the result tables): D 16, C 8, G 64. */
  B: { numFeat: 64, numBlock: 16, numConv: 8, growRate: 64 },
  /** `@upscalerjs/esrgan-slim`: idealo RDN C 1, D 2, G 4, G0 64. */
  "esrgan-slim": { numFeat: 64, numBlock: 2, numConv: 1, growRate: 4, upsampler: "nearest" },
  /** `@upscalerjs/esrgan-medium`: idealo RDN C 1, D 10, G 64, G0 64. */
  "esrgan-medium": { numFeat: 64, numBlock: 10, numConv: 1, growRate: 64, upsampler: "nearest" },
} as const satisfies Record<string, Omit<Options, "upscale">>;

/**
 * One residual dense block: `y + lff(denseBlock(y))` with `y = input(x)`, children `convs`,
 * `lff` and the identity point `input`; the dense block marks the input of each step after the
 * first (`convs.in<c>`). PAMS and DDTB quantize there (colorjam/PAMS `model/rdn.py`:
 * `PAMS_RDB.forward` `x = self.act1(x)`, `PAMS_RDB_Conv_in.forward` `if i > 0: x = self.act(x)`).
 */
function rdb<F extends number>(f: F, g: number, c: number, kernel: number): Nn.Layer<F, F> {
  const convs = Nn.denseBlock({ in: f, growth: g, layers: c, kernel, points: true });
  return Nn.residual(
    Nn.sequential(
      Nn.named("convs", convs),
      Nn.named("lff", Nn.conv2d({ in: convs.outChannels, out: f, kernel: 1 })),
    ),
    1,
    { input: Nn.point(f) },
  );
}

/** EDSR-PyTorch's UPNet without its last conv (that is `tail`). */
function shuffleUpsampler<F extends number>(
  f: F,
  g: number,
  scale: 2 | 3 | 4,
  kernel: number,
): Nn.Layer<F, number> {
  const shuffle = (r: number) => Nn.pixelShuffle({ in: g * r * r, out: g, factor: r });
  return scale === 4
    ? Nn.sequential(
      Nn.conv2d({ in: f, out: g * 4, kernel }),
      shuffle(2),
      Nn.conv2d({ in: g, out: g * 4, kernel }),
      shuffle(2),
    )
    : Nn.sequential(Nn.conv2d({ in: f, out: g * scale * scale, kernel }), shuffle(scale));
}

/** idealo's `_UPN` ("ups"): conv5 → 64, ReLU, conv3 → 32, ReLU, conv3 → 3r², nearest ×r. */
function nearestUpsampler<F extends number>(f: F, scale: 2 | 3 | 4): Nn.Layer<F, number> {
  const out = 3 * scale * scale;
  return Nn.sequential(
    Nn.conv2d({ in: f, out: 64, kernel: 5 }),
    Nn.relu(64),
    Nn.conv2d({ in: 64, out: 32 }),
    Nn.relu(32),
    Nn.conv2d({ in: 32, out }),
    Nn.upsampleNearest({ channels: out, factor: scale }),
  );
}

const PARTS = ["sfe1", "sfe2", "rdbs", "gff", "upsample", "tail"] as const;
type Parts = { readonly [K in (typeof PARTS)[number]]: Nn.AnyLayer };

/** The top level: a chain of the six parts with the global residual `gff(…) + sfe1(x)`. */
function network(parts: Parts, meta: Nn.Meta): Nn.Layer<3, 3> {
  const children: ReadonlyArray<Nn.Child> = PARTS.map((k) => [k, parts[k]] as const);
  const run = (p: Params, name: keyof Parts, x: tf.Tensor, ctx: Nn.Ctx) =>
    parts[name].apply((p[name] as Params | undefined) ?? {}, x, Nn.childContext(ctx, name));
  return {
    kind: "rdn",
    inChannels: 3,
    outChannels: 3,
    children,
    meta,
    init: (key) => Nn.initChildren(children, key),
    apply: (p, x, ctx) => {
      const shallow = run(p, "sfe1", x, ctx);
      const local = run(p, "rdbs", run(p, "sfe2", shallow, ctx), ctx);
      const fused = run(p, "gff", local, ctx).add(shallow);
      return run(p, "tail", run(p, "upsample", fused, ctx), ctx);
    },
    rebuild: (next) => network(Object.fromEntries(next) as Parts, meta),
  };
}

/**
 * Builds RDN. `rdn({ upscale: 4 })` is config B ×4 with EDSR-PyTorch's upsampler
 * (22,271,107 parameters); `rdn({ ...configs["esrgan-slim"], upscale: 4 })` is the
 * `@upscalerjs/esrgan-slim` ×4 network (233,451).
 */
export function rdn<F extends number = 64>(o: Options<F>): Nn.Layer<3, 3> {
  const f = (o.numFeat ?? 64) as F;
  const d = o.numBlock ?? 16;
  const c = o.numConv ?? 8;
  const g = o.growRate ?? 64;
  const kernel = o.kernel ?? 3;
  const upsampler = o.upsampler ?? "pixelShuffle";
  if (![2, 3, 4].includes(o.upscale)) {
    throw new RangeError(`rdn: upscale must be 2, 3 or 4, got ${o.upscale}`);
  }
  const upsample = upsampler === "nearest"
    ? nearestUpsampler(f, o.upscale)
    : shuffleUpsampler(f, g, o.upscale, kernel);
  const rdbs = Nn.concatOutputs(d, () => rdb(f, g, c, kernel));
  return network({
    sfe1: Nn.conv2d({ in: 3, out: f, kernel }),
    sfe2: Nn.conv2d({ in: f, out: f, kernel }),
    rdbs,
    gff: Nn.sequential(
      Nn.conv2d({ in: rdbs.outChannels, out: f, kernel: 1 }),
      Nn.conv2d({ in: f, out: f, kernel }),
    ),
    upsample,
    tail: Nn.conv2d({ in: upsample.outChannels, out: 3, kernel }),
  }, { numFeat: f, numBlock: d, numConv: c, growRate: g, kernel, upsampler, factor: o.upscale });
}

/**
 * The placement of SPEC §6 for RDN: every conv inside the RDBs (3×3 dense convs and the 1×1
 * LFF) and both GFF convs, weights and input activations; SFENet1/2, upsampler and tail FP32.
 */
export const placement = (
  q: { readonly weight: Quantizer.Any; readonly input: Quantizer.Any },
): ReadonlyArray<Quant.Rule> => [
  { match: "rdbs.*.convs.*", kinds: ["conv2d"], ...q },
  { match: "rdbs.*.lff", kinds: ["conv2d"], ...q },
  { match: "gff.*", kinds: ["conv2d"], ...q },
];
