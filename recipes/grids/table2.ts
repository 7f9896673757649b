/**
 * The ODM paper's Table 2 as a sweep: EDSR, RDN and SRResNet ×4, each at W/A 2, 3 and 4 bits,
 * under ODM and the four methods it is compared with (PAMS, DDTB, DAQ, LSQ): 45 cells of 60K
 * steps each (their recipes' schedules). One table per network, in the paper's layout.
 *
 * ```sh
 * deno task sweep recipes/grids/table2.ts                       # one machine
 * deno task sweep recipes/grids/table2.ts --db postgres://… --out /shared/table2   # many
 * ```
 *
 * The base recipes start from FP32 checkpoints (`runs/<arch>-x4-fp32/checkpoint.bin`, trained
 * by `recipes/<arch>-x4-fp32.ts`): train those first.
 */
import * as Sweep from "../../lib/Sweep.ts";

export default Sweep.grid({
  name: "table2",
  cells: Sweep.product({
    recipe: ["edsr-x4-w2a2-odm", "rdn-x4-w2a2-odm", "srresnet-x4-w2a2-odm"],
    bits: [2, 3, 4],
    method: ["odm", "pams", "ddtb", "daq", "lsq"],
  }),
});
