/**
 * Table 7 (b) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): (b) + WCC.
 * The one-word variation is `Baselines.ablations.b`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ablation-b", Baselines.ablations.b),
  name: "esrgan-slim-x4-w4a4-ablation-b",
});
