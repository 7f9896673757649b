/**
 * Every shipped recipe validates, and the default one is the job the README describes; model
 * options are strict (a typo is refused naming the key, the architecture and its options); a
 * recipe's JSON form (a checkpoint's) rebuilds its method, built in or from its recipe module,
 * and recipes of the earlier format (method fields in `quant`/`distill`) still load.
 */
import {
  assertEquals,
  assertGreater,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import * as Quant from "../lib/Quant.ts";
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
  assertEquals([recipe.quant.wbits, recipe.quant.abits, recipe.method.name], [4, 4, "odm"]);
  // ODM as the paper runs it: weight clipping correction (no options over the defaults).
  assertEquals(recipe.method.options, {});
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

/** The quantizers a recipe places, by layer, as names (to compare two recipes' models). */
const placed = (r: Recipe.Recipe) =>
  Quant.layers(Registry.quantize(r, Registry.architecture(r.model))).map((l) =>
    `${l.path}: ${l.layer.spec.weight?.name ?? "-"} / ${l.layer.spec.input?.name ?? "-"}`
  );

Deno.test("a recipe's JSON form rebuilds its method: built in by name and options, yours from its module", async () => {
  for (const name of ["default", "ablation-a", "ablation-f", "esrgan-slim-x4-w4a4-pams"]) {
    const { recipe, module } = await loadRecipe(name);
    const json = JSON.parse(JSON.stringify(Recipe.toJSON(recipe, module)));
    const back = await Recipe.fromJSON(json, `${name}.json`);
    assertEquals(back.method.name, recipe.method.name, name);
    assertEquals(back.method.options, recipe.method.options, name);
    assertEquals(placed(back), placed(recipe), name);
  }
  // A method of your own comes back from the recipe module recorded with it.
  const { recipe, module } = await loadRecipe("esrgan-slim-x4-w4a4-odm-ddtbacts");
  const json = Recipe.toJSON(recipe, module) as { method: Record<string, unknown> };
  assertEquals(json.method.name, "odm-ddtb-acts");
  const back = await Recipe.fromJSON(json, "checkpoint.json");
  assertEquals(placed(back), placed(recipe));
  assertStringIncludes(placed(back).find((p) => p.startsWith("rdbs.0.convs.0"))!, "ddtb4");
  // Without the module, or with one that no longer defines it, the error says which.
  const orphan = { ...json, method: { name: "odm-ddtb-acts" } };
  await assertRejects(
    () => Recipe.fromJSON(orphan, "run/checkpoint.json"),
    Recipe.MethodUnavailable,
    'run/checkpoint.json: method "odm-ddtb-acts" is not built in and no recipe module was recorded',
  );
  const moved = {
    ...json,
    method: { ...json.method, module: new URL("./default.ts", module).href },
  };
  await assertRejects(
    () => Recipe.fromJSON(moved, "run/checkpoint.json"),
    Recipe.MethodUnavailable,
    'no longer exports a recipe whose method is "odm-ddtb-acts"',
  );
});

Deno.test("recipes of the earlier format load as the methods they described", async () => {
  const old = (quant: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    name: "old",
    model: { arch: "edsr", scale: 2, options: { numFeat: 4, numBlock: 1 } },
    quant: { wbits: 2, abits: 2, ...quant },
    train: { steps: 1 },
    ...extra,
  });
  const cases: Array<[Record<string, unknown>, Record<string, unknown>, string, unknown]> = [
    [{}, {}, "odm", {}],
    [{ weightRange: "clipCorrected" }, {}, "odm", {}],
    [{ weightRange: "learnable" }, { regularizer: { merge: "reconstruction" } }, "odm", {
      weightRange: "learnable",
    }],
    [{ weightRange: "max" }, {}, "odm", { weightRange: "max" }],
    [{ weightRange: "pams", activationRange: "pams" }, { distill: { weight: 1e3 } }, "pams", {}],
    [{ activationRange: "daq" }, {}, "daq", {}],
  ];
  for (const [quant, extra, name, options] of cases) {
    // As a recipe file would write it, and as a checkpoint of that format stored it.
    for (
      const r of [Recipe.parse(old(quant, extra)), await Recipe.fromJSON(old(quant, extra), "c")]
    ) {
      assertEquals([r.method.name, r.method.options], [name, options], JSON.stringify(quant));
      assertEquals(Object.keys(r.quant).sort(), ["abits", "percentile", "wbits"]);
    }
  }
  const ddtb = await Recipe.fromJSON(
    old({ activationRange: "ddtb", dynamicLayers: ["body.blocks.0.out"] }),
    "c",
  );
  assertEquals([ddtb.method.name, ddtb.decisions], ["ddtb", { dynamic: ["body.blocks.0.out"] }]);
  assertStringIncludes(placed(ddtb).find((p) => p.startsWith("body.blocks.0.out"))!, "gate");
});
