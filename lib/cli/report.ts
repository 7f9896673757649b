/**
 * `deno task report <run folder> [--layer <path>] [--images N] [--out FILE]`
 *
 * Writes `<run>/report.html`: the ODM paper's figures for one training run (loss curves, the
 * learning-rate schedule, Fig. 2b/2c, Fig. 1, 3a–c and 5 from the checkpoint on a few
 * evaluation images, the final table and the recipe), one self-contained page, and each
 * figure as its own SVG in `<run>/report/` (see `lib/Report.ts`). A folder written by
 * `deno task compare` (it holds `compare.json`) gets the comparison page instead: the table,
 * every method's curves, Fig. 4 and, for `--ablation`, Fig. 5 across its rows.
 *
 * - `--layer` the quantized layer of Fig. 1, 3b–c and 5 (default: the largest mismatch);
 * - `--images` how many evaluation images to probe (default 4; Fig. 4 of a comparison uses 2);
 * - `--out` the page's path (its figures go to the same path without `.html`).
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Report from "../Report.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  layer: z.string().min(1).optional(),
  images: z.coerce.number().int().positive().max(64).optional(),
  out: z.string().min(1).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task report <run or compare folder> [--layer <path>] [--images N] \
[--out FILE]
  --layer   the quantized layer of Fig. 1, 3b–c and 5 (default: the most mismatched one)
  --images  evaluation images to probe (default 4)
  --out     the page (default <folder>/report.html; figures in <folder>/report/)`;

const BOOLEANS = ["help"];

const isFile = (f: string) => Deno.stat(f).then((s) => s.isFile, () => false);

/** The whole `report` task as an Effect program; returns what was written. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const { args, flags } = Args.positionals(argv, BOOLEANS);
    const opts = Args.parse(Options, flags, BOOLEANS);
    if (opts.help) {
      console.log(USAGE);
      return undefined;
    }
    if (args.length !== 1) {
      throw new Error(
        `${args.length === 0 ? "no run folder given" : `one folder, got ${args.join(" ")}`}\n` +
          USAGE,
      );
    }
    const dir = args[0];
    const log = (l: string) => console.log(l);
    const started = performance.now();
    const compare = yield* Effect.promise(() => isFile(`${dir.replace(/\/+$/, "")}/compare.json`));
    const written = compare
      ? yield* Report.writeCompare(dir, {
        layer: opts.layer,
        probeImages: opts.images,
        out: opts.out,
        log,
      })
      : yield* Report.write(dir, { layer: opts.layer, images: opts.images, out: opts.out, log });
    console.log("");
    for (const f of written.findings) console.log(`- ${f}`);
    console.log(
      `\nwrote ${written.page} and ${written.figures.length} figure${
        written.figures.length === 1 ? "" : "s"
      } in ${Report.figureDir(written.page)}/ (${
        ((performance.now() - started) / 1000).toFixed(1)
      } s)`,
    );
    return written;
  });

if (import.meta.main) await Main.run(program(Deno.args));
