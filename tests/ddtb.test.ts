/**
 * DDTB's decisions and its cost: the gated layers it picks from data are recorded in the recipe
 * (and survive the checkpoint's JSON form), the gates sit exactly there, bad choices are named,
 * and `Cost.of` charges each gate's storage and arithmetic (counted here by hand). The
 * quantizers themselves are checked against the official code in tests/methods.test.ts.
 */
import { Effect } from "effect";
import { assert, assertAlmostEquals, assertEquals, assertGreater, assertThrows } from "@std/assert";
import * as Cost from "../lib/Cost.ts";
import * as Data from "../lib/Data.ts";
import * as Ddtb from "../lib/methods/ddtb.ts";
import * as Quant from "../lib/Quant.ts";
import * as Recipe from "../lib/Recipe.ts";
import * as Tree from "../lib/Tree.ts";
import * as Registry from "../models/registry.ts";
import "./_setup.ts";

const tinyDir = new URL("./fixtures/tiny/", import.meta.url).pathname;

const ddtbRecipe = (
  decisions?: Recipe.Input["decisions"],
  options: Record<string, number> = { numFeat: 4, numBlock: 2 },
) =>
  Recipe.parse({
    name: "t",
    model: { arch: "edsr", scale: 2, options },
    method: "ddtb",
    ...(decisions ? { decisions } : {}),
    quant: { wbits: 2, abits: 2 },
    train: { steps: 12, batch: 2, patch: 6, calibrationBatches: 2 },
  });

const gatedPaths = (model: ReturnType<typeof Registry.quantize>) =>
  Quant.layers(model).filter((l) => l.layer.spec.input?.name.includes("gate")).map((l) => l.path);

Deno.test("DDTB's gated layers: decided once, recorded, kept through JSON; bad choices named", async () => {
  const recipe = ddtbRecipe();
  const built = await Effect.runPromise(Registry.build(recipe.model, 0));
  const ds = await Effect.runPromise(Data.load(tinyDir, 2));
  // Before the decision there is no model to build, and the error says why.
  assertThrows(() => Registry.quantize(recipe, built), Error, "recipe.decisions is not set");
  const resolved = await Effect.runPromise(Registry.resolve(recipe, built, ds));
  const again = await Effect.runPromise(Registry.resolve(recipe, built, ds));
  const chosen = resolved.decisions!.dynamic as string[];
  // 6 activation quantizers (each block's conv2 input, skip and output): int(0.3·6) = 1.
  assertEquals(chosen.length, 1);
  assertEquals(again.decisions, resolved.decisions, "deterministic");
  // A recipe that has its decisions keeps them (a resumed run does not decide again).
  assertEquals((await Effect.runPromise(Registry.resolve(resolved, built, ds))).decisions, {
    dynamic: chosen,
  });
  const model = Registry.quantize(resolved, built);
  assertEquals(gatedPaths(model), chosen);
  const init = Tree.flatten(model.init(0));
  for (const leaf of ["w1", "w2", "bn.weight", "bn.running_var"]) {
    assert(init.has(`${chosen[0]}.aq.gate.${leaf}`), `${chosen[0]}.aq.gate.${leaf}`);
  }
  Tree.dispose(Tree.unflatten(init));
  // The checkpoint's JSON form rebuilds the same model.
  const back = await Recipe.fromJSON(Recipe.toJSON(resolved), "(checkpoint)");
  assertEquals(back.decisions, resolved.decisions);
  assertEquals(gatedPaths(Registry.quantize(back, built)), chosen);
  // A gated layer that is not an activation quantizer is named.
  const bad = Recipe.parse({ ...ddtbRecipe(), method: Ddtb.method({ dynamic: ["head"] }) });
  const decided = await Effect.runPromise(Registry.resolve(bad, built, ds));
  assertThrows(() => Registry.quantize(decided, built), Error, `"head" is not an activation`);
  Tree.dispose(built.params);
});

Deno.test("Cost charges DDTB's gates: storage and arithmetic of each gate, counted by hand", () => {
  const size = { outputHeight: 64, outputWidth: 64, scale: 2 };
  const gated = ["body.blocks.0.conv2", "body.blocks.5.out"];
  const of = (decisions: Recipe.Input["decisions"]) => {
    const recipe = ddtbRecipe(decisions, {});
    return Cost.of(Registry.quantize(recipe, Registry.architecture(recipe.model)), size);
  };
  const withGates = of({ dynamic: gated });
  const staticOnly = of({ dynamic: [] });
  // A gate on a 64-channel input: convs 64·32 + 32·2 weights at 2 bits, a 32-channel BN (γ, β,
  // running mean and variance) in FP32: in 32-bit words.
  const c = 64, h = Ddtb.GATE_HIDDEN;
  const weights = c * h + h * 2;
  const storage = (weights * 2) / 32 + 4 * h;
  assertAlmostEquals((withGates.storageK - staticOnly.storageK) * 1000, 2 * storage, 1e-9);
  // Per image at 32×32 LR: the average pool adds every input value; the convs multiply and add
  // at each weight; BN, ReLU and the sigmoids a few operations per value.
  const elements = 32 * 32 * c;
  const flops = 2 * weights + elements + 4 * h + 4 * 2 + 2;
  assertEquals(withGates.flops - staticOnly.flops, 2 * flops);
  const bitops = 2 * weights * 2 * 2 + (elements + 4 * h + 4 * 2 + 2) * 32 * 32;
  assertEquals(withGates.bitops - staticOnly.bitops, 2 * bitops);
  assertGreater(withGates.bitopsT, staticOnly.bitopsT);
});
