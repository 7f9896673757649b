/**
 * `deno task import <file.pt|.pth|.safetensors> --arch edsr|rdn|srresnet|swinir --scale S
 * [--options '{"numFeat":64,…}'] [--numFeat N …] [--key params] --out runs/<name> [--force]
 * [--json]`
 *
 * Reads a PyTorch state dict (torch.save zip or legacy, or safetensors; no Python) in one of
 * the reference layouts (lib/Import.ts), converts it to our model and writes an FP32
 * checkpoint `<out>/checkpoint.bin` with its FP32 recipe, step 0. Then
 * `deno task eval --checkpoint <out>` evaluates it and a recipe's `model.checkpoint:
 * "<out>/checkpoint.bin"` starts training from it. Options not given are read from the file;
 * a wrong architecture, scale or width fails naming the first key and both shapes.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Checkpoint from "../Checkpoint.ts";
import * as Import from "../Import.ts";
import * as Recipe from "../Recipe.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

/** Option names a flag can set directly (`--numFeat 64`), over all architectures. */
const OPTION_FLAGS = [
  "numFeat",
  "numBlock",
  "resScale",
  "rgbRange",
  "numConv",
  "growRate",
  "kernel",
  "embedDim",
  "numLayers",
  "depth",
  "numHeads",
  "windowSize",
  "mlpRatio",
] as const;

const Options = z.object({
  arch: z.enum(["edsr", "rdn", "srresnet", "swinir"]),
  scale: z.enum(["2", "3", "4"]).transform(Number),
  options: z.string().optional(),
  key: z.string().min(1).optional(),
  out: z.string().min(1),
  force: z.literal(true).optional(),
  json: z.literal(true).optional(),
  help: z.literal(true).optional(),
  ...Object.fromEntries(OPTION_FLAGS.map((k) => [k, z.coerce.number().positive().optional()])),
}).strict();

const USAGE = `usage: deno task import <file.pt|.pth|.safetensors> --arch edsr|rdn|srresnet|swinir \
--scale 2|3|4 --out runs/<name>
                         [--options '{"numFeat":64,…}'] [--numFeat N …] [--key params] [--force]
  <file>      torch.save output (zip or legacy) or safetensors, in the EDSR-PyTorch, BasicSR,
              DDTB (SRResNet with BN) or SwinIR (lightweight) layout
  --arch      our architecture to load it into
  --scale     the model's upscaling factor (checked against the upsampler's shapes)
  --options   model options as JSON (BasicSR names); any left out are read from the file;
              each may also be given as its own flag (${
  OPTION_FLAGS.map((k) => `--${k}`).join(", ")
})
  --key       the wrapper key of the state dict (default: params_ema, params, state_dict, …)
  --out       folder for checkpoint.bin (refused if it holds one, unless --force)
  --json      print the summary as JSON`;

/** What the task prints with `--json`. */
export interface Summary {
  readonly file: string;
  readonly format: string;
  readonly key: string;
  readonly arch: string;
  readonly scale: number;
  readonly layout: string;
  readonly reference: string;
  readonly options: Readonly<Record<string, number>>;
  readonly inferred: ReadonlyArray<string>;
  readonly parameters: number;
  readonly checkpoint: string;
  readonly notes: ReadonlyArray<string>;
}

const parseJsonOptions = (s: string | undefined): Record<string, number> => {
  if (s === undefined) return {};
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch (e) {
    throw new Error(`--options is not JSON: ${(e as Error).message}`);
  }
  const r = z.record(z.string(), z.number()).safeParse(v);
  if (!r.success) throw new Error(`--options: ${z.prettifyError(r.error)}`);
  return r.data;
};

/** The whole `import` task as an Effect program. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const positional = argv.length > 0 && !argv[0].startsWith("--") ? argv[0] : undefined;
    const rest = positional === undefined ? argv : argv.slice(1);
    if (rest.includes("--help") || positional === undefined) {
      console.log(USAGE);
      if (positional === undefined && !rest.includes("--help")) {
        return yield* Effect.fail(new Error("no input file given"));
      }
      return undefined;
    }
    const opts = Args.parse(Options, rest, ["force", "json", "help"]);
    const given: Record<string, number> = { ...parseJsonOptions(opts.options) };
    for (const k of OPTION_FLAGS) {
      const v = (opts as Record<string, unknown>)[k];
      if (typeof v === "number") given[k] = v;
    }
    const out = opts.out.replace(/\/+$/, "");
    const file = `${out}/checkpoint.bin`;
    const exists = yield* Effect.promise(() => Deno.stat(file).then(() => true, () => false));
    if (exists && !opts.force) {
      return yield* Effect.fail(
        new Error(`${out} already holds a checkpoint (${file}): use --force to replace it`),
      );
    }
    const sd = yield* Effect.tryPromise({
      try: () => Import.readStateDict(positional, opts.key),
      catch: (e) => e as Error,
    });
    const name = out.split("/").pop() || `${opts.arch}-imported`;
    const imported = yield* Effect.try({
      try: () => Import.importStateDict(sd, opts.arch, opts.scale as 2 | 3 | 4, given, name),
      catch: (e) => e as Error,
    });
    const parameters = [...imported.params.values()].reduce((n, t) => n + t.size, 0);
    yield* Effect.promise(() => Deno.mkdir(out, { recursive: true }));
    yield* Checkpoint.write(file, {
      step: 0,
      params: imported.params,
      opt: new Map(),
      recipe: Recipe.toJSON(imported.recipe),
      meta: {
        imported: {
          file: positional,
          format: sd.format,
          key: sd.key,
          layout: imported.layout,
          reference: imported.reference,
        },
      },
    }).pipe(Effect.ensuring(Effect.sync(() => {
      for (const t of imported.params.values()) t.dispose();
    })));
    const summary: Summary = {
      file: positional,
      format: sd.format,
      key: sd.key,
      arch: opts.arch,
      scale: opts.scale,
      layout: imported.layout,
      reference: imported.reference,
      options: imported.options,
      inferred: imported.inferred,
      parameters,
      checkpoint: file,
      notes: imported.notes,
    };
    if (opts.json) {
      console.log(JSON.stringify(summary));
      return summary;
    }
    const o = Object.entries(imported.options).map(([k, v]) =>
      `${k} ${v}${imported.inferred.includes(k) ? "" : " (given)"}`
    );
    console.log(
      `read ${positional}: ${
        sd.format === "safetensors" ? "safetensors" : `torch.save (${sd.format})`
      }` +
        `${sd.key ? `, state dict under "${sd.key}"` : ""}, ${sd.tensors.size} tensors`,
    );
    console.log(`layout: ${imported.layout} (${imported.reference})`);
    console.log(
      `model: ${opts.arch} ×${opts.scale}${o.length ? `, ${o.join(", ")}` : ""}; ` +
        `${parameters.toLocaleString("en")} parameters`,
    );
    for (const n of imported.notes) console.log(`note: ${n}`);
    console.log(`wrote ${file} (FP32, step 0): deno task eval --checkpoint ${out}`);
    return summary;
  });

if (import.meta.main) {
  await Main.run(program(Deno.args), { prefer: "cpu", log: false });
}
