/** Every shipped recipe validates, and the default one is the job the README describes. */
import { assertEquals, assertGreater } from "@std/assert";
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
