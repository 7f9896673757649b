/**
 * Sweeps: a grid of training runs as code — recipe × method × bits × model × seed, the layout of
 * the ODM paper's Tables 2–4 — each cell one run whose result is its summary, and the tables of
 * the grid in the paper's layout at the end.
 *
 * A grid file exports one validated value:
 *
 * ```ts
 * import * as Sweep from "../../lib/Sweep.ts";
 *
 * export default Sweep.grid({
 *   name: "table2",
 *   cells: Sweep.product({
 *     recipe: ["edsr-x4-w2a2-odm", "rdn-x4-w2a2-odm"], // names in recipes/, files, or values
 *     method: ["odm", "pams", "ddtb", "daq", "lsq"], // built-in names, or "recipe"
 *     bits: [2, 3, 4], // W = A; or { w: 4, a: 8 }
 *     seed: [0],
 *   }),
 * });
 * ```
 *
 * Each cell becomes a recipe the way `deno task compare` makes one per method (the base recipe
 * with the cell's method, bits, model, seed and steps), validated before any work: an invalid
 * cell is refused naming the cell and the field. A cell lives in `<out>/<table>/<name>/` (a run
 * folder as `Train.run` writes it); cells of one table (default: the model, `edsr-x4`) share a
 * folder that is a compare folder (`compare.json`), so its report is `deno task report`'s
 * comparison page. The durable execution of the cells is `lib/SweepEngine.ts`; {@link runCell}
 * is one cell's work, run in a process of its own.
 *
 * @module
 */
import { Data as EffectData, Effect } from "effect";
import * as z from "zod";
import * as Backend from "./Backend.ts";
import * as Checkpoint from "./Checkpoint.ts";
import * as Cost from "./Cost.ts";
import * as Data from "./Data.ts";
import type * as Method from "./Method.ts";
import * as Recipe from "./Recipe.ts";
import * as Run from "./Run.ts";
import * as Train from "./Train.ts";
import * as Methods from "./methods/mod.ts";
import * as Registry from "../models/registry.ts";
import { type Row, table as compareTable } from "./cli/compare.ts";
import { loadRecipe } from "./cli/train.ts";

// ---------------------------------------------------------------------------------------------
// The grid

const bits = z.union([z.number().int().min(1).max(8), z.literal(32)]);
/** A name usable as a folder: letters, digits, `.`, `_`, `-`. */
const slug = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "letters, digits, . _ - only");
const archs = Object.keys(Recipe.modelOptions) as [Recipe.Arch, ...Recipe.Arch[]];
const isRecipeValue = (v: unknown): v is Recipe.Recipe =>
  typeof v === "object" && v !== null && typeof (v as Recipe.Recipe).name === "string" &&
  typeof (v as Recipe.Recipe).method === "object";

/** One cell of a grid, as a grid file writes it (see the module example). */
export const CellSchema = z.object({
  /** The base recipe: a name in `recipes/`, a file (relative to the grid file), or a value. */
  recipe: z.union([
    z.string().min(1),
    z.custom<Recipe.Recipe>(isRecipeValue, "expected a recipe name, a recipe file or a Recipe"),
  ]),
  /** A built-in method (lib/methods/), or `recipe`: the base recipe's own (default). */
  method: z.union([z.enum(Methods.NAMES), z.literal("recipe")]).default("recipe"),
  /** Weight and activation bits: one number for both, or `{ w, a }` (default: the recipe's). */
  bits: z.union([bits, z.object({ w: bits, a: bits }).strict()]).optional(),
  /**
   * Another architecture for the recipe (as `compare --model`: `esrgan-*` are pretrained), or
   * fields of `recipe.model` to replace (`{ options: { numBlock: 8 } }`).
   */
  model: z.union([
    z.enum(archs),
    z.object({
      arch: z.enum(archs).optional(),
      scale: z.union([z.literal(2), z.literal(3), z.literal(4)]).optional(),
      options: z.record(z.string(), z.number()).optional(),
      pretrained: z.boolean().optional(),
      checkpoint: z.string().optional(),
    }).strict(),
  ]).optional(),
  seed: z.number().int().optional(),
  /** Training steps (default: the grid's `steps`, else the recipe's). */
  steps: z.number().int().nonnegative().optional(),
  /** The cell's folder name in its table (default `w<W>a<A>-<method>-s<seed>`). */
  name: slug.optional(),
  /** The table (and folder) the cell belongs to (default `<arch>-x<scale>`). */
  table: slug.optional(),
}).strict();

