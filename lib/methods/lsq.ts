/**
 * LSQ-style weight ranges (Eq. 8 of the ODM paper, after Esser et al.'s learned step size):
 * `u_w` is itself a parameter, initialised to percentile_j(|W|), trained by the reconstruction
 * loss only; activations and everything else as ODM. The ODM paper's Table 7 (a) row.
 *
 * @module
 */
import type * as Method from "../Method.ts";
import * as Odm from "./odm.ts";

/** LSQ-style learnable `u_w`, no mismatch regulariser. */
export const lsq: Method.Method = {
  ...Odm.method({ weightRange: "learnable", merge: "reconstruction" }),
  name: "lsq",
  label: "LSQ-style learnable u_w (Eq. 8)",
  options: {},
};
