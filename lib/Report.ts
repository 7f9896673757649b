/**
 * Reports: the ODM paper's figures drawn from your own runs, as one self-contained HTML page.
 *
 * From a run folder (`metrics.jsonl`, `checkpoint.bin`, `summary.json`) {@link write} makes
 * `report.html` (inline SVG, no script, no network) and one SVG per figure beside it:
 *
 * - loss curves (L1, L_M of Eq. 3, PAMS's SKT where present) and the learning-rate schedule
 *   the stored recipe describes (two Adam groups, step decay; SPEC §7);
 * - Fig. 2b / 2c: the cosine between g_R and g_M and the share of conflicting gradient entries
 *   at the logged steps (what `Cooperative.statistics` computed), and ‖λ_M·sim·g_M‖/‖g_R‖
 *   where `metrics.jsonl` logs it (`regRatio`);
 * - from the checkpoint, on centre crops of a few evaluation images: the per-layer mismatch
 *   `M(X_i) = ‖X_i − q(X_i)‖_F` (Eq. 2), Fig. 1 (per-channel and per-image distributions of a
 *   layer's FP32 input), Fig. 3a (per-layer weight quantization error under max, percentile
 *   and the run's own trained range, e.g. WCC of Eq. 9), Fig. 3b–c (the layer's weights
 *   against the 4- and 2-bit grids) and Fig. 5 (the layer's input before quantization in the
 *   trained model and in the FP32 network, against the quantizer's range). The layer is the
 *   one the caller names, else the most mismatched one;
 * - the final table (`summary.json`) and the recipe.
 *
 * {@link writeCompare} makes the page of a `deno task compare` folder: the comparison table,
 * every method's curves on one chart, Fig. 4 (the same crops of two evaluation images for
 * bicubic, FP32 and every method, with their PSNR) and, for an ablation, Fig. 5 across its
 * rows.
 *
 * Every chart is a `Figures.Figure`: its data sit in the page as JSON next to the SVG
 * (`<script type="application/json" id="data-<figure>">`) and in `<figure>.vl.json` beside
 * `<figure>.svg`, so what is drawn can be checked against what it was computed from.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data as EffectData, Effect } from "effect";
import * as Backend from "./Backend.ts";
import * as Checkpoint from "./Checkpoint.ts";
import * as Data from "./Data.ts";
import type * as Train from "./Train.ts";
import * as Figures from "./Figures.ts";
import * as Image from "./Image.ts";
import * as Iqa from "./Iqa.ts";
import * as Nn from "./Nn.ts";
import * as Optim from "./Optim.ts";
import * as Quant from "./Quant.ts";
import * as Quantizer from "./Quantizer.ts";
import * as Range from "./Range.ts";
import * as Recipe from "./Recipe.ts";
import * as Resize from "./Resize.ts";
import * as Tile from "./Tile.ts";
import * as Tree from "./Tree.ts";
import * as z from "zod";
import type { Params } from "./Tree.ts";
import * as Registry from "../models/registry.ts";

// ---------------------------------------------------------------------------------------------
// Errors

/** A run file the report needs is missing or cannot be read; the message names it. */
export class ReportError extends EffectData.TaggedError("ReportError")<{
  readonly file: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.reason}`;
  }
}

/** `--layer` names no quantized layer of the model. */
export class UnknownLayer extends EffectData.TaggedError("UnknownLayer")<{
  readonly layer: string;
  readonly known: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `--layer "${this.layer}" is not a quantized layer of this model; choose one of: ` +
      this.known.join(", ");
  }
}

// ---------------------------------------------------------------------------------------------
// Run files

/**
 * One line of `metrics.jsonl` (written by `Train.metrics`): a step's report and its time; runs
 * of earlier versions logged no `terms`, `regRatio` or `rssMiB`.
 */
export type MetricsRecord =
  & Omit<Train.StepReport, "terms" | "regRatio">
  & Partial<Pick<Train.StepReport, "terms" | "regRatio">>
  & { readonly seconds?: number; readonly rssMiB?: number };

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const notFound = (e: unknown) => e instanceof Deno.errors.NotFound;

const readText = (file: string, missing: string) =>
  Effect.tryPromise({
    try: () => Deno.readTextFile(file),
    catch: (e) => new ReportError({ file, reason: notFound(e) ? missing : (e as Error).message }),
  });

/**
 * The records of a `metrics.jsonl`. A torn last line (a run killed while appending) is
 * dropped, as training does; any other line that is not a record fails naming the line.
 */
export const readMetrics = (
  file: string,
): Effect.Effect<ReadonlyArray<MetricsRecord>, ReportError> =>
  Effect.gen(function* () {
    const text = yield* readText(
      file,
      "not found: this is not a training run folder (deno task train --out DIR writes " +
        "DIR/metrics.jsonl, DIR/checkpoint.bin and DIR/summary.json)",
    );
    const lines = text.split("\n").map((l, i) => [i + 1, l.trim()] as const).filter(([, l]) =>
      l !== ""
    );
    const out: MetricsRecord[] = [];
    for (const [k, [n, l]] of lines.entries()) {
      let rec: unknown;
      try {
        rec = JSON.parse(l);
      } catch (e) {
        if (k === lines.length - 1) break; // torn last line
        return yield* Effect.fail(
          new ReportError({ file, reason: `line ${n}: not JSON (${(e as Error).message})` }),
        );
      }
      const bad = !isRecord(rec)
        ? "not an object"
        : ["step", "l1", "mismatch"].find((f) => typeof rec[f] !== "number");
      if (bad !== undefined) {
        if (k === lines.length - 1) break;
        return yield* Effect.fail(
          new ReportError({
            file,
            reason: `line ${n}: not a metrics record (${
              bad === "not an object" ? bad : `no numeric "${bad}"`
            })`,
          }),
        );
      }
      const r = rec as Record<string, unknown>;
      const num = (f: string) => (typeof r[f] === "number" ? (r[f] as number) : 0);
      out.push({
        step: r.step as number,
        l1: r.l1 as number,
        mismatch: r.mismatch as number,
        cosine: num("cosine"),
        conflict: num("conflict"),
        distill: num("distill"),
        ...(typeof r.terms === "number" ? { terms: r.terms } : {}),
        ...(typeof r.seconds === "number" ? { seconds: r.seconds } : {}),
        ...(typeof r.regRatio === "number" ? { regRatio: r.regRatio } : {}),
      });
    }
    if (out.length === 0) {
      return yield* Effect.fail(
        new ReportError({ file, reason: "holds no logged step (the run has not logged yet)" }),
      );
    }
    return out;
  });

const Problem = z.object({
  file: z.string(),
  reason: z.string(),
  psnr: z.number().nullable().optional(),
}).loose();

/** One model's scores in `summary.json` (NaN is written as null). */
const ScoreSchema = z.object({
  psnr: z.number().nullable(),
  ssim: z.number().nullable(),
  failed: z.array(Problem).optional(),
  flagged: z.array(Problem).optional(),
}).loose();

/** What the report reads of a run's `summary.json` (see `Train.Summary`). */
const SummarySchema = z.object({
  fp32: ScoreSchema,
  ptq: ScoreSchema.nullable(),
  qat: ScoreSchema,
  steps: z.number(),
  seconds: z.number(),
  backend: z.string(),
  stepsPerSecond: z.number().optional(),
}).loose();

/** A run's `summary.json`, as far as the report reads it. */
export type Summary = z.output<typeof SummarySchema>;
/** One model's scores in it. */
export type Score = z.output<typeof ScoreSchema>;

/** `summary.json` of a finished run; undefined when the run has not finished. */
export const readSummary = (
  file: string,
): Effect.Effect<Summary | undefined, ReportError> =>
  Effect.gen(function* () {
    const text = yield* Effect.tryPromise({
      try: () =>
        Deno.readTextFile(file).catch((e) => (notFound(e) ? undefined : Promise.reject(e))),
      catch: (e) => new ReportError({ file, reason: (e as Error).message }),
    });
    if (text === undefined) return undefined;
    let s: unknown;
    try {
      s = JSON.parse(text);
    } catch (e) {
      return yield* Effect.fail(
        new ReportError({ file, reason: `not JSON (${(e as Error).message})` }),
      );
    }
    const r = SummarySchema.safeParse(s);
    if (!r.success) {
      return yield* Effect.fail(
        new ReportError({ file, reason: `not a run summary: ${z.prettifyError(r.error)}` }),
      );
    }
    return r.data;
  });

/**
 * The recipe stored in a checkpoint: `Recipe.fromJSON` (a method by name, or by the module
 * that defines it), else `Recipe.parse` (which reads recipes of the earlier format that
 * `fromJSON` refuses); the first error when neither can.
 */
export async function storedRecipe(json: unknown, source: string): Promise<Recipe.Recipe> {
  try {
    return await Recipe.fromJSON(json, source);
  } catch (e) {
    try {
      return Recipe.parse(json, source);
    } catch {
      throw e;
    }
  }
}

/** A trained model rebuilt from a checkpoint's stored recipe (as `deno task eval` does). */
export interface Trained {
  readonly file: string;
  readonly step: number;
  readonly recipe: Recipe.Recipe;
  /** The stored recipe as JSON (what the page prints). */
  readonly recipeJson: unknown;
  /** The quantized network (the FP32 one for a 32/32 recipe). */
  readonly model: Nn.Layer<3, 3>;
  readonly params: Params;
}

/** Reads a checkpoint and rebuilds its model; the optimizer state is freed. */
export const loadTrained = (
  file: string,
): Effect.Effect<
  Trained,
  Checkpoint.CheckpointError | Checkpoint.CheckpointMismatch | ReportError
> =>
  Effect.gen(function* () {
    const c = yield* Checkpoint.read(file);
    for (const t of c.opt.values()) t.dispose();
    const fail = (reason: string) => {
      for (const t of c.params.values()) t.dispose();
      return Effect.fail(new ReportError({ file, reason }));
    };
    const rebuilt = yield* Effect.result(Effect.tryPromise({
      try: async () => {
        const recipe = await storedRecipe(c.recipe, `${file} (stored recipe)`);
        return { recipe, model: Registry.quantize(recipe, Registry.architecture(recipe.model)) };
      },
      catch: (e) => e as Error,
    }));
    if (rebuilt._tag === "Failure") {
      return yield* fail(`cannot rebuild the model: ${rebuilt.failure.message}`);
    }
    const { recipe, model } = rebuilt.success;
    const init = Tree.flatten(model.init(recipe.train.seed));
    const mismatch = Checkpoint.check(file, c.params, init);
    for (const t of init.values()) t.dispose();
    if (mismatch) {
      for (const t of c.params.values()) t.dispose();
      return yield* Effect.fail(mismatch);
    }
    return {
      file,
      step: c.step,
      recipe,
      recipeJson: c.recipe,
      model,
      params: Tree.unflatten(c.params),
    };
  });

/**
 * The FP32 parameters the run started from (pretrained weights, an FP32 checkpoint or the
 * seeded initialisation, as training built them), or why they cannot be had here.
 */
const startingParams = (
  recipe: Recipe.Recipe,
): Effect.Effect<{ params?: Params; note?: string }> =>
  Effect.gen(function* () {
    const r = yield* Effect.result(Registry.build(recipe.model, recipe.train.seed));
    if (r._tag === "Failure") {
      return { note: `the starting FP32 weights are not available here (${r.failure.message})` };
    }
    return { params: r.success.params };
  });

// ---------------------------------------------------------------------------------------------
// Numbers

/** The `p`-quantile of sorted values with linear interpolation (`pos = p·(n−1)`, numpy's). */
export function quantileSorted(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const pos = p * (n - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, n - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** A distribution in seven numbers: extremes, 1st/99th percentiles, quartiles, median. */
export interface Spread {
  readonly min: number;
  readonly p01: number;
  readonly q1: number;
  readonly median: number;
  readonly q3: number;
  readonly p99: number;
  readonly max: number;
}

/** The {@link Spread} of some values. */
export function spread(values: ArrayLike<number>): Spread {
  const s = Float64Array.from(values).sort();
  const q = (p: number) => quantileSorted(s, p);
  return {
    min: s[0],
    p01: q(0.01),
    q1: q(0.25),
    median: q(0.5),
    q3: q(0.75),
    p99: q(0.99),
    max: s[s.length - 1],
  };
}

/** One histogram bin: `[x0, x1)` (the last one closed) and how many values fall in it. */
export interface Bin {
  readonly x0: number;
  readonly x1: number;
  readonly count: number;
}

/** `n` equal bins over `[lo, hi]`; values outside are not counted. */
export function histogram(values: ArrayLike<number>, lo: number, hi: number, n: number): Bin[] {
  const width = (hi - lo) / n;
  const counts = new Array<number>(n).fill(0);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(v >= lo && v <= hi)) continue;
    counts[Math.min(n - 1, Math.floor((v - lo) / width))]++;
  }
  return counts.map((count, k) => ({ x0: lo + k * width, x1: lo + (k + 1) * width, count }));
}

/** The `2^bits` levels of Eq. 1 over `[lower, upper]`. */
export function gridLevels(lower: number, upper: number, bits: number): number[] {
  const n = 2 ** bits;
  return Array.from({ length: n }, (_, k) => lower + (k * (upper - lower)) / (n - 1));
}

/** The learning rates of the recipe's two Adam groups at every change of the schedule. */
export function schedule(
  t: Pick<Recipe.Recipe["train"], "lrWeights" | "lrQuant" | "decayEvery" | "decayFactor" | "steps">,
): Array<{ step: number; lr: number; group: string }> {
  const steps = new Set<number>([0]);
  for (let s = t.decayEvery; s < t.steps; s += t.decayEvery) steps.add(s);
  steps.add(Math.max(t.steps, 1));
  const groups = [
    ["weights", Optim.stepDecay(t.lrWeights, t.decayEvery, t.decayFactor)],
    ["quantizer parameters", Optim.stepDecay(t.lrQuant, t.decayEvery, t.decayFactor)],
  ] as const;
  return groups.flatMap(([group, lr]) => [...steps].map((step) => ({ step, lr: lr(step), group })));
}

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

const pct = (x: number, digits = 1) => `${(100 * x).toFixed(digits)}%`;

const fmt = (x: number, digits = 3) =>
  !Number.isFinite(x)
    ? "–"
    : Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)
    ? x.toExponential(2)
    : x.toFixed(digits);

// ---------------------------------------------------------------------------------------------
// Probing a model on images

/** The images a report probes: centre LR crops of the first evaluation images. */
export interface Probe {
  /** Image names (file stems). */
  readonly names: ReadonlyArray<string>;
  readonly files: ReadonlyArray<string>;
  /** `[n, side, side, 3]` LR crops in [0, 255]. */
  readonly data: Float32Array;
  readonly side: number;
  /** Where the images came from (when the recipe's folder is not here). */
  readonly note?: string;
}

/** The largest LR crop side the report uses (crops are centred in each LR image). */
export const PROBE_SIDE = 96;

const stem = (f: string) => (f.split("/").pop() ?? f).replace(/\.[^.]+$/, "");

/** The recipe's evaluation folder, or the embedded images when it is not on this machine. */
const evalFolder = (recipe: Recipe.Recipe) =>
  Effect.gen(function* () {
    const d = recipe.data.eval;
    if (d === "embedded") return { dir: Data.embedded.eval };
    const ok = yield* Effect.promise(() => Deno.stat(d).then((s) => s.isDirectory, () => false));
    return ok
      ? { dir: d }
      : { dir: Data.embedded.eval, note: `${d} is not here; the embedded images are used` };
  });

/** The first `n` evaluation pairs of a recipe (its folder, or the embedded images). */
export const evalPairs = (recipe: Recipe.Recipe, n: number) =>
  Effect.gen(function* () {
    const { dir, note } = yield* evalFolder(recipe);
    const files = (yield* Data.listImages(dir, () => {})).slice(0, n);
    const pairs: Data.Pair[] = [];
    for (const f of files) pairs.push(yield* Data.pairOf(f, recipe.model.scale));
    return { pairs, note };
  });

/** Centre crops of side `side` (at most each LR image's shorter side) of the LR images. */
export function probeOf(pairs: ReadonlyArray<Data.Pair>, side = PROBE_SIDE): Probe {
  const s = Math.min(side, ...pairs.map((p) => Math.min(p.lr.width, p.lr.height)));
  const data = new Float32Array(pairs.length * s * s * 3);
  for (const [i, p] of pairs.entries()) {
    const x0 = Math.floor((p.lr.width - s) / 2);
    const y0 = Math.floor((p.lr.height - s) / 2);
    const c = Image.crop(p.lr, x0, y0, s, s);
    data.set(c.data, i * s * s * 3);
  }
  return { names: pairs.map((p) => stem(p.file)), files: pairs.map((p) => p.file), data, side: s };
}

const probeTensor = (p: Probe) => tf.tensor4d(p.data, [p.names.length, p.side, p.side, 3]);

/** Thrown by a tap to end a forward pass once it has what it needs. */
const ENOUGH = new Error("enough");

/**
 * A forward pass over the probe images that reports each quantized layer's input to `tap`
 * and stops as soon as `tap` returns true. Call it inside `tf.tidy`; what the tap keeps must be
 * `tf.keep`-ed (and disposed by the caller).
 *
 * NOTE: the pass is ended by throwing from the tap (tfjs ends every scope it unwinds): the
 * layers after the last quantized one (the upsampler, at HR resolution) are ~2/3 of a pass and
 * nothing here needs them.
 */
function forwardUntil(
  model: Nn.AnyLayer,
  params: Params,
  probe: Probe,
  mode: "eval" | "calibrate",
  tap: (t: Nn.Tap) => boolean,
): void {
  try {
    model.apply(
      params,
      probeTensor(probe),
      Nn.context(mode, {
        tap: (t) => {
          if (tap(t)) throw ENOUGH;
        },
      }),
    );
  } catch (e) {
    if (e !== ENOUGH) throw e;
  }
}

/** Per-layer mismatch of Eq. 2 on the probe images (one batch), in forward order. */
export interface LayerMismatch {
  readonly path: string;
  /** `‖X − q(X)‖_F` over the batch (what the regulariser sums). */
  readonly mismatch: number;
  /** The same, divided by `‖X‖_F`. */
  readonly relative: number;
}

/**
 * `M(X_i)` of every quantized layer of the trained model on the probe images (eval mode:
 * the layers' inputs and quantized inputs as the regulariser sees them).
 */
export const layerMismatch = (
  model: Nn.AnyLayer,
  params: Params,
  probe: Probe,
): Effect.Effect<LayerMismatch[]> =>
  Effect.gen(function* () {
    const paths = Quant.layers(model).map((l) => l.path);
    if (paths.length === 0) return [];
    const sums = new Map<string, tf.Tensor>();
    tf.tidy(() =>
      forwardUntil(model, params, probe, "eval", (t) => {
        const s = tf.stack([tf.sum(tf.square(tf.sub(t.x, t.q))), tf.sum(tf.square(t.x))]);
        sums.get(t.path)?.dispose();
        sums.set(t.path, tf.keep(s));
        return paths.every((p) => sums.has(p));
      })
    );
    const stats = tf.tidy(() => tf.stack(paths.map((p) => sums.get(p) ?? tf.zeros([2]))));
    for (const t of sums.values()) t.dispose();
    const v = yield* Effect.promise(() => stats.data());
    stats.dispose();
    return paths.map((path, i) => ({
      path,
      mismatch: Math.sqrt(v[2 * i]),
      relative: Math.sqrt(v[2 * i]) / Math.max(1e-30, Math.sqrt(v[2 * i + 1])),
    }));
  });

/** A layer's input on the probe images, and the layer's activation range there. */
export interface Activation {
  /** `[n, side, side, C]` values, NHWC. */
  readonly x: Float32Array;
  readonly channels: number;
  /** The input quantizer's `[l, u]` on these inputs (absent in FP32 / unquantized inputs). */
  readonly lower?: number;
  readonly upper?: number;
  readonly abits?: number;
  /** The quantizer's range is computed from each input (per-batch or per-image statistics). */
  readonly dynamic?: boolean;
}

const subAt = (p: Params, path: string): Params =>
  path.split(".").reduce((node, k) => (isRecord(node[k]) ? Tree.sub(node, k) : {}), p);

/**
 * The input of the quantized layer at `path` on the probe images: `eval` runs the quantized
 * model (the input before its quantizer, and the quantizer's range), `calibrate` the network
 * without quantizers (FP32).
 */
export const activationAt = (
  model: Nn.AnyLayer,
  params: Params,
  probe: Probe,
  path: string,
  mode: "eval" | "calibrate",
): Effect.Effect<Activation> =>
  Effect.gen(function* () {
    const layer = Quant.layers(model).find((l) => l.path === path)?.layer;
    if (!layer) throw new Error(`activationAt: no quantized layer at "${path}"`);
    const input = layer.spec.input;
    let out: { x: tf.Tensor; bounds?: tf.Tensor } | undefined;
    tf.tidy(() =>
      forwardUntil(model, params, probe, mode, (t) => {
        if (t.path !== path) return false;
        const bounds = mode === "eval" && input && input.bits !== 32
          ? (() => {
            const b = input.bounds((subAt(params, path).aq ?? {}) as Params, t.x);
            return tf.keep(tf.stack([b.lower, b.upper]));
          })()
          : undefined;
        out = { x: tf.keep(tf.clone(t.x)), bounds };
        return true;
      })
    );
    const kept = out as { x: tf.Tensor; bounds?: tf.Tensor } | undefined;
    if (!kept) throw new Error(`activationAt: layer "${path}" was not reached`);
    const x = yield* Effect.promise(() => kept.x.data() as Promise<Float32Array>);
    const channels = kept.x.shape[kept.x.shape.length - 1] ?? 1;
    kept.x.dispose();
    if (!kept.bounds) return { x, channels };
    const [lower, upper] = yield* Effect.promise(() => kept.bounds!.data());
    kept.bounds.dispose();
    return {
      x,
      channels,
      lower,
      upper,
      abits: input!.bits,
      dynamic: input!.dynamic !== false,
    };
  });

/** One weight quantization error of Fig. 3a. */
export interface WeightError {
  readonly layer: string;
  /** Position in forward order (0-based). */
  readonly index: number;
  readonly policy: string;
  readonly bits: number;
  /** `‖W − q(W)‖_F / ‖W‖_F`. */
  readonly qe: number;
  /** The clipping bound u of `[−u, u]`. */
  readonly u: number;
}

/** Names of the range policies of Fig. 3a. */
export const POLICY = { max: "max", percentile: "percentile", trained: "trained" } as const;

/** The label of a model's own (trained) weight range in the figures, from its quantizer. */
export function trainedLabel(model: Nn.AnyLayer): string {
  const q = Quant.layers(model).find((l) => l.layer.spec.weight)?.layer.spec.weight;
  const name = q?.name ?? "";
  return /clipCorrected/.test(name)
    ? "WCC (trained γ, Eq. 9)"
    : /learnable/.test(name)
    ? "learnable u_w (trained, Eq. 8)"
    : `this run's range (${name.replace(/^sym\d+·/, "") || "none"})`;
}

