/**
 * Where methods put their quantizers, by architecture family: the ODM paper's placement
 * (SPEC §6: each model's `placement`, weights and inputs of the listed layers) and the places
 * of PAMS and DDTB, which quantize activations in the data path itself (the skip path and the
 * body output of EDSR's blocks, the input of RDN's blocks and dense steps: identity `point`
 * layers of the models).
 *
 * @module
 */
import type * as Method from "../Method.ts";
import type * as Quant from "../Quant.ts";
import type * as Quantizer from "../Quantizer.ts";
import * as Edsr from "../../models/edsr.ts";
import * as Rdn from "../../models/rdn.ts";
import * as Srresnet from "../../models/srresnet.ts";
import * as Swinir from "../../models/swinir.ts";

/** A weight and an activation quantizer. */
export interface Pair {
  readonly weight: Quantizer.Any;
  readonly input: Quantizer.Any;
}

/** SPEC §6: the placement of the ODM paper for each family. */
export function odm(family: Method.Family, q: Pair): ReadonlyArray<Quant.Rule> {
  switch (family) {
    case "edsr":
      return Edsr.placement(q);
    case "rdn":
      return Rdn.placement(q);
    case "srresnet":
      return Srresnet.placement(q);
    case "swinir":
      return Swinir.placement(q);
  }
}

/**
 * PAMS's places, also DDTB's (colorjam/PAMS `model/edsr.py` `PAMS_ResBlock`, `model/rdn.py`
 * `PAMS_RDB`, `PAMS_RDB_Conv_in`, `PAMS_RDN`; zysxmu/DDTB `model/edsr.py`, `model/rdn.py` the
 * same with its own quantizers):
 *
 * - EDSR: both block convs' weights; activations on the skip path (`quant_act1`), after the
 *   ReLU (`quant_act2`, conv2's input) and on the scaled body output (`quant_act3`). conv1 reads
 *   the block input unquantized (block 0's is the FP head output).
 * - RDN: the weights of every dense conv, LFF and both GFF convs; activations on each RDB's
 *   input (`act1`, which both the dense path and the residual read), on the concatenated
 *   input of every dense step after the first (`act`, carried on in the concatenation), before
 *   LFF (`act2`) and before GFF's 1×1 conv (`PAMS_RDN.act`). GFF's 3×3 conv reads FP input.
 * - SRResNet and SwinIR: neither repository has them quantized this way; the ODM placement.
 *
 * `weightOf(path)` may give another weight quantizer per layer (DDTB's RDN: min/max weights).
 */
export function dataPath(family: Method.Family, q: Pair): ReadonlyArray<Quant.Rule> {
  const w = { weight: q.weight };
  const a = { input: q.input };
  // A conv that reads data quantized upstream is counted at the activation bits (as the
  // papers' tables count PAMS and DDTB): its input is a quantizer's output (RDN's dense steps)
  // or the sum of two (EDSR's block input, skip + body output).
  const upstream = { ...w, inputBits: q.input.bits };
  switch (family) {
    case "edsr":
      return [
        { match: "body.blocks.*.conv1", kinds: ["conv2d"], ...upstream },
        { match: "body.blocks.*.conv2", kinds: ["conv2d"], ...w, ...a },
        { match: "body.blocks.*.skip", kinds: ["point"], ...a },
        { match: "body.blocks.*.out", kinds: ["point"], ...a },
      ];
    case "rdn":
      return [
        { match: "rdbs.*.input", kinds: ["point"], ...a },
        { match: "rdbs.*.convs.*", kinds: ["point"], ...a },
        { match: "rdbs.*.convs.*", kinds: ["conv2d"], ...upstream },
        { match: "rdbs.*.lff", kinds: ["conv2d"], ...w, ...a },
        { match: "gff.0", kinds: ["conv2d"], ...w, ...a },
        { match: "gff.1", kinds: ["conv2d"], ...w },
      ];
    case "srresnet":
    case "swinir":
      return odm(family, q);
  }
}
