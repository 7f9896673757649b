/**
 * SwinIR (Liang et al., ICCVW 2021), the lightweight SR model SwinIR-S, as defined by the
 * official repository `JingyunLiang/SwinIR`, `models/network_swinir.py` (`SwinIR(upscale=s,
 * img_size=64, window_size=8, img_range=1., depths=[6, 6, 6, 6], embed_dim=60,
 * num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect')`):
 *
 * - input: RGB in [0, 255] (like the other models here), rescaled to [0, 1] (`img_range` 1),
 *   reflect-padded on the bottom/right to a multiple of the window (`check_image_size`), minus
 *   the DIV2K mean (0.4488, 0.4371, 0.4040); the output is cropped back and rescaled;
 * - `conv_first` 3×3 3 → 60; `patch_embed.norm` LayerNorm; 4 RSTBs (6 Swin blocks each:
 *   LayerNorm, window attention with relative position bias, shift 4 on odd blocks with the
 *   −100 attention mask, LayerNorm, MLP 60 → 120 → 60 with GELU; then a 3×3 conv and the RSTB
 *   skip); `norm` LayerNorm; `conv_after_body` 3×3 + the skip from `conv_first`;
 * - `upsample` ("pixelshuffledirect", `UpsampleOneStep`): one 3×3 conv 60 → 3·s² + pixel
 *   shuffle s.
 *
 * Tensors stay NHWC throughout: the token sequences of SwinIR (`[B, H·W, C]`) are the same
 * numbers, so patch embed / unembed are identities. Parameter paths follow the official state
 * dict (`layers.{i}.residual_group.blocks.{j}.attn.qkv.weight`, …) except that linear weights
 * are stored `[in, out]` (transpose on import) and our pixel shuffle is DCR (permute the
 * upsampler's output channels on import).
 *
 * The SPEC §6 placement [D] wraps every Linear of the Swin blocks (qkv, proj, fc1, fc2) and each
 * RSTB's conv: 4 × 6 × 4 + 4 = 100 layers in SwinIR-S. The attention matmuls, `conv_first`,
 * `conv_after_body` and the upsampler stay FP32.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Nn from "../lib/Nn.ts";
import type * as Quant from "../lib/Quant.ts";
import type * as Quantizer from "../lib/Quantizer.ts";
import { RGB_MEAN } from "./edsr.ts";

/** SwinIR options (the official constructor's names, camel-cased). */
export interface Options<E extends number = 60> {
  /** Channels of the features and tokens (SwinIR-S: 60). */
  readonly embedDim?: E;
  /** Swin blocks per RSTB; one entry per RSTB (SwinIR-S: [6, 6, 6, 6]). */
  readonly depths?: ReadonlyArray<number>;
  /** Attention heads (the same in every RSTB; SwinIR-S: 6). */
  readonly numHeads?: number;
  /** Window side (SwinIR-S: 8); the shift is half of it. */
  readonly windowSize?: number;
  /** MLP hidden size over embedDim (SwinIR-S: 2). */
  readonly mlpRatio?: number;
  /** Upscaling factor. */
  readonly upscale: 2 | 3 | 4;
  /** Pixel value range of the model's input and output (default 255). */
  readonly rgbRange?: number;
}

/**
 * Builds SwinIR; `swinir({ upscale: 2 })` is SwinIR-S ×2 (910,152 parameters, the relative
 * position bias tables included).
 */
export function swinir<E extends number = 60>(o: Options<E>): Nn.Layer<3, 3> {
  const e = (o.embedDim ?? 60) as E;
  const depths = o.depths ?? [6, 6, 6, 6];
  const heads = o.numHeads ?? 6;
  const ws = o.windowSize ?? 8;
  const mlpRatio = o.mlpRatio ?? 2;
  const s = o.upscale;
  const rgbRange = o.rgbRange ?? 255;
  if (![2, 3, 4].includes(s)) throw new RangeError(`swinir: upscale must be 2, 3 or 4, got ${s}`);
  if (depths.length === 0) throw new RangeError("swinir: depths must not be empty");
  const children: ReadonlyArray<Nn.Child> = [
    ["conv_first", Nn.conv2d({ in: 3, out: e })],
    ["patch_embed", Nn.sequential(Nn.named("norm", Nn.layerNorm({ channels: e })))],
    [
      "layers",
      Nn.repeat<E>(
        depths.length,
        (i) => Nn.rstb({ channels: e, depth: depths[i], heads, window: ws, mlpRatio }),
      ),
    ],
    ["norm", Nn.layerNorm({ channels: e })],
    ["conv_after_body", Nn.conv2d({ in: e, out: e })],
    [
      "upsample",
      Nn.sequential(
        Nn.conv2d({ in: e, out: 3 * s * s }),
        Nn.pixelShuffle({ in: 3 * s * s, out: 3, factor: s }),
      ),
    ],
  ];
  return Nn.composite({
    kind: "swinir",
    in: 3,
    out: 3,
    children,
    meta: { embedDim: e, depths, numHeads: heads, windowSize: ws, mlpRatio, factor: s },
    // NOTE: no tf.tidy here: quantized layers inside report their inputs through ctx.tap, read
    // after the forward pass (the caller's tidy frees the intermediates).
    forward: (run, _p, x) => {
      const [, h, w] = x.shape;
      const ph = (ws - (h % ws)) % ws, pw = (ws - (w % ws)) % ws;
      const mean = tf.tensor1d(RGB_MEAN.slice());
      let t = tf.div(x, rgbRange);
      if (ph > 0 || pw > 0) {
        t = tf.mirrorPad(t as tf.Tensor4D, [[0, 0], [0, ph], [0, pw], [0, 0]], "reflect");
      }
      const first = run("conv_first", tf.sub(t, mean));
      const deep = run("norm", run("layers", run("patch_embed", first)));
      const body = tf.add(run("conv_after_body", deep), first);
      const y = tf.mul(tf.add(run("upsample", body), mean), rgbRange);
      return ph > 0 || pw > 0 ? tf.slice(y, [0, 0, 0, 0], [-1, h * s, w * s, -1]) : y;
    },
  });
}

/**
 * The placement of SPEC §6 [D] for SwinIR: every Linear inside the Swin blocks (qkv, proj, fc1,
 * fc2) and each RSTB's conv, weights and input activations.
 */
export const placement = (
  q: { readonly weight: Quantizer.Any; readonly input: Quantizer.Any },
): ReadonlyArray<Quant.Rule> => [
  { match: "layers.*.residual_group.blocks.**", kinds: ["linear"], ...q },
  { match: "layers.*.conv", kinds: ["conv2d"], ...q },
];