/** The bit-widths of Fig. 3a: the run's, 4 and 2. */
export const weightBits = (r: Recipe.Recipe): number[] =>
  [...new Set([r.quant.wbits, 4, 2])].filter((b) => b <= 8).sort((a, b) => b - a);

/**
 * Fig. 3a's numbers: for every quantized layer's trained weights, the relative quantization
 * error under `max` and `percentile` (fixed global policies, Eq. 7) and under the run's own
 * trained range, at each of {@link weightBits}. At the run's bit-width the run's own range is
 * its weight quantizer itself; at another one, Eq. 1 over the bounds `[−u_w, u_w]` that
 * quantizer gives the trained weights (the range does not depend on the bits).
 */
export const weightErrors = (t: Trained): Effect.Effect<WeightError[]> =>
  Effect.gen(function* () {
    const layers = Quant.layers(t.model).filter((l) => l.layer.spec.weight);
    const bits = weightBits(t.recipe);
    const j = t.recipe.quant.percentile;
    const rows: Array<Omit<WeightError, "qe" | "u">> = [];
    const stacked = tf.tidy(() => {
      const out: tf.Tensor[] = [];
      for (const [index, { path, layer }] of layers.entries()) {
        const p = subAt(t.params, path);
        const w = Tree.leaf(p, "weight");
        const norm = tf.norm(w);
        const policies: Array<[string, number, Quantizer.Any, Params]> = [];
        for (const b of bits) {
          policies.push([POLICY.max, b, Quantizer.symmetric({ bits: b, range: Range.max }), {}]);
          policies.push([
            POLICY.percentile,
            b,
            Quantizer.symmetric({ bits: b, range: Range.percentile(j) }),
            {},
          ]);
        }
        const relative = (q: tf.Tensor) => tf.div(tf.norm(tf.sub(w, q)), tf.maximum(norm, 1e-30));
        for (const [policy, b, q, qp] of policies) {
          out.push(tf.stack([relative(q.apply(qp, w)), q.bounds(qp, w).upper]));
          rows.push({ layer: path, index, policy, bits: b });
        }
        const own = layer.spec.weight!;
        const wq = (p.wq ?? {}) as Params;
        const u = own.bounds(wq, w).upper;
        for (const b of bits) {
          const q = b === own.bits
            ? own.apply(wq, w)
            : Quantizer.fakeQuant(w, tf.neg(u) as tf.Scalar, u, b);
          out.push(tf.stack([relative(q), u]));
          rows.push({ layer: path, index, policy: POLICY.trained, bits: b });
        }
      }
      return out.length ? tf.stack(out) : tf.zeros([0, 2]);
    });
    const v = yield* Effect.promise(() => stacked.data());
    stacked.dispose();
    return rows.map((r, i) => ({ ...r, qe: v[2 * i], u: v[2 * i + 1] }));
  });

