/**
 * A method of your own, composed from the built-in ones: ODM (weight clipping correction and the
 * cooperative mismatch regulariser) with DDTB's activation quantizer (its zero-anchored grid and
 * learnable bounds) on the inputs of the dense convs, ODM's everywhere else — on the default job
 * (pretrained esrgan-slim ×4, W4A4, embedded data). `train`, `compare` and `cost` take it, and
 * `eval --checkpoint` rebuilds it from this module (recorded in the checkpoint).
 */
import type * as Method from "../lib/Method.ts";
import * as Ddtb from "../lib/methods/ddtb.ts";
import * as Odm from "../lib/methods/odm.ts";
import * as Recipe from "../lib/Recipe.ts";
import base from "./default.ts";

export const odmDdtbActs: Method.Method = {
  ...Odm.odm,
  name: "odm-ddtb-acts",
  label: "ODM, DDTB activations on the dense convs",
  options: {},
  scheme: (s) => [
    // First match wins: this rule before ODM's own.
    {
      match: "rdbs.*.convs.*",
      kinds: ["conv2d"],
      weight: Odm.quantizers(s).weight,
      input: Ddtb.activation(s.abits, { percentile: s.percentile }),
    },
    ...Odm.odm.scheme(s),
  ],
};

export default Recipe.make({
  ...base,
  name: "esrgan-slim-x4-w4a4-odm-ddtbacts",
  method: odmDdtbActs,
});
