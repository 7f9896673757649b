/**
 * Baseline ddtb (DDTB (dual bounds, per-image gate)) on the default job: pretrained esrgan-slim ×4, W4A4, the default
 * schedule and data, reconstruction loss only. The variation is `Baselines.methods.ddtb`.
 */
import * as Baselines from "../lib/Baselines.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({
  ...Baselines.vary(base, "ddtb", Baselines.methods.ddtb),
  name: "esrgan-slim-x4-w4a4-ddtb",
});
