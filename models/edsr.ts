/**
 * EDSR (Lim et al., 2017), the baseline configuration the quantization papers use:
 * 16 residual blocks of 64 channels, res_scale 1, 3×3 convs with bias, pixel-shuffle
 * upsampler, RGB in [0, 255] with the DIV2K mean shift.
 *
 * Parameter paths: `head`, `body.blocks.{i}.conv1|conv2`, `body.conv`, `upsample.{0,2}`, `tail`;
 * identity points `body.blocks.{i}.skip|out` mark where other methods quantize activations.
 * The quantization placement of the ODM paper (SPEC §6) wraps the 32 convs inside the residual
 * blocks (weights and inputs); head, body-last conv, upsampler and tail stay FP32.
 *
 * @module
 */
import * as Nn from "../lib/Nn.ts";
import type * as Quant from "../lib/Quant.ts";
import type * as Quantizer from "../lib/Quantizer.ts";

/** DIV2K RGB mean used by EDSR's MeanShift. */
export const RGB_MEAN = [0.4488, 0.4371, 0.404] as const;

/** EDSR options (BasicSR vocabulary). */
export interface Options<F extends number = 64> {
  /** Channels (default 64). */
  readonly numFeat?: F;
  /** Residual blocks (default 16). */
  readonly numBlock?: number;
  /** Upscaling factor: 2, 3 or 4. */
  readonly upscale: 2 | 3 | 4;
  /** Residual scaling (default 1). */
  readonly resScale?: number;
  /** Pixel value range (default 255). */
  readonly rgbRange?: number;
}

/**
 * A residual block `x + resScale · conv2(relu(conv1(x)))`, with the skip path and the scaled
 * body output marked (`skip`, `out`: identity points where PAMS and DDTB put activation
 * quantizers, colorjam/PAMS `model/edsr.py` `PAMS_ResBlock.forward`).
 */
const block = <F extends number>(f: F, resScale: number) =>
  Nn.residual(
    Nn.sequential(
      Nn.named("conv1", Nn.conv2d({ in: f, out: f })),
      Nn.relu(f),
      Nn.named("conv2", Nn.conv2d({ in: f, out: f })),
    ),
    resScale,
    { skip: Nn.point(f), out: Nn.point(f) },
  );

/** The upsampler: ×2 / ×3 one conv + shuffle, ×4 two (conv 64→256 + shuffle 2, twice). */
function upsampler<F extends number>(f: F, scale: 2 | 3 | 4): Nn.Layer<F, F> {
  const conv = (r: number) => Nn.conv2d({ in: f, out: f * r * r });
  const shuffle = (r: number) => Nn.pixelShuffle({ in: f * r * r, out: f, factor: r });
  return scale === 4
    ? Nn.sequential(conv(2), shuffle(2), conv(2), shuffle(2))
    : Nn.sequential(conv(scale), shuffle(scale));
}

/** Builds EDSR; `edsr({ upscale: 4 })` is EDSR-baseline ×4 (1,517,571 parameters). */
export function edsr<F extends number = 64>(o: Options<F>): Nn.Layer<3, 3> {
  const f = (o.numFeat ?? 64) as F;
  const n = o.numBlock ?? 16;
  const resScale = o.resScale ?? 1;
  if (![2, 3, 4].includes(o.upscale)) {
    throw new RangeError(`edsr: upscale must be 2, 3 or 4, got ${o.upscale}`);
  }
  return Nn.sequential(
    Nn.named("subMean", Nn.meanShift({ mean: RGB_MEAN, sign: -1, rgbRange: o.rgbRange })),
    Nn.named("head", Nn.conv2d({ in: 3, out: f })),
    Nn.named(
      "body",
      Nn.residual(
        Nn.sequential(
          Nn.named("blocks", Nn.repeat(n, () => block(f, resScale))),
          Nn.named("conv", Nn.conv2d({ in: f, out: f })),
        ),
      ),
    ),
    Nn.named("upsample", upsampler(f, o.upscale)),
    Nn.named("tail", Nn.conv2d({ in: f, out: 3 })),
    Nn.named("addMean", Nn.meanShift({ mean: RGB_MEAN, sign: 1, rgbRange: o.rgbRange })),
  );
}

/**
 * The ODM paper's placement for EDSR (SPEC §6): the convs inside the residual blocks,
 * weights and input activations.
 */
export const placement = (
  q: { readonly weight: Quantizer.Any; readonly input: Quantizer.Any },
): ReadonlyArray<Quant.Rule> => [{ match: "body.blocks.*.*", kinds: ["conv2d"], ...q }];
