/**
 * The max weight range (Eq. 7 of the ODM paper with f = max): `u_w = max|W|`, recomputed from
 * the current weights at every step, nothing learned; activations and everything else as ODM,
 * no mismatch regulariser.
 *
 * @module
 */
import type * as Method from "../Method.ts";
import * as Odm from "./odm.ts";

/** `u_w = max|W|`, no mismatch regulariser. */
export const max: Method.Method = {
  ...Odm.method({ weightRange: "max", merge: "reconstruction" }),
  name: "max",
  label: "max u_w (Eq. 7)",
  options: {},
};
