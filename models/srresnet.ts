/**
 * SRResNet (Ledig et al., CVPR 2017) as the quantization papers use it: the SRResNet of DDTB
 * (Zhong et al., ECCV 2022; `zysxmu/DDTB`, `model/bnsrresnet_org.py`, the FP model its
 * quantized `bnsrresnet.py` starts from), which the ODM paper's SRResNet tables follow:
 *
 * - head: 9×9 conv 3 → 64 (no bias) + PReLU;
 * - body: 16 residual blocks `x + bn2(conv2(prelu(bn1(conv1(x)))))` (3×3 convs without bias,
 *   BatchNorm2d, one PReLU per block), then 3×3 conv + BN, plus the global skip from the head;
 * - upsampler: ×2 conv 64 → 256 + pixel shuffle 2 + PReLU, ×4 that twice; ×3 (not in DDTB,
 *   EDSR's rule) conv 64 → 576 + pixel shuffle 3 + PReLU;
 * - tail: 9×9 conv 64 → 3 (no bias). No mean shift; RGB in [0, 255].
 *
 * DDTB's PReLUs are `nn.PReLU()`: one slope shared by all channels (the default here too;
 * `sharedPrelu: false` gives one per channel). Parameter paths: `head`, `act`,
 * `body.blocks.{i}.conv1|bn1|act|conv2|bn2`, `body.conv`, `body.bn`, `upsample.{0,2,3,5}`,
 * `tail`. The SPEC §6 placement wraps the 32 residual-block convs.
 *
 * Batch norm: the pure training step cannot update running statistics (see
 * {@link Nn.batchNorm}), so by default the BNs are frozen (`bn: "running"`: train and eval
 * use the running statistics, i.e. the FP model's function), or fold them into the convs with
 * {@link Nn.foldBatchNorm} before quantizing. `bn: "batch"` normalises by batch statistics in
 * training, as PyTorch's `train()`, but then nothing refreshes the running statistics.
 *
 * NOTE: our pixel shuffle is tfjs's DCR order; PyTorch's `PixelShuffle` is CRD, so importing
 * DDTB's upsampler weights needs an output-channel permute.
 *
 * @module
 */
import * as Nn from "../lib/Nn.ts";
import type * as Quant from "../lib/Quant.ts";
import type * as Quantizer from "../lib/Quantizer.ts";

/** SRResNet options (BasicSR vocabulary). */
export interface Options<F extends number = 64> {
  /** Channels (default 64). */
  readonly numFeat?: F;
  /** Residual blocks (default 16). */
  readonly numBlock?: number;
  /** Upscaling factor: 2, 3 or 4. */
  readonly upscale: 2 | 3 | 4;
  /** Batch-norm statistics: `running` (frozen, default) or `batch` (see the module note). */
  readonly bn?: "running" | "batch";
  /** One PReLU slope for all channels, as DDTB's `nn.PReLU()` (default true). */
  readonly sharedPrelu?: boolean;
}

/** Builds SRResNet; `srresnet({ upscale: 4 })` is DDTB's ×4 model (1,546,771 parameters). */
export function srresnet<F extends number = 64>(o: Options<F>): Nn.Layer<3, 3> {
  const f = (o.numFeat ?? 64) as F;
  const n = o.numBlock ?? 16;
  const statistics = o.bn ?? "running";
  const shared = o.sharedPrelu ?? true;
  if (![2, 3, 4].includes(o.upscale)) {
    throw new RangeError(`srresnet: upscale must be 2, 3 or 4, got ${o.upscale}`);
  }
  const conv = (kernel = 3) => Nn.conv2d({ in: f, out: f, kernel, bias: false });
  const bn = () => Nn.batchNorm({ channels: f, statistics });
  const act = () => Nn.prelu({ channels: f, shared });
  const block = () =>
    Nn.residual(
      Nn.sequential(
        Nn.named("conv1", conv()),
        Nn.named("bn1", bn()),
        Nn.named("act", act()),
        Nn.named("conv2", conv()),
        Nn.named("bn2", bn()),
      ),
    );
  const up = (r: number) =>
    [
      Nn.conv2d({ in: f, out: f * r * r, bias: false }),
      Nn.pixelShuffle({ in: f * r * r, out: f, factor: r }),
      act(),
    ] as const;
  const upsample: Nn.Layer<F, F> = o.upscale === 4
    ? Nn.sequential(...up(2), ...up(2))
    : Nn.sequential(...up(o.upscale));
  return Nn.sequential(
    Nn.named("head", Nn.conv2d({ in: 3, out: f, kernel: 9, bias: false })),
    Nn.named("act", act()),
    Nn.named(
      "body",
      Nn.residual(
        Nn.sequential(
          Nn.named("blocks", Nn.repeat(n, block)),
          Nn.named("conv", conv()),
          Nn.named("bn", bn()),
        ),
      ),
    ),
    Nn.named("upsample", upsample),
    Nn.named("tail", Nn.conv2d({ in: f, out: 3, kernel: 9, bias: false })),
  );
}

/**
 * The placement of SPEC §6 for SRResNet: the 32 convs inside the residual blocks, weights and
 * input activations; head, body conv, upsampler, tail, BNs and PReLUs stay FP32.
 */
export const placement = (
  q: { readonly weight: Quantizer.Any; readonly input: Quantizer.Any },
): ReadonlyArray<Quant.Rule> => [{ match: "body.blocks.*.*", kinds: ["conv2d"], ...q }];