/** The grid schema: a name and its cells. */
export const GridSchema = z.object({
  name: slug,
  /** Training steps of every cell that does not say (default: each recipe's). */
  steps: z.number().int().nonnegative().optional(),
  cells: z.array(CellSchema).min(1),
}).strict();

/** A grid file's cell (defaults may be left out). */
export type CellInput = z.input<typeof CellSchema>;
/** A grid as a grid file writes it. */
export type GridInput = z.input<typeof GridSchema>;
/** A validated grid (its cells not yet made into recipes: {@link load} does that). */
export type Grid = z.output<typeof GridSchema>;

/** A grid or one of its cells failed validation; the message names each cell and field. */
export class GridInvalid extends EffectData.TaggedError("GridInvalid")<{
  readonly source: string;
  readonly issues: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `invalid grid ${this.source}:\n${this.issues.map((i) => `  ✖ ${i}\n`).join("")}`
      .trimEnd();
  }
}

const pathOf = (path: ReadonlyArray<PropertyKey>) =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : `${i > 0 ? "." : ""}${String(p)}`))
    .join("");

/** Validates a grid, throwing {@link GridInvalid} naming every bad cell and field. */
export function parse(input: unknown, source = "(grid value)"): Grid {
  const r = GridSchema.safeParse(input);
  if (!r.success) {
    throw new GridInvalid({
      source,
      issues: r.error.issues.map((i) => `${pathOf(i.path) || "grid"}: ${i.message}`),
    });
  }
  return r.data;
}

/** Declares a grid in a grid file: validated when the file is loaded. */
export const grid = (input: GridInput): Grid => parse(input);

type Axes = { readonly [K in keyof CellInput]?: ReadonlyArray<CellInput[K]> };

/**
 * Every combination of the given values, in order (the last axis varies fastest): the cells of
 * a grid. `product({ method: ["odm", "lsq"], bits: [2, 4], recipe: ["odm"] })` is 4 cells.
 */
export function product(
  axes: Axes & { readonly recipe: ReadonlyArray<CellInput["recipe"]> },
): CellInput[] {
  let cells: Array<Record<string, unknown>> = [{}];
  for (const [k, values] of Object.entries(axes)) {
    if (values === undefined) continue;
    cells = cells.flatMap((c) => (values as ReadonlyArray<unknown>).map((v) => ({ ...c, [k]: v })));
  }
  return cells as unknown as CellInput[];
}

// ---------------------------------------------------------------------------------------------
// Cells

/** What a cell's run needs, in JSON: all a worker on another machine gets. */
export interface CellSpec {
  /** `<table>/<name>`: unique in the grid. */
  readonly key: string;
  readonly table: string;
  readonly name: string;
  /** The method's label, for the table. */
  readonly label: string;
  /** `Recipe.toJSON` of the cell's recipe (with the recipe module, for a method of your own). */
  readonly recipe: unknown;
  /** The run folder (absolute). */
  readonly dir: string;
  readonly ssim: "same" | "valid";
  /** SHA-256 (hex, 16) of the canonical JSON of the recipe, folder and SSIM: the config hash. */
  readonly hash: string;
}

/** A grid made into cells: every cell a validated recipe. */
export interface Loaded {
  readonly name: string;
  readonly source: string;
  readonly cells: ReadonlyArray<CellSpec>;
}

/** JSON with object keys sorted: equal configurations give equal text, hence equal hashes. */
export function canonical(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) =>
      typeof x === "object" && x !== null && !Array.isArray(x)
        ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]]))
        : x,
  );
}

/** The first 16 hex digits of the SHA-256 of a text. */
export async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16);
}

const absolute = (p: string, base: string) =>
  p === "embedded" || p.startsWith("/") ? p : new URL(p, `file://${base}/`).pathname;

/** The cell's recipe: the base recipe with the cell's method, bits, model, seed and steps. */
function cellRecipe(
  b: Recipe.Recipe,
  c: z.output<typeof CellSchema>,
  steps: number | undefined,
  source: string,
): Recipe.Recipe {
  const m = c.model;
  const model = m === undefined ? b.model : typeof m === "string"
    ? m === b.model.arch ? b.model : {
      // As `compare --model`: another architecture starts fresh (or pretrained for esrgan-*).
      arch: m,
      scale: b.model.scale,
      pretrained: m.startsWith("esrgan"),
      options: {},
    }
    : { ...b.model, ...m };
  const w = c.bits === undefined ? b.quant.wbits : typeof c.bits === "number" ? c.bits : c.bits.w;
  const a = c.bits === undefined ? b.quant.abits : typeof c.bits === "number" ? c.bits : c.bits.a;
  const method = c.method === "recipe" ? b.method : Methods.byName(c.method)!;
  return Recipe.parse({
    ...b,
    model,
    method,
    // Decisions made from data belong to the method that made them.
    decisions: method === b.method ? b.decisions : undefined,
    quant: { ...b.quant, wbits: w, abits: a },
    train: {
      ...b.train,
      ...(c.seed !== undefined ? { seed: c.seed } : {}),
      ...(c.steps ?? steps) !== undefined ? { steps: c.steps ?? steps } : {},
    },
  }, source);
}