/** A layer's trained weights (all entries). */
const weightsOf = (t: Trained, path: string) =>
  Effect.promise(() => Tree.leaf(subAt(t.params, path), "weight").data() as Promise<Float32Array>);

// ---------------------------------------------------------------------------------------------
// Figures

const lossFigure = (m: ReadonlyArray<MetricsRecord>): Figures.Figure => {
  const skt = m.some((r) => r.distill > 0);
  const terms = m.some((r) => (r.terms ?? 0) > 0);
  const rows = m.map((r) => ({
    step: r.step,
    l1: r.l1,
    mismatch: r.mismatch,
    distill: r.distill,
    ...(terms ? { terms: r.terms ?? 0 } : {}),
  }));
  const panels = 2 + (skt ? 1 : 0) + (terms ? 1 : 0);
  const panel = (field: string, title: string, log: boolean) =>
    Figures.layer(
      { title, width: panels === 2 ? 470 : panels === 3 ? 300 : 210, height: 200 },
      Figures.line({
        data: "metrics",
        x: { field: "step", title: "step" },
        y: { field, title, ...(log ? { scale: { type: "log" } } : {}) },
        positive: log,
        points: m.length <= 60,
      }),
    );
  return Figures.figure({
    id: "loss",
    title: "Loss curves",
    caption: `L1 (the reconstruction loss of Eq. 4) and L_M = Σ_i ‖X_i − q(X_i)‖_F (Eq. 3) ` +
      `on the training batch at each of the ${m.length} logged steps` +
      (skt ? ", PAMS's SKT attention-transfer loss (unweighted)" : "") +
      (terms
        ? ", the method's further loss terms (weighted sum, e.g. DDTB's gate regulariser)"
        : "") +
      ".",
    datasets: { metrics: rows },
    view: Figures.hconcat(
      panel("l1", "L1", false),
      panel("mismatch", "L_M (log)", true),
      ...(skt ? [panel("distill", "SKT (log)", true)] : []),
      ...(terms ? [panel("terms", "further terms (log)", true)] : []),
    ),
  });
};

const scheduleFigure = (t: Recipe.Recipe["train"]): Figures.Figure => {
  const rows = schedule(t);
  const decays = Math.max(0, Math.ceil(t.steps / t.decayEvery) - 1);
  return Figures.figure({
    id: "lr",
    title: "Learning-rate schedule",
    caption: `Adam with two parameter groups (SPEC §7): weights from ${t.lrWeights}, quantizer ` +
      `parameters (γ_w, l_a, u_a) from ${t.lrQuant}, multiplied by ${t.decayFactor} every ` +
      `${t.decayEvery} steps — ` +
      (decays === 0
        ? `no decay within this run's ${t.steps} steps.`
        : `${decays} decay(s) within this run's ${t.steps} steps.`),
    datasets: { schedule: rows },
    view: Figures.layer(
      { width: 470, height: 180 },
      Figures.line({
        data: "schedule",
        x: { field: "step", title: "step" },
        y: {
          field: "lr",
          title: "learning rate (log)",
          // Room above and below the flat lines, which would sit on the frame otherwise.
          scale: {
            type: "log",
            domain: [
              Math.min(...rows.map((r) => r.lr)) / 2,
              Math.max(...rows.map((r) => r.lr)) * 2,
            ],
          },
        },
        color: { field: "group", title: "group" },
        interpolate: "step-after",
        points: true,
        positive: true,
      }),
    ),
  });
};

const cosineFigure = (m: ReadonlyArray<MetricsRecord>): Figures.Figure => {
  const rows = m.map((r) => ({ step: r.step, cosine: r.cosine }));
  const avg = mean(rows.map((r) => r.cosine));
  return Figures.figure({
    id: "fig2b",
    title: "Fig. 2b — cosine between g_R and g_M",
    caption: "cos(∇L_R, ∇L_M) at each logged step: the mean over parameter tensors that both " +
      "streams reach (Cooperative.statistics). Below 0 the mismatch regulariser pulls against " +
      `reconstruction. Dashed: the mean (${fmt(avg)}).`,
    datasets: { cosine: rows, zero: [{ y: 0 }], mean: [{ y: avg }] },
    view: Figures.layer(
      { width: 940, height: 220 },
      Figures.rules({ data: "zero", y: "y", stroke: "#888" }),
      Figures.rules({ data: "mean", y: "y", stroke: Figures.COLORS[1], dash: [5, 4] }),
      Figures.line({
        data: "cosine",
        x: { field: "step", title: "step" },
        y: { field: "cosine", title: "cos(g_R, g_M)" },
        points: m.length <= 120,
      }),
    ),
  });
};

const conflictFigure = (m: ReadonlyArray<MetricsRecord>): Figures.Figure => {
  const rows = m.map((r) => ({ step: r.step, conflict: r.conflict }));
  return Figures.figure({
    id: "fig2c",
    title: "Fig. 2c — share of conflicting gradient entries",
    caption: "The fraction of gradient entries, among those where both g_R and g_M are " +
      "non-zero, whose signs are opposite, at each logged step. Dashed: 50% (signs no better " +
      "than chance).",
    datasets: { conflict: rows, half: [{ y: 0.5 }] },
    view: Figures.layer(
      { width: 940, height: 200 },
      Figures.rules({ data: "half", y: "y", stroke: "#888", dash: [5, 4] }),
      Figures.line({
        data: "conflict",
        x: { field: "step", title: "step" },
        y: {
          field: "conflict",
          title: "conflicting entries",
          axis: { format: "%" },
          scale: { domain: [0, 1] },
        },
        points: m.length <= 120,
      }),
    ),
  });
};

