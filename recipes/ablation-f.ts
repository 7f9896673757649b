/**
 * Table 7 (f) of the ODM paper, from the default job (pretrained esrgan-slim ×4, W4A4, the
 * default schedule and data): ODM with one global cosine (Eq. 6 read literally).
 * The method is `Methods.ablation.f` (lib/methods/mod.ts).
 */
import * as Methods from "../lib/methods/mod.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...base,
  name: "esrgan-slim-x4-w4a4-ablation-f",
  method: Methods.ablation.f,
});
