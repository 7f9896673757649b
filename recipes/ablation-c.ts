/**
 * Table 7 (c) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): (c) + cooperative MR, no WCC.
 * The one-word variation is `Baselines.ablations.c`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ablation-c", Baselines.ablations.c),
  name: "esrgan-slim-x4-w4a4-ablation-c",
});
