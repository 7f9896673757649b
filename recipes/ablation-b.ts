/**
 * Table 7 (b) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): + WCC.
 * The method is `Methods.ablation.b` (lib/methods/mod.ts).
 */
import * as Methods from "../lib/methods/mod.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...base,
  name: "esrgan-slim-x4-w4a4-ablation-b",
  method: Methods.ablation.b,
});