/**
 * Makes a grid's cells into runs, before any work: every base recipe is loaded, every cell's
 * recipe validated (a failure names the cell and the field), paths made absolute (a worker on
 * another machine gets the same ones), names checked unique, and each cell's config hashed.
 */
export async function cells(
  g: Grid,
  o: { readonly source: string; readonly out: string; readonly ssim?: "same" | "valid" },
): Promise<Loaded> {
  const base = o.source.startsWith("(") ? Deno.cwd() : o.source.replace(/\/[^/]*$/, "");
  const out = absolute(o.out, Deno.cwd());
  const loaded = new Map<string, { recipe: Recipe.Recipe; module?: string }>();
  const issues: string[] = [];
  const specs: CellSpec[] = [];
  const owner = new Map<string, number>();
  for (const [i, c] of g.cells.entries()) {
    const at = `cells[${i}]`;
    let b: { recipe: Recipe.Recipe; module?: string };
    try {
      if (typeof c.recipe === "string") {
        const spec = c.recipe.endsWith(".ts") || c.recipe.includes("/")
          ? absolute(c.recipe, base)
          : c.recipe;
        b = loaded.get(spec) ?? await loadRecipe(spec);
        loaded.set(spec, b);
      } else {
        // A value carries no file for a worker to import its method from.
        if (!(Methods.NAMES as ReadonlyArray<string>).includes(c.recipe.method.name)) {
          issues.push(
            `${at}.recipe: a Recipe value with a method of its own ("${c.recipe.method.name}"); ` +
              "give its recipe file instead, so that workers can import the method",
          );
          continue;
        }
        b = { recipe: c.recipe };
      }
    } catch (e) {
      issues.push(`${at}.recipe: ${(e as Error).message}`);
      continue;
    }
    let r: Recipe.Recipe;
    try {
      r = cellRecipe(b.recipe, c, g.steps, at);
    } catch (e) {
      if (e instanceof Recipe.RecipeInvalid) {
        for (const l of e.issues.split("\n")) issues.push(`${at}: ${l.replace(/^\s*✖\s*/, "")}`);
        continue;
      }
      throw e;
    }
    const table = c.table ?? `${r.model.arch}-x${r.model.scale}`;
    const name = c.name ??
      `w${r.quant.wbits}a${r.quant.abits}-${r.method.name}-s${r.train.seed}`;
    const key = `${table}/${name}`;
    const clash = owner.get(key);
    if (clash !== undefined) {
      issues.push(`${at}: its folder ${key} is that of cells[${clash}]; give one of them a name`);
      continue;
    }
    owner.set(key, i);
    const recipe = Recipe.parse({
      ...r,
      name: `${r.name}-${table}-${name}`,
      model: {
        ...r.model,
        ...(r.model.checkpoint ? { checkpoint: absolute(r.model.checkpoint, Deno.cwd()) } : {}),
      },
      data: {
        ...r.data,
        train: absolute(r.data.train, Deno.cwd()),
        eval: absolute(r.data.eval, Deno.cwd()),
      },
    }, at);
    const json = Recipe.toJSON(recipe, c.method === "recipe" ? b.module : undefined);
    const dir = `${out}/${table}/${name}`;
    const ssim = o.ssim ?? "valid";
    specs.push({
      key,
      table,
      name,
      label: recipe.method.label,
      recipe: json,
      dir,
      ssim,
      hash: await sha256(canonical({ recipe: json, dir, ssim })),
    });
  }
  if (issues.length > 0) throw new GridInvalid({ source: o.source, issues });
  return { name: g.name, source: o.source, cells: specs };
}

/** Reads a grid file (a module whose default export is a grid), validated. */
export async function read(file: string): Promise<{ grid: Grid; source: string }> {
  const url = new URL(file, `file://${Deno.cwd()}/`);
  let mod: { default?: unknown };
  try {
    mod = await import(url.href);
  } catch (e) {
    if (e instanceof GridInvalid) throw new GridInvalid({ source: url.pathname, issues: e.issues });
    throw new Error(`cannot load grid ${url.pathname}: ${(e as Error).message}`);
  }
  if (mod.default === undefined) throw new Error(`grid ${url.pathname} has no default export`);
  return { grid: parse(mod.default, url.pathname), source: url.pathname };
}