const ratioFigure = (m: ReadonlyArray<MetricsRecord>): Figures.Figure => {
  const rows = m.filter((r) => r.regRatio !== undefined).map((r) => ({
    step: r.step,
    regRatio: r.regRatio as number,
  }));
  return Figures.figure({
    id: "ratio",
    title: "‖λ_M·sim·g_M‖ / ‖g_R‖",
    caption: "How large the regulariser's share of the merged gradient (Eq. 6) is next to the " +
      "reconstruction gradient, at each logged step (log scale).",
    datasets: { ratio: rows },
    view: Figures.layer(
      { width: 940, height: 200 },
      Figures.line({
        data: "ratio",
        x: { field: "step", title: "step" },
        y: { field: "regRatio", title: "‖λ_M·sim·g_M‖ / ‖g_R‖ (log)", scale: { type: "log" } },
        positive: true,
        points: rows.length <= 120,
      }),
    ),
  });
};

const mismatchFigure = (
  layers: ReadonlyArray<LayerMismatch>,
  selected: string,
  probe: Probe,
): Figures.Figure => {
  const rows = layers.map((l, index) => ({
    layer: l.path,
    index,
    mismatch: l.mismatch,
    relative: l.relative,
    selected: l.path === selected,
  }));
  const many = rows.length > 40;
  return Figures.figure({
    id: "mismatch",
    title: "Per-layer mismatch M(X_i) = ‖X_i − q(X_i)‖_F (Eq. 2)",
    caption: `The trained model's mismatch per quantized layer on ${probe.names.length} centre ` +
      `${probe.side}×${probe.side} LR crops (${probe.names.join(", ")}), in forward order; the ` +
      `layer shown in Fig. 1, 3b–c and 5 (${selected}) is orange.`,
    datasets: { layers: rows },
    view: {
      width: 940,
      height: 200,
      data: { name: "layers" },
      mark: { type: "bar" },
      encoding: {
        x: {
          field: many ? "index" : "layer",
          type: "ordinal",
          sort: many ? undefined : { field: "index" },
          title: many ? "quantized layer (forward order)" : "quantized layer",
          axis: { labelAngle: many ? 0 : -30, labelLimit: 320 },
        },
        y: { field: "mismatch", type: "quantitative", title: "‖X − q(X)‖_F" },
        color: {
          field: "selected",
          type: "nominal",
          scale: { domain: [false, true], range: [Figures.COLORS[0], Figures.COLORS[1]] },
          legend: null,
        },
        tooltip: [{ field: "layer" }, { field: "mismatch" }, { field: "relative" }],
      },
    },
  });
};

/** Up to `k` channel indices spread evenly over `c` channels. */
export const channelsShown = (c: number, k = 16): number[] =>
  c <= k ? Array.from({ length: c }, (_, i) => i) : Array.from(
    { length: k },
    (_, i) => Math.round((i * (c - 1)) / (k - 1)),
  );

/** Fig. 1's rows: the spread of each shown channel (over all images) and of each image. */
export function distributionRows(
  a: Pick<Activation, "x" | "channels">,
  names: ReadonlyArray<string>,
) {
  const c = a.channels;
  const perImage = a.x.length / names.length;
  const channels = channelsShown(c).map((ch) => {
    const v = new Float32Array(a.x.length / c);
    for (let i = 0, k = ch; k < a.x.length; i++, k += c) v[i] = a.x[k];
    return { channel: `c${ch}`, index: ch, ...spread(v) };
  });
  const images = names.map((name, i) => ({
    image: name,
    index: i,
    ...spread(a.x.subarray(i * perImage, (i + 1) * perImage)),
  }));
  return { channels, images };
}

const fig1Figure = (
  fp32: Activation,
  trained: Activation,
  path: string,
  probe: Probe,
  fp32Note: string,
): Figures.Figure => {
  const { channels, images } = distributionRows(fp32, probe.names);
  const bounds = trained.lower !== undefined
    ? [
      { y: trained.lower, bound: "l_a (trained)" },
      { y: trained.upper as number, bound: "u_a (trained)" },
    ]
    : [];
  const panel = (data: string, field: string, title: string, width: number) =>
    Figures.layer(
      { title, width, height: 240 },
      ...Figures.ranges({
        data,
        category: {
          field,
          title: field === "channel" ? "channel" : "image",
          sort: null,
          axis: { labelAngle: field === "channel" ? 0 : -30, labelLimit: 240 },
        },
        yTitle: `input of ${path}`,
      }),
      ...(bounds.length
        ? [
          Figures.rules({
            data: "bounds",
            y: "y",
            color: {
              field: "bound",
              title: "quantizer range",
              domain: ["l_a (trained)", "u_a (trained)"],
            },
            dash: [5, 3],
            strokeWidth: 1.5,
          }),
        ]
        : []),
    );
  return Figures.figure({
    id: "fig1",
    title: `Fig. 1 — distribution mismatch of the input of ${path} (FP32)`,
    caption: `The FP32 network's input of ${path} per channel (${channels.length} of ` +
      `${fp32.channels}, over all crops) and per image (all channels). Box: quartiles; thick ` +
      "line: 1st–99th percentile; thin line: min–max; white: median. Dashed: the trained " +
      `quantizer's one range [l_a, u_a] for all of them. ${fp32Note}`,
    datasets: { channels, images, bounds },
    view: Figures.hconcat(
      panel("channels", "channel", "per channel", 560),
      panel("images", "image", "per image", Math.max(200, 60 * images.length)),
    ),
  });
};

const weightErrorFigure = (
  rows: ReadonlyArray<WeightError>,
  recipe: Recipe.Recipe,
  selected: string,
  label: string,
): Figures.Figure => {
  const name = (p: string) =>
    p === POLICY.max
      ? "max (Eq. 7)"
      : p === POLICY.percentile
      ? `percentile ${recipe.quant.percentile}`
      : label;
  const data = rows.map((r) => ({ ...r, policyName: name(r.policy) }));
  const bits = weightBits(recipe);
  const nLayers = new Set(rows.map((r) => r.layer)).size;
  const many = nLayers > 40;
  const domain = [name(POLICY.max), name(POLICY.percentile), label];
  const panel = (b: number): Figures.Spec => ({
    title: `W${b}${b === recipe.quant.wbits ? " (this run's bits)" : ""}`,
    width: Math.min(760, Math.max(460, nLayers * 60)),
    height: 200,
    data: { name: "errors" },
    transform: [{ filter: `datum.bits === ${b}` }],
    mark: many ? { type: "line", point: true } : { type: "bar" },
    encoding: {
      x: {
        field: many ? "index" : "layer",
        type: many ? "quantitative" : "nominal",
        sort: many ? undefined : { field: "index" },
        title: "quantized layer" + (many ? " (forward order)" : ""),
        axis: { labelAngle: -30, labelLimit: 320 },
      },
      ...(many ? {} : { xOffset: { field: "policyName", sort: domain } }),
      y: { field: "qe", type: "quantitative", title: "‖W − q(W)‖ / ‖W‖" },
      color: { field: "policyName", title: "u_w from", scale: { domain } },
      tooltip: [{ field: "layer" }, { field: "policyName" }, { field: "qe" }, { field: "u" }],
    },
  });
  return Figures.figure({
    id: "fig3a",
    title: "Fig. 3a — weight quantization error per layer",
    caption: "The relative error of quantizing each layer's trained weights to [−u_w, u_w] with " +
      `a fixed global policy (u_w = max|W|, or the ${recipe.quant.percentile} percentile of |W|) ` +
      `and with this run's own range (${label}${
        bits.some((b) => b !== recipe.quant.wbits)
          ? `, its parameters as trained at W${recipe.quant.wbits}`
          : ""
      }). ${selected} is the layer of Fig. 3b–c.`,
    datasets: { errors: data },
    view: Figures.vconcat(...bits.map(panel)),
  });
};

const weightHistogramFigure = (
  id: string,
  title: string,
  w: Float32Array,
  path: string,
  bits: number,
  uMax: number,
  uTrained: number | undefined,
  label: string,
): Figures.Figure => {
  const bins = histogram(w, -uMax, uMax, 81).map((b) => ({ ...b }));
  const gridNames = ["max grid", `${label} grid`];
  const grids = [
    ...gridLevels(-uMax, uMax, bits).map((x) => ({ x, grid: gridNames[0] })),
    ...(uTrained !== undefined
      ? gridLevels(-uTrained, uTrained, bits).map((x) => ({ x, grid: gridNames[1] }))
      : []),
  ];
  const inside = uTrained === undefined
    ? 1
    : w.reduce((n, v) => (Math.abs(v) <= uTrained ? n + 1 : n), 0) / w.length;
  return Figures.figure({
    id,
    title,
    caption: `Histogram of the ${w.length} trained weights of ${path} (√ scale) with the ` +
      `${2 ** bits} levels of a ${bits}-bit symmetric quantizer: dashed with u_w = max|W| ` +
      `(${fmt(uMax, 4)})` +
      (uTrained !== undefined
        ? `, solid with ${label} (u_w = ${fmt(uTrained, 4)}, which keeps ${pct(inside)} of the ` +
          "weights inside the range)."
        : "."),
    datasets: { bins, grids },
    view: Figures.layer(
      { width: 940, height: 220 },
      Figures.histogram({
        data: "bins",
        y: { field: "count", title: "weights (√ scale)", scale: { type: "sqrt" } },
        xTitle: `weight of ${path}`,
      }),
      {
        data: { name: "grids" },
        mark: { type: "rule", strokeWidth: 1.2 },
        encoding: {
          x: { field: "x", type: "quantitative" },
          color: {
            field: "grid",
            title: `${bits}-bit levels`,
            scale: { domain: gridNames, range: ["#555", Figures.COLORS[1]] },
          },
          strokeDash: {
            field: "grid",
            legend: null,
            scale: { domain: gridNames, range: [[4, 3], [1, 0]] },
          },
        },
      },
    ),
  });
};

