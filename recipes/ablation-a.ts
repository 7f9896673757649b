/**
 * Table 7 (a) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): (a) learnable u_w, reconstruction only.
 * The one-word variation is `Baselines.ablations.a`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ablation-a", Baselines.ablations.a),
  name: "esrgan-slim-x4-w4a4-ablation-a",
});