/** Reads a grid file and makes its cells ({@link read}, {@link cells}). */
export async function load(
  file: string,
  o: { readonly out: string; readonly ssim?: "same" | "valid" },
): Promise<Loaded> {
  const { grid, source } = await read(file);
  return await cells(grid, { ...o, source });
}

// ---------------------------------------------------------------------------------------------
// One cell's run

/** What a cell's run returns: its summary and what the table needs besides. */
export interface CellResult {
  readonly key: string;
  readonly hash: string;
  readonly summary: Train.Summary;
  readonly method: string;
  readonly label: string;
  readonly wbits: number;
  readonly abits: number;
  readonly scale: number;
  /** Storage (K) and BitOPs (T) for a 1920×1080 output (`Cost.of`), and the FP32 network's. */
  readonly storageK: number;
  readonly bitopsT: number;
  readonly fp32: { readonly storageK: number; readonly bitopsT: number };
  readonly evalName: string;
  readonly evalImages: number;
  /** Where it ran: the worker's `host:pid` and the backend. */
  readonly ranOn: string;
}

/** Another process holds the cell's folder (its `cell.lock`). */
export class CellBusy extends EffectData.TaggedError("CellBusy")<{ readonly dir: string }> {
  override get message(): string {
    return `${this.dir} is being run by another process (it holds ${this.dir}/cell.lock)`;
  }
}

const readJson = (file: string) =>
  Effect.promise(() =>
    Deno.readTextFile(file).then((t) => JSON.parse(t) as unknown, () => undefined)
  );

const evalNameOf = (d: string) =>
  d === "embedded" ? "embedded" : d.split("/").filter((s) => s).pop() ?? "eval";

/**
 * Runs one cell in this process (`sweep-worker --cell` runs it in a child of the worker): its
 * recipe rebuilt from JSON, the data loaded, the model built, quantized and trained by
 * `Train.run` with `resume: true` into `spec.dir`, so a cell killed midway continues from its
 * checkpoint exactly. The folder is held by an exclusive `cell.lock` (flock, released by the OS
 * when the process dies) so two processes never train one cell. A cell whose `result.json` has
 * the same config hash is done: it is returned without work (a queue delivers at least once).
 */
export const runCell = (spec: CellSpec, log: (line: string) => void = (l) => console.log(l)) =>
  Effect.gen(function* () {
    const dir = spec.dir;
    yield* Effect.promise(() => Deno.mkdir(dir, { recursive: true }));
    const lock = yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const f = await Deno.open(`${dir}/cell.lock`, { create: true, write: true });
        if (await f.tryLock(true)) return f;
        f.close();
        return undefined;
      }),
      (f) => Effect.sync(() => f?.close()),
    );
    if (!lock) return yield* Effect.fail(new CellBusy({ dir }));
    const done = (yield* readJson(`${dir}/result.json`)) as CellResult | undefined;
    if (done?.hash === spec.hash) {
      log(`done before: ${dir}/result.json`);
      return done;
    }
    const module = (spec.recipe as { method?: { module?: string } }).method?.module;
    const given = yield* Effect.tryPromise({
      try: () => Recipe.fromJSON(spec.recipe, `${spec.key} (cell recipe)`),
      catch: (e) => e as Error,
    });
    const backend = yield* Backend.Backend;
    const scale = given.model.scale;
    const dataDir = (d: string, which: "train" | "eval") =>
      d === "embedded" ? Data.embedded[which] : d;
    const trainDir = dataDir(given.data.train, "train");
    const train = yield* Data.load(trainDir, scale, { name: "train" });
    yield* Train.checkPatch(given.train.patch, train, trainDir);
    const evalAll = yield* Data.load(dataDir(given.data.eval, "eval"), scale, { name: "eval" });
    const evalSet = given.data.evalImages
      ? { ...evalAll, pairs: evalAll.pairs.slice(0, given.data.evalImages) }
      : evalAll;
    const built = yield* Registry.build(given.model, given.train.seed);
    // As `train --resume`: a resumed cell keeps the decisions its method made from data at the
    // start (DDTB's gated layers), recorded in its checkpoint.
    const ckpt = `${dir}/checkpoint.bin`;
    const saved = (yield* Run.exists(ckpt))
      ? ((yield* Checkpoint.readHeader(ckpt)).recipe as { decisions?: Method.Decisions })
      : undefined;
    const recipe = yield* Registry.resolve(
      saved?.decisions && !given.decisions
        ? Recipe.parse({ ...given, decisions: saved.decisions }, spec.key)
        : given,
      built,
      train,
    );
    const quantized = Registry.quantize(recipe, built);
    const cost = { outputHeight: 1080, outputWidth: 1920, scale };
    const c = Cost.of(quantized, cost);
    const f = Cost.of(built.model, cost);
    const summary = yield* Train.run(
      recipe,
      Recipe.toJSON(recipe, module),
      { fp32: built.model, params: built.params, quantized },
      { train, eval: evalSet },
      {
        out: dir,
        resume: true,
        log,
        ssim: spec.ssim,
        tty: false,
        calibrationBatches: Registry.calibrationBatches(recipe),
      },
    ).pipe(
      Effect.mapError((e) =>
        e instanceof Run.RecipeChanged
          ? new Error(`${e.message}\nremove ${dir} to start this cell over`)
          : e
      ),
    );
    const result: CellResult = {
      key: spec.key,
      hash: spec.hash,
      summary,
      method: recipe.method.name,
      label: spec.label,
      wbits: recipe.quant.wbits,
      abits: recipe.quant.abits,
      scale,
      storageK: c.storageK,
      bitopsT: c.bitopsT,
      fp32: { storageK: f.storageK, bitopsT: f.bitopsT },
      evalName: evalNameOf(given.data.eval),
      evalImages: evalSet.pairs.length,
      // The worker (`SweepEngine` sets it for the cell's process), else this process.
      ranOn: `${
        Deno.env.get("QAT_SWEEP_WORKER") ?? `${Deno.hostname()}:${Deno.pid}`
      } (${backend.name})`,
    };
    yield* Run.writeText(`${dir}/result.json`, JSON.stringify(result, null, 2) + "\n");
    return result;
  }).pipe(Effect.scoped);