/** Shared bins for Fig. 5: fraction of each series' values per bin, over all series. */
export function activationBins(
  series: ReadonlyArray<{ readonly name: string; readonly x: Float32Array }>,
  extra: ReadonlyArray<number>,
  n = 120,
) {
  let lo = Infinity, hi = -Infinity;
  for (const s of series) {
    for (let i = 0; i < s.x.length; i++) {
      const v = s.x[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  for (const v of extra) {
    if (Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  if (!(hi > lo)) hi = lo + 1;
  const rows = series.flatMap((s) =>
    histogram(s.x, lo, hi, n).map((b) => ({
      series: s.name,
      x0: b.x0,
      x1: b.x1,
      count: b.count,
      fraction: b.count / s.x.length,
    }))
  );
  return { lo, hi, rows };
}

const outside = (x: Float32Array, l: number, u: number) =>
  x.reduce((n, v) => (v < l || v > u ? n + 1 : n), 0) / x.length;

/** One panel of Fig. 5: a trained model's layer input vs its range, with the FP32 one. */
interface Fig5Row {
  readonly name: string;
  readonly trained: Activation;
}

/** The trained model's series in Fig. 5 (its panel's title names the row). */
const TRAINED = "the trained model";

const fig5Figure = (
  id: string,
  rows: ReadonlyArray<Fig5Row>,
  fp32: Activation | undefined,
  path: string,
  probe: Probe,
  fp32Note: string,
): Figures.Figure => {
  const fpName = "FP32 network";
  const series = [
    ...(fp32 ? [{ name: fpName, x: fp32.x }] : []),
    ...rows.map((r) => ({ name: r.name, x: r.trained.x })),
  ];
  const { lo, hi, rows: bins } = activationBins(
    series,
    rows.flatMap((r) => [r.trained.lower ?? NaN, r.trained.upper ?? NaN]),
  );
  const grids = rows.flatMap((r) =>
    r.trained.lower === undefined
      ? []
      : gridLevels(r.trained.lower, r.trained.upper!, r.trained.abits!).map((x) => ({
        row: r.name,
        x,
      }))
  );
  const bounds = rows.flatMap((r) =>
    r.trained.lower === undefined ? [] : [
      { row: r.name, x: r.trained.lower, bound: "l_a" },
      { row: r.name, x: r.trained.upper!, bound: "u_a" },
    ]
  );
  const panel = (r: Fig5Row, i: number): Figures.Spec =>
    Figures.layer(
      { title: rows.length > 1 ? r.name : undefined, width: 760, height: 200 },
      {
        data: { name: "grids" },
        transform: [{ filter: { field: "row", equal: r.name } }],
        mark: { type: "rule", stroke: "#bbb", strokeWidth: 1, clip: true },
        encoding: { x: { field: "x", type: "quantitative", scale: { domain: [lo, hi] } } },
      },
      {
        data: { name: "bins" },
        transform: [
          {
            filter: `(datum.series === '${fpName}' || datum.series === ${
              JSON.stringify(r.name)
            }) && datum.fraction > 0`,
          },
          { calculate: "(datum.x0 + datum.x1) / 2", as: "xc" },
          { calculate: `datum.series === '${fpName}' ? '${fpName}' : '${TRAINED}'`, as: "model" },
        ],
        mark: { type: "line", interpolate: "step", strokeWidth: 1.6, clip: true },
        encoding: {
          x: {
            field: "xc",
            type: "quantitative",
            title: i === rows.length - 1 ? `input of ${path}` : null,
            scale: { domain: [lo, hi] },
          },
          y: {
            field: "fraction",
            type: "quantitative",
            title: "share of values (log)",
            scale: { type: "log" },
          },
          color: {
            field: "model",
            title: "model",
            scale: { domain: [fpName, TRAINED], range: ["#999", Figures.COLORS[0]] },
          },
        },
      },
      {
        data: { name: "bounds" },
        transform: [{ filter: { field: "row", equal: r.name } }],
        mark: { type: "rule", stroke: Figures.COLORS[2], strokeWidth: 2, clip: true },
        encoding: { x: { field: "x", type: "quantitative" } },
      },
    );
  const clip = rows.map((r) =>
    r.trained.lower === undefined
      ? `${r.name}: no activation quantizer`
      : `${r.name}: ${pct(outside(r.trained.x, r.trained.lower, r.trained.upper!))} outside ` +
        `[${fmt(r.trained.lower)}, ${fmt(r.trained.upper!)}]`
  );
  const fpClip = fp32 && rows[0]?.trained.lower !== undefined
    ? `; FP32 network: ${pct(outside(fp32.x, rows[0].trained.lower, rows[0].trained.upper!))}` +
      (rows.length > 1 ? ` outside the first row's range` : " outside it")
    : "";
  return Figures.figure({
    id,
    title: `Fig. 5 — activation distribution before quantization (${path})`,
    caption: `The input of ${path} before its quantizer in the trained model (blue) and in the ` +
      `FP32 network (grey) on ${probe.names.length} centre ${probe.side}×${probe.side} LR crops; ` +
      `red: the quantizer's range [l_a, u_a], light grey: its ${
        rows[0]?.trained.abits ? 2 ** rows[0].trained.abits : "–"
      } levels. Shares of values: ${clip.join("; ")}${fpClip}.` +
      (rows.some((r) => r.trained.dynamic)
        ? " (A range marked dynamic is computed from each input; the one shown is for these crops.)"
        : "") +
      (fp32Note ? ` ${fp32Note}` : ""),
    datasets: { bins, grids, bounds },
    view: rows.length === 1 ? panel(rows[0], 0) : Figures.vconcat(...rows.map(panel)),
  });
};

// ---------------------------------------------------------------------------------------------
// The page

const esc = (s: string) =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll(
    '"',
    "&quot;",
  );

/** JSON that is safe inside `<script>`. */
const scriptJson = (v: unknown) => JSON.stringify(v).replaceAll("<", "\\u003c");

/** A rendered figure. */
interface Drawn {
  readonly figure: Figures.Figure;
  readonly svg: string;
}

/** A section of the page: a heading, some paragraphs and figures, or raw HTML. */
interface Section {
  readonly id: string;
  readonly title: string;
  readonly html: string;
}

const figureHtml = (d: Drawn) =>
  `<figure id="${d.figure.id}">\n<h3>${esc(d.figure.title)}</h3>\n${d.svg}\n` +
  `<figcaption>${esc(d.figure.caption)}</figcaption>\n` +
  `<script type="application/json" id="data-${d.figure.id}">${
    scriptJson(d.figure.datasets)
  }</script>\n</figure>`;

const note = (text: string, cls = "note") => `<p class="${cls}">${esc(text)}</p>`;

const CSS = `
body { font: 15px/1.45 Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 64px; background: white; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 15px; margin: 0 0 6px; }
.sub { color: #666; margin: 0 0 16px; }
nav { font-size: 13px; margin: 8px 0 16px; }
nav a { margin-right: 12px; color: #4c78a8; text-decoration: none; }
figure { margin: 18px 0 26px; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: #444; max-width: 960px; }
.note { font-size: 13px; color: #555; background: #f4f4f4; border-left: 3px solid #bbb; padding: 6px 10px; }
ul.findings li { margin: 4px 0; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
pre { font-size: 12px; background: #f6f6f6; padding: 10px; overflow-x: auto; }
.crops { border-collapse: collapse; }
.crops td, .crops th { border: none; background: none; text-align: center; vertical-align: top;
  padding: 3px; font-size: 12px; width: calc(var(--crop, 144px) + 2px); }
.crops img { width: var(--crop, 144px); height: var(--crop, 144px); image-rendering: pixelated;
  display: block; margin: 0 auto; }
`;

const pageHtml = (title: string, sub: string, sections: ReadonlyArray<Section>) =>
  `<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n` +
  `<meta name="viewport" content="width=device-width, initial-scale=1">\n` +
  `<title>${esc(title)}</title>\n<style>${CSS}</style>\n</head>\n<body>\n<main>\n` +
  `<h1>${esc(title)}</h1>\n<p class="sub">${esc(sub)}</p>\n<nav>${
    sections.map((s) => `<a href="#${s.id}">${esc(s.title)}</a>`).join("")
  }</nav>\n` +
  sections.map((s) => `<section id="${s.id}">\n<h2>${esc(s.title)}</h2>\n${s.html}\n</section>`)
    .join("\n") +
  `\n</main>\n</body>\n</html>\n`;

const tableHtml = (head: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) =>
  `<table>\n<tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>\n` +
  rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("\n") +
  "\n</table>";

const scoreCells = (s: Score | null | undefined): [string, string] =>
  !s ? ["–", "–"] : s.flagged?.length ? [`⚠ flagged: ${s.flagged[0].reason}`, "–"] : [
    typeof s.psnr === "number" && Number.isFinite(s.psnr) ? s.psnr.toFixed(2) : "–",
    typeof s.ssim === "number" && Number.isFinite(s.ssim) ? s.ssim.toFixed(4) : "–",
  ];

/** A score in a sentence: `28.42 dB`, or the flagged image's PSNR and why it is flagged. */
const psnrText = (s: Score | null | undefined): string =>
  !s
    ? "–"
    : s.flagged?.length
    ? `${
      typeof s.flagged[0].psnr === "number" ? `${s.flagged[0].psnr.toFixed(2)} dB ` : ""
    }(flagged: ${s.flagged[0].reason.replace(/^[0-9.]+ dB, /, "")})`
    : typeof s.psnr === "number" && Number.isFinite(s.psnr)
    ? `${s.psnr.toFixed(2)} dB`
    : "–";

/** Draws figures and writes each as `<dir>/<id>.svg` and `<dir>/<id>.vl.json`. */
const drawAll = (figs: ReadonlyArray<Figures.Figure>, dir: string) =>
  Effect.promise(async () => {
    await Deno.mkdir(dir, { recursive: true });
    const out: Drawn[] = [];
    for (const f of figs) {
      const svg = await Figures.render(f);
      await Deno.writeTextFile(`${dir}/${f.id}.svg`, svg + "\n");
      await Deno.writeTextFile(`${dir}/${f.id}.vl.json`, JSON.stringify(f.spec, null, 1) + "\n");
      out.push({ figure: f, svg });
    }
    return out;
  });

const writeAtomic = (file: string, text: string) =>
  Effect.tryPromise({
    try: async () => {
      await Deno.writeTextFile(`${file}.tmp`, text);
      await Deno.rename(`${file}.tmp`, file);
    },
    catch: (e) => new ReportError({ file, reason: `cannot write: ${(e as Error).message}` }),
  });

/** Where a page's figures go: `<page without .html>/` (`<run>/report/` for `<run>/report.html`). */
export const figureDir = (page: string): string => page.replace(/\.html?$/i, "") || `${page}.d`;

// ---------------------------------------------------------------------------------------------
// The run report

/** Options of {@link write}. */
export interface Options {
  /** The quantized layer of Fig. 1, 3b–c and 5 (default: the largest mismatch). */
  readonly layer?: string;
  /** How many evaluation images to probe (default 4). */
  readonly images?: number;
  /** The page (default `<dir>/report.html`); figures go to {@link figureDir} of it. */
  readonly out?: string;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

/** What a report wrote and found. */
export interface Written {
  readonly page: string;
  readonly figures: ReadonlyArray<string>;
  /** One sentence per observation (the page's "What the figures show"). */
  readonly findings: ReadonlyArray<string>;
  /** The layer of Fig. 1, 3b–c and 5 (undefined without quantized layers). */
  readonly layer?: string;
}

/** Whether a run computed g_M: some logged step has a non-zero cosine or conflict. */
export const computesMismatchGradient = (m: ReadonlyArray<MetricsRecord>): boolean =>
  m.some((r) => r.cosine !== 0 || r.conflict !== 0);

/**
 * The method of a stored recipe in a few words, from its JSON: `method odm (…)` (a recipe of
 * `Recipe.toJSON`'s method form) or the weight/activation ranges and merge rule of the
 * earlier form.
 */
export function describeMethod(json: unknown): string {
  if (!isRecord(json)) return "method unknown";
  const m = json.method;
  const reg = isRecord(json.regularizer) && typeof json.regularizer.merge === "string"
    ? `, merge ${json.regularizer.merge}`
    : "";
  if (typeof m === "string") return `method ${m}${reg}`;
  if (isRecord(m) && typeof m.name === "string") {
    const o = isRecord(m.options) && Object.keys(m.options).length
      ? ` (${Object.entries(m.options).map(([k, v]) => `${k} ${v}`).join(", ")})`
      : "";
    return `method ${m.name}${o}${reg}`;
  }
  const q = isRecord(json.quant) ? json.quant : {};
  const w = typeof q.weightRange === "string" ? q.weightRange : "clipCorrected";
  const a = typeof q.activationRange === "string" ? q.activationRange : "learnable";
  return `${w} weights, ${a} activations${reg}`;
}

/** Numbers behind the findings of the gradient figures. */
export function gradientFindings(m: ReadonlyArray<MetricsRecord>): string[] {
  const cos = m.map((r) => r.cosine);
  const negative = cos.filter((c) => c < 0).length;
  let changes = 0;
  for (let i = 1; i < cos.length; i++) if (Math.sign(cos[i]) !== Math.sign(cos[i - 1])) changes++;
  const conf = m.map((r) => r.conflict);
  const share = negative / Math.max(1, m.length);
  const ratios = m.flatMap((r) => (r.regRatio !== undefined && r.regRatio > 0 ? [r.regRatio] : []));
  return [
    `cos(g_R, g_M) over ${m.length} logged steps: mean ${fmt(mean(cos))}, from ${
      fmt(Math.min(...cos))
    } to ${fmt(Math.max(...cos))}; negative at ${negative} of ${m.length} steps, ` +
    `changing sign ${changes} times` +
    (share >= 0.3 && share <= 0.7
      ? ": it oscillates around 0, as in the paper's Fig. 2b."
      : negative === 0
      ? ": it never turns negative."
      : share === 1
      ? ": it never turns positive."
      : `: it changes sign, as in the paper's Fig. 2b, but leans ${
        share < 0.3 ? "positive" : "negative"
      }.`),
    `Conflicting gradient entries (Fig. 2c): mean ${pct(mean(conf))}, from ${
      pct(Math.min(...conf))
    } to ${pct(Math.max(...conf))}.`,
    ...(ratios.length
      ? [
        `‖λ_M·sim·g_M‖/‖g_R‖: median ${
          fmt(quantileSorted([...ratios].sort((a, b) => a - b), 0.5))
        }, from ${fmt(Math.min(...ratios))} to ${fmt(Math.max(...ratios))}.`,
      ]
      : []),
  ];
}

/** The finding of Fig. 3a at the run's bit-width: worst layer under max, and the run's range. */
export function weightFinding(
  rows: ReadonlyArray<WeightError>,
  recipe: Recipe.Recipe,
  label: string,
): string | undefined {
  const b = recipe.quant.wbits;
  const max = rows.filter((r) => r.bits === b && r.policy === POLICY.max);
  if (max.length === 0) return undefined;
  const worst = max.reduce((a, r) => (r.qe > a.qe ? r : a));
  const own = rows.find((r) =>
    r.bits === b && r.policy === POLICY.trained && r.layer === worst.layer
  );
  const pctl = rows.find((r) =>
    r.bits === b && r.policy === POLICY.percentile && r.layer === worst.layer
  );
  return `Largest weight QE under max at W${b}: ${worst.layer} (${fmt(worst.qe, 4)}); ` +
    (pctl ? `the ${recipe.quant.percentile} percentile gives ${fmt(pctl.qe, 4)}` : "") +
    (own
      ? `, ${label} ${fmt(own.qe, 4)} (${
        own.qe <= worst.qe
          ? `${pct(1 - own.qe / worst.qe)} lower`
          : `${pct(own.qe / worst.qe - 1)} higher`
      } than max).`
      : ".");
}

/**
 * Writes the report of a training run folder: `<dir>/report.html` (or `opts.out`) and one SVG
 * (with its Vega-Lite spec) per figure in {@link figureDir}. Fails with {@link ReportError}
 * naming the file when `metrics.jsonl` is missing or unreadable, and with the checkpoint's
 * error when `checkpoint.bin` is missing, truncated or corrupt.
 */
export const write = (dir: string, opts: Options = {}) =>
  Effect.gen(function* () {
    const started = performance.now();
    const log = opts.log ?? (() => {});
    yield* Backend.Backend;
    const root = dir.replace(/\/+$/, "") || "/";
    const metrics = yield* readMetrics(`${root}/metrics.jsonl`);
    const summary = yield* readSummary(`${root}/summary.json`);
    const trained = yield* loadTrained(`${root}/checkpoint.bin`);
    const page = opts.out ?? `${root}/report.html`;
    try {
      const recipe = trained.recipe;
      const findings: string[] = [];
      const figs: Figures.Figure[] = [lossFigure(metrics), scheduleFigure(recipe.train)];
      const sections: Section[] = [];
      const quantized = Quant.layers(trained.model);
      // g_M was computed when some logged step has a cosine or conflict (reconstruction-only
      // merges log zeros: they never compute it).
      const aux = quantized.length > 0 && computesMismatchGradient(metrics);
      const logsRatio = metrics.some((r) => r.regRatio !== undefined);
      const hasRatio = metrics.some((r) => (r.regRatio ?? 0) > 0);

      // Findings from the logged steps.
      if (aux) findings.push(...gradientFindings(metrics));
      const last = metrics[metrics.length - 1];
      findings.push(
        `L1 ${fmt(metrics[0].l1)} at step ${metrics[0].step} → ${fmt(last.l1)} at step ` +
          `${last.step}; L_M ${fmt(metrics[0].mismatch)} → ${fmt(last.mismatch)}.`,
      );

      // The model figures.
      let layer: string | undefined;
      const modelFigs: Figures.Figure[] = [];
      const modelNotes: string[] = [];
      if (quantized.length > 0) {
        log("probing the checkpoint's model on the evaluation images");
        const { pairs, note: dataNote } = yield* evalPairs(recipe, opts.images ?? 4);
        const probe = probeOf(pairs);
        if (dataNote) modelNotes.push(dataNote);
        const mismatches = yield* layerMismatch(trained.model, trained.params, probe);
        if (opts.layer !== undefined && !quantized.some((l) => l.path === opts.layer)) {
          return yield* Effect.fail(
            new UnknownLayer({ layer: opts.layer, known: quantized.map((l) => l.path) }),
          );
        }
        layer = opts.layer ??
          mismatches.reduce((a, m) => (m.mismatch > a.mismatch ? m : a)).path;
        const chosen = opts.layer !== undefined ? "named with --layer" : "the largest mismatch";
        const start = yield* startingParams(recipe);
        const fp32Note = start.params
          ? ""
          : `FP32 here means the trained weights without quantizers: ${start.note}.`;
        if (start.note) modelNotes.push(start.note);
        const fp32 = yield* activationAt(
          trained.model,
          start.params ?? trained.params,
          probe,
          layer,
          "calibrate",
        );
        if (start.params) Tree.dispose(start.params);
        const act = yield* activationAt(trained.model, trained.params, probe, layer, "eval");
        const sel = mismatches.find((m) => m.path === layer)!;
        findings.push(
          `Layer of Fig. 1, 3b–c and 5: ${layer} (${chosen}; M = ${fmt(sel.mismatch)}, ` +
            `${pct(sel.relative)} of ‖X‖ on ${probe.names.length} crops)` +
            (act.lower !== undefined
              ? `; ${pct(outside(act.x, act.lower, act.upper!))} of its inputs fall outside ` +
                `[l_a, u_a] = [${fmt(act.lower)}, ${fmt(act.upper!)}] (FP32 network: ${
                  pct(outside(fp32.x, act.lower, act.upper!))
                }).`
              : "."),
        );
        modelFigs.push(
          mismatchFigure(mismatches, layer, probe),
          fig1Figure(fp32, act, layer, probe, fp32Note),
          fig5Figure("fig5", [{ name: "this run", trained: act }], fp32, layer, probe, fp32Note),
        );
        if (recipe.quant.wbits <= 8) {
          const errors = yield* weightErrors(trained);
          const label = trainedLabel(trained.model);
          const wf = weightFinding(errors, recipe, label);
          if (wf) findings.push(wf);
          modelFigs.push(weightErrorFigure(errors, recipe, layer, label));
          const w = yield* weightsOf(trained, layer);
          const uMax = w.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          for (const [id, b] of [["fig3b", 4], ["fig3c", 2]] as const) {
            const own = errors.find((r) =>
              r.layer === layer && r.policy === POLICY.trained && r.bits === b
            );
            modelFigs.push(
              weightHistogramFigure(
                id,
                `Fig. 3${id.slice(-1)} — weights of ${layer} against the ${b}-bit grid`,
                w,
                layer,
                b,
                uMax,
                own?.u,
                label,
              ),
            );
          }
        } else modelNotes.push("The weights are not quantized (wbits 32): no Fig. 3.");
      } else {
        modelNotes.push(
          "This model has no quantized layers (a full-precision recipe): no mismatch, " +
            "Fig. 1, 3 or 5.",
        );
      }

      const gradFigs = aux ? [cosineFigure(metrics), conflictFigure(metrics)] : [];
      if (hasRatio) gradFigs.push(ratioFigure(metrics));
      figs.push(...gradFigs, ...modelFigs);
      log(`drawing ${figs.length} figures`);
      const drawn = yield* drawAll(figs, figureDir(page));
      const byId = new Map(drawn.map((d) => [d.figure.id, d] as const));
      const show = (...ids: string[]) =>
        ids.flatMap((id) => (byId.has(id) ? [figureHtml(byId.get(id)!)] : [])).join("\n");

      const s = summary;
      const head = `${recipe.name}: ${recipe.model.arch} ×${recipe.model.scale}, ` +
        `W${recipe.quant.wbits}A${recipe.quant.abits}, ${describeMethod(trained.recipeJson)}, ` +
        `checkpoint at step ${trained.step} of ${recipe.train.steps}`;
      if (s) {
        const [fp, ptq, qat] = [s.fp32, s.ptq, s.qat].map(psnrText);
        findings.push(
          `PSNR on the evaluation images: FP32 ${fp}, calibrated ${ptq}, after QAT ${qat}.`,
        );
      }
      sections.push({
        id: "findings",
        title: "What the figures show",
        html: `<ul class="findings">${findings.map((f) => `<li>${esc(f)}</li>`).join("")}</ul>` +
          modelNotes.map((n) => note(n)).join(""),
      });
      sections.push({ id: "training", title: "Training", html: show("loss", "lr") });
      sections.push({
        id: "gradients",
        title: "The two gradient streams (Fig. 2b, 2c)",
        html: (aux ? show("fig2b", "fig2c") : note(
          "This run's merge rule does not compute g_M (every logged cosine and conflict is 0), " +
            "so there is no cosine or conflict to draw.",
        )) +
          (hasRatio ? show("ratio") : note(
            logsRatio
              ? "‖λ_M·sim·g_M‖/‖g_R‖ is 0 at every logged step (the merge does not use g_M), " +
                "so that chart is left out."
              : "‖λ_M·sim·g_M‖/‖g_R‖: not logged by this run (its metrics.jsonl has no " +
                "regRatio field), so that chart is left out.",
          )),
      });
      sections.push({
        id: "activations",
        title: "Activations (Fig. 1, Fig. 5)",
        html: byId.has("fig1") ? show("mismatch", "fig1", "fig5") : note("No quantized layers."),
      });
      sections.push({
        id: "weights",
        title: "Weights (Fig. 3a–c)",
        html: byId.has("fig3a") ? show("fig3a", "fig3b", "fig3c") : note("No weight quantizers."),
      });
      sections.push({
        id: "table",
        title: "Final table",
        html: s
          ? tableHtml(
            [`model (×${recipe.model.scale})`, "PSNR (dB)", "SSIM"],
            [
              ["FP32", ...scoreCells(s.fp32)],
              ["quantized, calibrated (before QAT)", ...scoreCells(s.ptq)],
              ["quantized, after QAT", ...scoreCells(s.qat)],
            ],
          ) +
            note(
              `${s.steps} steps in ${s.seconds.toFixed(0)} s` +
                (s.stepsPerSecond !== undefined ? ` (${s.stepsPerSecond.toFixed(2)} step/s)` : "") +
                ` on ${s.backend}.`,
            )
          : note(
            `No summary.json in ${root}: the run has not finished (the checkpoint is at step ` +
              `${trained.step} of ${recipe.train.steps}); continue it with deno task train ` +
              `--out ${root} --resume.`,
          ),
      });
      sections.push({
        id: "recipe",
        title: "Recipe",
        html: `<pre>${esc(JSON.stringify(trained.recipeJson, null, 2))}</pre>`,
      });
      const html = pageHtml(`Report: ${recipe.name}`, head, sections);
      yield* writeAtomic(page, html);
      log(`wrote ${page} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      return {
        page,
        figures: drawn.map((d) => `${figureDir(page)}/${d.figure.id}.svg`),
        findings,
        layer,
      } satisfies Written;
    } finally {
      Tree.dispose(trained.params);
    }
  });

// ---------------------------------------------------------------------------------------------
// The comparison report

/** A row of `compare.json` (see lib/cli/compare.ts). */
interface CompareRow {
  readonly method: string;
  readonly label: string;
  readonly wbits: number;
  readonly abits: number;
  readonly psnr: number | null;
  readonly ssim: number | null;
  readonly storageK: number;
  readonly bitopsT: number;
  readonly flagged?: string;
}

/**
 * Whether a comparison row is one of Table 7's ablation rows, which `deno task compare
 * --ablation` names by their letter: `a`, `b`, ….
 */
export const isAblationRow = (method: string): boolean => /^[a-z]$/.test(method);

/** Options of {@link writeCompare}. */
export interface CompareOptions {
  /** Layer of Fig. 5 (default: the largest mismatch summed over the ablation rows). */
  readonly layer?: string;
  /** Evaluation images of Fig. 4 (default 2). */
  readonly images?: number;
  /** Probe images of Fig. 5 (default 4). */
  readonly probeImages?: number;
  /** The page (default `<out>/report.html`). */
  readonly out?: string;
  readonly log?: (line: string) => void;
}

/** The HR window (side `side`, on a grid of `stride`) where `ref` is furthest from `hr` (L1). */
export function hardestWindow(
  hr: Image.Image,
  ref: Image.Image,
  side: number,
  stride = 8,
): { x: number; y: number } {
  const w = hr.width, h = hr.height;
  // Integral image of the per-pixel absolute error.
  const integral = new Float64Array((w + 1) * (h + 1));
  for (let y = 0; y < h; y++) {
    let row = 0;
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      row += Math.abs(hr.data[i] - ref.data[i]) + Math.abs(hr.data[i + 1] - ref.data[i + 1]) +
        Math.abs(hr.data[i + 2] - ref.data[i + 2]);
      integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
    }
  }
  const at = (x: number, y: number) => integral[y * (w + 1) + x];
  let best = { x: 0, y: 0 }, bestErr = -1;
  for (let y = 0; y + side <= h; y += stride) {
    for (let x = 0; x + side <= w; x += stride) {
      const e = at(x + side, y + side) - at(x, y + side) - at(x + side, y) + at(x, y);
      if (e > bestErr) {
        bestErr = e;
        best = { x, y };
      }
    }
  }
  return best;
}

const base64 = (bytes: Uint8Array) => {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
};

/** A PNG data URI of an image. */
export const pngDataUri = (img: Image.Image): string =>
  `data:image/png;base64,${base64(Image.encodePng(img))}`;

/** One crop of Fig. 4. */
export interface Crop {
  readonly image: string;
  readonly model: string;
  /** PSNR of the whole image (Y, `scale` pixels shaved, as the tables), NaN for HR. */
  readonly psnr: number;
  readonly x: number;
  readonly y: number;
  readonly side: number;
  readonly uri: string;
}

const readCompare = (file: string) =>
  Effect.gen(function* () {
    const text = yield* readText(
      file,
      "not found: this is not a comparison folder (deno task compare --out DIR writes " +
        "DIR/compare.json)",
    );
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      return yield* Effect.fail(
        new ReportError({ file, reason: `not JSON (${(e as Error).message})` }),
      );
    }
    if (!isRecord(v) || !Array.isArray(v.rows)) {
      return yield* Effect.fail(new ReportError({ file, reason: 'no "rows" array' }));
    }
    return { setup: typeof v.setup === "string" ? v.setup : "", rows: v.rows as CompareRow[] };
  });

/**
 * Writes the report of a `deno task compare` folder, from what compare wrote
 * (`<out>/compare.json`, `<out>/<method>/{summary.json, metrics.jsonl, checkpoint.bin}`):
 * `<out>/report.html` (or `opts.out`) with the comparison table, every method's curves on one
 * chart, Fig. 4 (crops of two evaluation images for bicubic, FP32 and each method, with their
 * PSNR) and, when the rows are Table 7's ablation, Fig. 5 across them. Needs the backend.
 */
export const writeCompare = (outDir: string, opts: CompareOptions = {}) =>
  Effect.gen(function* () {
    const started = performance.now();
    const log = opts.log ?? (() => {});
    yield* Backend.Backend;
    const root = outDir.replace(/\/+$/, "") || "/";
    const page = opts.out ?? `${root}/report.html`;
    const cmp = yield* readCompare(`${root}/compare.json`);
    const methods = cmp.rows.filter((r) => r.method !== "fp32");
    if (methods.length === 0) {
      return yield* Effect.fail(
        new ReportError({ file: `${root}/compare.json`, reason: "holds no method rows" }),
      );
    }
    const findings: string[] = [];
    const notes: string[] = [];

    // Curves of every method on one chart per quantity.
    const curves: Array<Record<string, number | string>> = [];
    const aux = new Set<string>();
    const recipes = new Map<string, Recipe.Recipe>();
    for (const r of methods) {
      const m = yield* readMetrics(`${root}/${r.method}/metrics.jsonl`);
      const h = yield* Checkpoint.readHeader(`${root}/${r.method}/checkpoint.bin`);
      const recipe = yield* Effect.tryPromise({
        try: () => storedRecipe(h.recipe, `${root}/${r.method}/checkpoint.bin (stored recipe)`),
        catch: (e) =>
          new ReportError({
            file: `${root}/${r.method}/checkpoint.bin`,
            reason: (e as Error).message,
          }),
      });
      recipes.set(r.method, recipe);
      const withG = computesMismatchGradient(m);
      if (withG) aux.add(r.method);
      findings.push(
        `${r.method}: L_M ${fmt(m[0].mismatch)} → ${fmt(m[m.length - 1].mismatch)} over ` +
          `${m.length} logged steps` +
          (withG
            ? `, mean cos(g_R, g_M) ${fmt(mean(m.map((x) => x.cosine)))}, mean conflict ` +
              `${pct(mean(m.map((x) => x.conflict)))}.`
            : " (g_M not computed)."),
      );
      for (const x of m) {
        curves.push({
          method: r.method,
          step: x.step,
          l1: x.l1,
          mismatch: x.mismatch,
          cosine: x.cosine,
          conflict: x.conflict,
          ...(x.regRatio !== undefined ? { regRatio: x.regRatio } : {}),
        });
      }
    }
    const order = methods.map((r) => r.method);
    const curvePanel = (field: string, title: string, log: boolean, only?: Set<string>) =>
      Figures.layer(
        { title, width: 440, height: 200 },
        Figures.line({
          data: only ? "curvesAux" : "curves",
          x: { field: "step", title: "step" },
          y: { field, title, ...(log ? { scale: { type: "log" } } : {}) },
          color: { field: "method", title: "method", domain: order },
          positive: log,
        }),
      );
    const curvesAux = curves.filter((c) => aux.has(c.method as string));
    const ratio = curvesAux.some((c) => typeof c.regRatio === "number" && c.regRatio > 0);
    const figs: Figures.Figure[] = [
      Figures.figure({
        id: "curves",
        title: "Training curves of every method",
        caption: "L1 and L_M (Eq. 3) at the logged steps of each method, from the same " +
          "pretrained model, seed and data order" +
          (aux.size
            ? "; the cosine between g_R and g_M and the conflict share for the methods that " +
              `compute g_M (${[...aux].join(", ")}).`
            : "."),
        datasets: { curves, curvesAux },
        view: Figures.vconcat(
          Figures.hconcat(curvePanel("l1", "L1", false), curvePanel("mismatch", "L_M (log)", true)),
          ...(aux.size
            ? [
              Figures.hconcat(
                curvePanel("cosine", "cos(g_R, g_M)", false, aux),
                curvePanel("conflict", "conflicting entries", false, aux),
              ),
            ]
            : []),
          ...(ratio ? [curvePanel("regRatio", "‖λ_M·sim·g_M‖ / ‖g_R‖ (log)", true, aux)] : []),
        ),
      }),
    ];

    // Fig. 5 across the ablation rows.
    const ablation = methods.filter((r) => isAblationRow(r.method));
    const base = recipes.get(methods[0].method)!;
    let fig5Layer: string | undefined;
    if (ablation.length > 0) {
      log(`Fig. 5: probing ${ablation.length} ablation rows`);
      const { pairs, note: dataNote } = yield* evalPairs(base, opts.probeImages ?? 4);
      if (dataNote) notes.push(dataNote);
      const probe = probeOf(pairs);
      const loaded: Trained[] = [];
      try {
        for (const r of ablation) {
          loaded.push(yield* loadTrained(`${root}/${r.method}/checkpoint.bin`));
        }
        const paths = Quant.layers(loaded[0].model).map((l) => l.path);
        if (opts.layer !== undefined && !paths.includes(opts.layer)) {
          return yield* Effect.fail(new UnknownLayer({ layer: opts.layer, known: paths }));
        }
        if (paths.length > 0) {
          let layer = opts.layer;
          if (layer === undefined) {
            const total = new Map<string, number>();
            for (const t of loaded) {
              for (const m of yield* layerMismatch(t.model, t.params, probe)) {
                total.set(m.path, (total.get(m.path) ?? 0) + m.mismatch);
              }
            }
            layer = [...total].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
          }
          fig5Layer = layer;
          const start = yield* startingParams(base);
          if (start.note) notes.push(start.note);
          const fp32 = start.params
            ? yield* activationAt(loaded[0].model, start.params, probe, layer, "calibrate")
            : undefined;
          if (start.params) Tree.dispose(start.params);
          const rows: Fig5Row[] = [];
          for (const [i, t] of loaded.entries()) {
            rows.push({
              name: ablation[i].label,
              trained: yield* activationAt(t.model, t.params, probe, layer, "eval"),
            });
          }
          figs.push(fig5Figure("fig5", rows, fp32, layer, probe, ""));
          findings.push(
            `Fig. 5 (${layer}): ` +
              rows.map((r) =>
                r.trained.lower === undefined
                  ? r.name
                  : `${r.name}: ${pct(outside(r.trained.x, r.trained.lower, r.trained.upper!))} ` +
                    "outside its range"
              ).join("; ") + ".",
          );
        }
      } finally {
        for (const t of loaded) Tree.dispose(t.params);
      }
    }

    // Fig. 4: crops for bicubic, FP32 and each method.
    log("Fig. 4: upscaling the evaluation images with every model");
    const { pairs } = yield* evalPairs(base, opts.images ?? 2);
    const scale = base.model.scale;
    const crops: Crop[] = [];
    const outputs = new Map<string, Image.Image[]>();
    const psnrOf = (sr: Image.Image, i: number) => Iqa.psnr(sr, pairs[i].hr, { shave: scale });
    outputs.set("bicubic", pairs.map((p) => Resize.bicubicUpscale(p.lr, scale)));
    const upscaleAll = (model: Nn.AnyLayer, params: Params) =>
      Effect.gen(function* () {
        const out: Image.Image[] = [];
        for (const p of pairs) {
          const r = yield* Effect.result(Tile.superResolve(model, params, p.lr));
          if (r._tag === "Failure") {
            notes.push(`${stem(p.file)}: ${r.failure.message}`);
            out.push(Image.make(p.hr.width, p.hr.height, new Uint8Array(p.hr.data.length)));
          } else out.push(r.success);
        }
        return out;
      });
    const start = yield* Effect.result(Registry.build(base.model, base.train.seed));
    if (start._tag === "Success") {
      outputs.set("FP32", yield* upscaleAll(start.success.model, start.success.params));
      Tree.dispose(start.success.params);
    } else notes.push(`no FP32 crops: ${start.failure.message}`);
    for (const r of methods) {
      const t = yield* loadTrained(`${root}/${r.method}/checkpoint.bin`);
      try {
        outputs.set(r.method, yield* upscaleAll(t.model, t.params));
      } finally {
        Tree.dispose(t.params);
      }
    }
    for (const [i, p] of pairs.entries()) {
      const side = Math.min(96, p.hr.width, p.hr.height);
      const { x, y } = hardestWindow(p.hr, outputs.get("bicubic")![i], side);
      const crop = (img: Image.Image) => pngDataUri(Image.crop(img, x, y, side, side));
      crops.push({ image: stem(p.file), model: "HR", psnr: NaN, x, y, side, uri: crop(p.hr) });
      for (const [model, imgs] of outputs) {
        crops.push({
          image: stem(p.file),
          model,
          psnr: psnrOf(imgs[i], i),
          x,
          y,
          side,
          uri: crop(imgs[i]),
        });
      }
    }
    const models = ["HR", ...outputs.keys()];
    for (const p of pairs) {
      const scored = crops.filter((c) => c.image === stem(p.file) && c.model !== "HR");
      findings.push(
        `Fig. 4, ${stem(p.file)} (whole-image PSNR): ` +
          scored.map((c) => `${c.model} ${c.psnr.toFixed(2)} dB`).join(", ") + ".",
      );
    }
    const label = (m: string) =>
      m === "HR"
        ? "HR (ground truth)"
        : m === "bicubic" || m === "FP32"
        ? m
        : `${m}: ${methods.find((r) => r.method === m)?.label ?? m}`;
    const fig4 = `<figure id="fig4">\n<h3>Fig. 4 — the same crops for every model</h3>\n` +
      `<table class="crops" style="--crop: ${
        Math.min(144, Math.floor(960 / models.length) - 8)
      }px">\n<tr>${
        models.map((m) => `<th title="${esc(label(m))}">${esc(m)}</th>`).join("")
      }</tr>\n` +
      pairs.map((p) =>
        `<tr>${
          models.map((m) => {
            const c = crops.find((c) => c.image === stem(p.file) && c.model === m)!;
            return `<td><img src="${c.uri}" alt="${esc(`${c.image}: ${m}`)}">` +
              `${Number.isFinite(c.psnr) ? `${c.psnr.toFixed(2)} dB` : esc(c.image)}</td>`;
          }).join("")
        }</tr>\n`
      ).join("") +
      `</table>\n<figcaption>${
        esc(
          `${pairs.length} evaluation images (${
            pairs.map((p) => stem(p.file)).join(", ")
          }), ×${scale}: the ${crops[0]?.side ?? 0}-pixel HR window where bicubic is furthest ` +
            "from the ground truth, for bicubic, the FP32 network and every method (columns: " +
            `${models.map(label).join("; ")}); under each crop the PSNR of the whole image ` +
            `(Y, ${scale} pixels shaved, as in the tables).`,
        )
      }</figcaption>\n<script type="application/json" id="data-fig4">${
        scriptJson(crops.map(({ uri: _, ...c }) => c))
      }</script>\n</figure>`;

    const drawn = yield* drawAll(figs, figureDir(page));
    const byId = new Map(drawn.map((d) => [d.figure.id, d] as const));
    const fmtScore = (x: number | null, d: number) =>
      typeof x === "number" && Number.isFinite(x) ? x.toFixed(d) : "–";
    const best = methods.filter((r) => typeof r.psnr === "number" && Number.isFinite(r.psnr))
      .reduce<CompareRow | undefined>((a, r) => (!a || r.psnr! > a.psnr! ? r : a), undefined);
    if (best) findings.unshift(`Best PSNR: ${best.method} (${fmtScore(best.psnr, 2)} dB).`);
    const sections: Section[] = [
      {
        id: "findings",
        title: "What the figures show",
        html: `<ul class="findings">${findings.map((f) => `<li>${esc(f)}</li>`).join("")}</ul>` +
          notes.map((n) => note(n)).join(""),
      },
      {
        id: "table",
        title: "Comparison",
        html: tableHtml(
          ["method", "W/A", `PSNR (dB) ×${scale}`, "SSIM", "storage (K)", "BitOPs (T)"],
          cmp.rows.map((r) => [
            `${r.method}: ${r.label}`,
            `${r.wbits}/${r.abits}`,
            r.flagged ? `⚠ flagged` : fmtScore(r.psnr, 2),
            fmtScore(r.ssim, 4),
            r.storageK.toFixed(3),
            r.bitopsT.toFixed(2),
          ]),
        ),
      },
      { id: "curves", title: "Training curves", html: figureHtml(byId.get("curves")!) },
      { id: "crops", title: "Outputs (Fig. 4)", html: fig4 },
      {
        id: "ablation",
        title: "Activations across the ablation (Fig. 5)",
        html: byId.has("fig5") ? figureHtml(byId.get("fig5")!) : note(
          ablation.length > 0
            ? "The ablation models have no quantized layers."
            : "This comparison has no ablation rows: deno task compare --ablation runs Table 7 " +
              "(a)–(e) and draws Fig. 5 across them.",
        ),
      },
    ];
    const html = pageHtml(
      `Comparison: ${root.split("/").pop()}`,
      cmp.setup || `${methods.length} methods`,
      sections,
    );
    yield* writeAtomic(page, html);
    log(`wrote ${page} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    return {
      page,
      figures: drawn.map((d) => `${figureDir(page)}/${d.figure.id}.svg`),
      findings,
      layer: fig5Layer,
    } satisfies Written;
  });
