/**
 * Models for the deployment tests (Export, Packed, Upscale): the default job's network
 * (pretrained esrgan-slim ×4 at W4A4) and small EDSR / RDN / SwinIR-S at W2A2, each built from
 * a recipe the way training builds it and calibrated (SPEC §2: 1st/99th percentiles of each
 * quantized layer's input, averaged) on LR crops of the embedded training photographs.
 */
import * as tf from "@tensorflow/tfjs";
import * as Image from "../lib/Image.ts";
import * as Nn from "../lib/Nn.ts";
import * as Pretrained from "../lib/Pretrained.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Resize from "../lib/Resize.ts";
import * as Tree from "../lib/Tree.ts";
import type { Params } from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** A model with its parameters and recipe. */
export interface Built {
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly recipe: Recipe.Recipe;
}

/** LR crops (`side`², bicubic ↓scale of an HR crop) of the first `n` embedded training images. */
export async function calibrationImages(
  scale: number,
  side: number,
  n = 3,
): Promise<Image.Image[]> {
  const names = [...Deno.readDirSync(`${ROOT}data/train`)].map((e) => e.name).filter((f) =>
    f.endsWith(".png")
  ).sort().slice(0, n);
  const out: Image.Image[] = [];
  for (const f of names) {
    const hr = await Image.read(`${ROOT}data/train/${f}`);
    out.push(Resize.downscale(Image.crop(hr, 0, 0, side * scale, side * scale), scale));
  }
  return out;
}

/** Calibrated quantizer parameters merged into `fp` (weights from `fp`, ranges from `images`). */
export function calibrate(
  model: Nn.AnyLayer,
  fp: Params,
  images: ReadonlyArray<Image.Image>,
): Params {
  const base = Tree.merge(model.init(0), fp);
  const inputs = new Map<string, tf.Tensor[]>();
  for (const img of images) {
    tf.tidy(() => {
      model.apply(
        base,
        Image.toTensor(img).expandDims(0),
        Nn.context("calibrate", {
          tap: (t) => {
            const list = inputs.get(t.path) ?? [];
            list.push(tf.keep(t.x.clone()));
            inputs.set(t.path, list);
          },
        }),
      );
    });
  }
  const cal = Quant.calibrate(model, base, inputs);
  for (const l of inputs.values()) tf.dispose(l);
  return Tree.merge(base, cal);
}

/** A recipe's quantized model, random FP weights (seeded), calibrated. */
export async function built(input: Recipe.Input, seed = 1): Promise<Built> {
  const recipe = Recipe.parse(input, "(test recipe)");
  const arch = Registry.architecture(recipe.model);
  const model = Registry.quantize(recipe, arch);
  const fp = arch.model.init(seed);
  const params = calibrate(model, fp, await calibrationImages(recipe.model.scale, 24));
  return { model, params, recipe };
}

/** The default job's model: pretrained esrgan-slim ×4 quantized W4A4 as recipes/default.ts, calibrated. */
export async function defaultModel(): Promise<Built> {
  const recipe = (await import("../recipes/default.ts")).default as Recipe.Recipe;
  const loaded = await Pretrained.load("esrgan-slim", 4);
  const arch = Registry.architecture(recipe.model);
  const model = Registry.quantize(recipe, arch);
  const params = calibrate(model, loaded.params, await calibrationImages(4, 32));
  return { model, params, recipe };
}

/** Small W2A2 configurations of EDSR, RDN and SwinIR-S (×2, ×4, ×2). */
export const small = {
  edsr: {
    name: "edsr-test",
    model: { arch: "edsr", scale: 2, options: { numFeat: 8, numBlock: 2 } },
    quant: { wbits: 2, abits: 2 },
    train: { steps: 0 },
  },
  rdn: {
    name: "rdn-test",
    model: { arch: "rdn", scale: 4, options: { numFeat: 8, numBlock: 2, numConv: 2, growRate: 4 } },
    quant: { wbits: 2, abits: 2 },
    train: { steps: 0 },
  },
  swinir: {
    name: "swinir-test",
    model: {
      arch: "swinir",
      scale: 2,
      options: { embedDim: 12, numLayers: 2, depth: 2, numHeads: 2, windowSize: 4 },
    },
    quant: { wbits: 2, abits: 2 },
    train: { steps: 0 },
  },
} as const satisfies Record<string, Recipe.Input>;
