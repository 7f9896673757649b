/**
 * Every shipped recipe validates, and the default one is the job the README describes; model
 * options are strict (a typo is refused naming the key, the architecture and its options).
 */
import { assertEquals, assertGreater, assertStringIncludes, assertThrows } from "@std/assert";
import * as Recipe from "../lib/Recipe.ts";
import * as Registry from "../models/registry.ts";
import { loadRecipe } from "../lib/cli/train.ts";

Deno.test("every recipe in recipes/ loads and validates", async () => {
  const names = [...Deno.readDirSync(new URL("../recipes/", import.meta.url))]
    .filter((e) => e.name.endsWith(".ts"))
    .map((e) => e.name.slice(0, -3))
    .sort();
  assertGreater(names.length, 3);
  for (const n of names) {
    const { recipe } = await loadRecipe(n);
    assertEquals(typeof recipe.name, "string", n);
  }
  const { recipe } = await loadRecipe("default");
  assertEquals([recipe.model.arch, recipe.model.scale, recipe.model.pretrained], [
    "esrgan-slim",
    4,
    true,
  ]);
  assertEquals([recipe.quant.wbits, recipe.quant.abits, recipe.quant.weightRange], [
    4,
    4,
    "clipCorrected",
  ]);
  assertEquals(recipe.regularizer.merge, "cooperative");
  const { recipe: odm } = await loadRecipe("odm");
  assertEquals([odm.quant.wbits, odm.train.steps, odm.train.batch, odm.train.patch], [
    2,
    60000,
    8,
    48,
  ]);
});

Deno.test("an unknown key in model.options is refused, naming the key, the architecture and its options", () => {
  const recipe = (arch: Recipe.Arch, options: Record<string, number>, pretrained = false) => ({
    name: "x",
    model: { arch, scale: 4 as const, options, pretrained },
    quant: { wbits: 4, abits: 4 },
    train: { steps: 1 },
  });
  const e = assertThrows(
    () => Recipe.parse(recipe("edsr", { numFeats: 16 })),
    Recipe.RecipeInvalid,
  );
  assertStringIncludes(
    e.message,
    "recipe.model.options.numFeats: unknown option for edsr (known: numFeat, numBlock, resScale, rgbRange)",
  );
  // Each architecture takes its own names (BasicSR's for edsr/rdn/srresnet, SwinIR's own).
  const ok: Array<[Recipe.Arch, Record<string, number>]> = [
    ["edsr", { numFeat: 8, numBlock: 2, resScale: 0.1, rgbRange: 255 }],
    ["rdn", { numFeat: 8, numBlock: 2, numConv: 2, growRate: 4, kernel: 3 }],
    ["srresnet", { numFeat: 8, numBlock: 2 }],
    ["swinir", { embedDim: 12, numLayers: 1, depth: 2, numHeads: 2, windowSize: 4, mlpRatio: 2 }],
    ["esrgan-slim", { numBlock: 1 }],
  ];
  for (const [arch, options] of ok) {
    Recipe.parse(recipe(arch, options));
    Registry.architecture({ arch, scale: 4, options }); // the model builds with them
  }
  const rdn = assertThrows(
    () => Recipe.parse(recipe("rdn", { resScale: 1 })),
    Recipe.RecipeInvalid,
  );
  assertStringIncludes(rdn.message, "recipe.model.options.resScale: unknown option for rdn");
  const swin = assertThrows(
    () => Recipe.parse(recipe("swinir", { numFeat: 60 })),
    Recipe.RecipeInvalid,
  );
  assertStringIncludes(swin.message, "(known: embedDim, numLayers, depth, numHeads,");
  // A pretrained network's options are fixed: any option would be ignored.
  const pre = assertThrows(
    () => Recipe.parse(recipe("esrgan-slim", { numBlock: 3 }, true)),
    Recipe.RecipeInvalid,
  );
  assertStringIncludes(
    pre.message,
    "recipe.model.options.numBlock: not used with model.pretrained",
  );
  // The registry refuses them too (callers that build without a parsed recipe).
  const m = assertThrows(
    () => Registry.architecture({ arch: "srresnet", scale: 4, options: { numBlocks: 2 } }),
    Registry.ModelError,
  );
  assertStringIncludes(m.message, "options.numBlocks: unknown option for srresnet");
});
