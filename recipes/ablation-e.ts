/**
 * Table 7 (e) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): (e) WCC + cooperative MR (ODM).
 * The one-word variation is `Baselines.ablations.e`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ablation-e", Baselines.ablations.e),
  name: "esrgan-slim-x4-w4a4-ablation-e",
});