// ---------------------------------------------------------------------------------------------
// Tables

/** The outcome of one cell in a finished sweep. */
export type Outcome =
  | { readonly spec: CellSpec; readonly result: CellResult }
  | { readonly spec: CellSpec; readonly error: string };

/** One table of a sweep: a compare folder's content. */
export interface Table {
  readonly table: string;
  readonly setup: string;
  readonly rows: ReadonlyArray<Row>;
  readonly markdown: string;
  /** Cells of this table that failed, with their errors. */
  readonly failed: ReadonlyArray<{ readonly key: string; readonly error: string }>;
}

const flagOf = (s: Train.Score): { flagged?: string } =>
  s.flagged?.length ? { flagged: `${s.flagged[0].file}: ${s.flagged[0].reason}` } : {};

/**
 * The tables of a sweep, one per `table` in grid order, in the paper's layout (`compare`'s
 * table: an FP32 row, then one row per cell, named by its folder so that the table's folder is
 * a compare folder): method, W/A, PSNR/SSIM, storage (K), BitOPs (T).
 */
export function tables(outcomes: ReadonlyArray<Outcome>): Table[] {
  const names = [...new Set(outcomes.map((o) => o.spec.table))];
  return names.map((t) => {
    const mine = outcomes.filter((o) => o.spec.table === t);
    const done = mine.flatMap((o) => ("result" in o ? [o.result] : []));
    const rows: Row[] = [];
    const first = done[0];
    if (first) {
      rows.push({
        method: "fp32",
        label: "full precision",
        wbits: 32,
        abits: 32,
        psnr: first.summary.fp32.psnr,
        ssim: first.summary.fp32.ssim,
        storageK: first.fp32.storageK,
        bitopsT: first.fp32.bitopsT,
        ...flagOf(first.summary.fp32),
      });
    }
    for (const o of mine) {
      if (!("result" in o)) continue;
      const r = o.result;
      rows.push({
        method: o.spec.name,
        label: r.label,
        wbits: r.wbits,
        abits: r.abits,
        psnr: r.summary.qat.psnr ?? NaN,
        ssim: r.summary.qat.ssim ?? NaN,
        storageK: r.storageK,
        bitopsT: r.bitopsT,
        ...flagOf(r.summary.qat),
      });
    }
    const steps = [...new Set(done.map((r) => r.summary.steps))].join("/");
    const setup = first
      ? `${t}: ×${first.scale}, ${steps} steps, eval ${first.evalImages} ` +
        `images (${first.evalName}), SSIM "${mine[0].spec.ssim}"`
      : `${t}: no cell finished`;
    const failed = mine.flatMap((o) => ("error" in o ? [{ key: o.spec.key, error: o.error }] : []));
    const markdown = first ? compareTable(rows, first.scale, first.evalName) : "";
    return { table: t, setup, rows, markdown, failed };
  });
}
