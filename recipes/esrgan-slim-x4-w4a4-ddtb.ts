/**
 * DDTB (dual bounds, per-image gate, SKT) on the default job: pretrained esrgan-slim ×4, W4A4, the default schedule and data,
 * so that it compares with `recipes/default.ts` batch for batch. The method is
 * `lib/methods/ddtb.ts`.
 */
import { ddtb } from "../lib/methods/ddtb.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export default Recipe.make({ ...base, name: "esrgan-slim-x4-w4a4-ddtb", method: ddtb });
