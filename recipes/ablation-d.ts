/**
 * Table 7 (d) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): (d) WCC + naive MR.
 * The one-word variation is `Baselines.ablations.d`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ablation-d", Baselines.ablations.d),
  name: "esrgan-slim-x4-w4a4-ablation-d",
});
