/**
 * The built-in methods by name — the shorthands a recipe may write (`method: "pams"`) and what a
 * checkpoint's recorded method is rebuilt from — and the method sets `deno task compare` runs:
 * the comparison of Tables 2–5 and the ablation of Table 7, with the global-cosine row.
 *
 * @module
 */
import type * as Method from "../Method.ts";
import * as Daq from "./daq.ts";
import * as Ddtb from "./ddtb.ts";
import * as Lsq from "./lsq.ts";
import * as Max from "./max.ts";
import * as Odm from "./odm.ts";
import * as Pams from "./pams.ts";

export { Daq, Ddtb, Lsq, Max, Odm, Pams };

/** The shorthand names of the built-in methods. */
export const NAMES = ["odm", "pams", "ddtb", "daq", "lsq", "max"] as const;
export type Name = (typeof NAMES)[number];

/** A built-in method by name (with ODM's options, the only built-in that takes any). */
export function byName(
  name: string,
  options: Readonly<Record<string, unknown>> = {},
): Method.Method | undefined {
  switch (name) {
    case "odm":
      return Odm.method(options as Odm.Options);
    case "pams":
      return Pams.pams;
    case "ddtb":
      return Ddtb.ddtb;
    case "daq":
      return Daq.daq;
    case "lsq":
      return Lsq.lsq;
    case "max":
      return Max.max;
    default:
      return undefined;
  }
}

/** The methods of the comparison (Tables 2–5 of the ODM paper). */
export const comparison: Readonly<Record<string, Method.Method>> = {
  odm: Odm.odm,
  lsq: Lsq.lsq,
  max: Max.max,
  pams: Pams.pams,
  ddtb: Ddtb.ddtb,
  daq: Daq.daq,
};

/**
 * Table 7's ablation: (a) learnable u_w alone … (e) ODM, and (f): ODM with one cosine over all
 * of θ, which is Eq. 6 read literally (`regularizer.granularity: "global"`).
 */
export const ablation: Readonly<Record<string, Method.Method>> = {
  a: {
    ...Odm.method({ weightRange: "learnable", merge: "reconstruction" }),
    label: "(a) learnable u_w, reconstruction only",
  },
  b: {
    ...Odm.method({ weightRange: "clipCorrected", merge: "reconstruction" }),
    label: "(b) + WCC",
  },
  c: {
    ...Odm.method({ weightRange: "learnable", merge: "cooperative" }),
    label: "(c) + cooperative MR, no WCC",
  },
  d: {
    ...Odm.method({ weightRange: "clipCorrected", merge: "naive" }),
    label: "(d) WCC + naive MR",
  },
  e: {
    ...Odm.method({ weightRange: "clipCorrected", merge: "cooperative" }),
    label: "(e) WCC + cooperative MR (ODM)",
  },
  f: {
    ...Odm.method({ weightRange: "clipCorrected", merge: "cooperative", granularity: "global" }),
    label: "(f) ODM, one global cosine (Eq. 6 literally)",
  },
};
