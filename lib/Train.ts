/**
 * Training: Algorithm 1 of the ODM paper as an Effect program.
 *
 * One step (pure tensor maths, one `tf.tidy`), top to bottom:
 *   1. forward the quantized model on the LR batch; the wrapped layers record (X_i, q(X_i));
 *   2. `g_R = ∇ L1(SR, HR)` — the reconstruction stream (tape 1);
 *   3. `g_M = ∇ Σ_i ‖X_i − q(X_i)‖_F` — the mismatch stream, a second backward walk over the
 *      same recorded forward pass (lib/internal/tape.ts), through the quantized part only;
 *   4. merge the streams (Eq. 6, {@link Cooperative.combine}); quantizer parameters get g_R only;
 *   5. Adam with parameter groups (weights 1e-4, quantizer parameters 1e-3, halved on schedule).
 * Weight clipping correction (Eq. 9) needs nothing here: the weight quantizer recomputes the
 * percentile of the current weights in every forward pass.
 *
 * The loop around it is Effect: the batch stream, calibration, evaluation, atomic checkpoints
 * every N steps, progress lines, `metrics.jsonl`, and typed failures (a non-finite loss stops
 * the run and leaves the last good checkpoint in place).
 *
 * A run folder always agrees with itself: a run refuses a folder that holds another one
 * (checkpoint, metrics or summary) unless it resumes it — with the same recipe, up to
 * `train.steps`, `logEvery` and `checkpointEvery` — or replaces it (`force`, which removes the
 * old files first). An interrupted run says which checkpoint it kept.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Tape from "./internal/tape.ts";
import { Data as EffectData, Effect, Stream } from "effect";
import * as Backend from "./Backend.ts";
import * as Calibration from "./Calibration.ts";
import * as Checkpoint from "./Checkpoint.ts";
import * as Cooperative from "./Cooperative.ts";
import * as Data from "./Data.ts";
import * as Evaluate from "./Evaluate.ts";
import * as Loss from "./Loss.ts";
import * as Nn from "./Nn.ts";
import * as Optim from "./Optim.ts";
import * as Quant from "./Quant.ts";
import type * as Recipe from "./Recipe.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";

/** The loss became NaN or infinite at `step`; the last good checkpoint is kept. */
export class NonFiniteLoss extends EffectData.TaggedError("NonFiniteLoss")<{
  readonly step: number;
  readonly loss: string;
  readonly value: number;
}> {
  override get message(): string {
    return `non-finite ${this.loss} (${this.value}) at step ${this.step}; the last good checkpoint is kept`;
  }
}

/** The output folder cannot be used: it is a file, or cannot be created. */
export class OutputInvalid extends EffectData.TaggedError("OutputInvalid")<{
  readonly dir: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `output folder ${this.dir} ${this.reason}`;
  }
}

/** The output folder holds a run, and the run neither resumes nor replaces it. */
export class RunExists extends EffectData.TaggedError("RunExists")<{
  readonly dir: string;
  /** What is there: `checkpoint at step 200 of 200`, `metrics.jsonl`, `summary.json`. */
  readonly holds: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `${this.dir} already holds a run (${this.holds.join(", ")}): ` +
      "use --resume to continue it or --force to replace it";
  }
}

/** A resumed checkpoint was made by another recipe; each entry names a differing field. */
export class RecipeChanged extends EffectData.TaggedError("RecipeChanged")<{
  readonly file: string;
  /** `recipe.quant.wbits: 4 in the checkpoint, 2 given`, … */
  readonly differences: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `cannot resume ${this.file}: it was made by another recipe:\n` +
      this.differences.map((d) => `  ${d}\n`).join("") +
      `(only ${RESUMABLE.join(", ")} may change when resuming; --force starts over)`;
  }
}

/** A resumed checkpoint is past the recipe's last step. */
export class StepsBelowCheckpoint extends EffectData.TaggedError("StepsBelowCheckpoint")<{
  readonly file: string;
  readonly steps: number;
  readonly checkpointStep: number;
}> {
  override get message(): string {
    return `cannot resume ${this.file}: it is at step ${this.checkpointStep}, beyond ` +
      `train.steps ${this.steps} (give --steps ${this.checkpointStep} or more, or --force to ` +
      "start over)";
  }
}

/** A line of `metrics.jsonl` other than the last is not a metrics record. */
export class MetricsCorrupt extends EffectData.TaggedError("MetricsCorrupt")<{
  readonly file: string;
  readonly line: number;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.file} line ${this.line}: ${this.reason}`;
  }
}

/** A run file (metrics, summary) could not be read or written. */
export class RunFileError extends EffectData.TaggedError("RunFileError")<{
  readonly file: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.reason}`;
  }
}

/** No training image is large enough for the recipe's LR patch. */
export class PatchTooLarge extends EffectData.TaggedError("PatchTooLarge")<{
  readonly patch: number;
  readonly folder: string;
  readonly scale: number;
  /** The LR size of the image that comes closest (largest shorter side). */
  readonly largest: { readonly width: number; readonly height: number };
}> {
  override get message(): string {
    return `recipe.train.patch ${this.patch} is larger than every LR image in ${this.folder} ` +
      `(largest ${this.largest.width}×${this.largest.height} at ×${this.scale})`;
  }
}

/** Everything one step needs besides the state. */
export interface StepConfig {
  readonly model: Nn.AnyLayer;
  readonly optimizer: Optim.Transform;
  readonly merge: Cooperative.Merge;
  /** Treat q(X) as a constant in L_M. */
  readonly detach: boolean;
  /**
   * Distillation (PAMS's SKT): `weight · Loss.attentionTransfer` between the input of the layer
   * at `at` in `model` and in the FP `teacher` (fixed `params`), added to the L1 stream.
   */
  readonly distill?: {
    readonly teacher: Nn.AnyLayer;
    readonly params: Params;
    readonly weight: number;
    readonly at: string;
  };
}

/** The training state between steps. */
export interface State {
  readonly step: number;
  readonly params: ReadonlyMap<string, tf.Tensor>;
  readonly opt: Optim.State;
}

/** What a step reports, read back once per step. */
export interface StepReport {
  /** Steps completed, this one included. */
  readonly step: number;
  readonly l1: number;
  readonly mismatch: number;
  readonly cosine: number;
  readonly conflict: number;
  /** The SKT attention-transfer loss (unweighted; 0 without distillation). */
  readonly distill: number;
}

/** The SPEC §7 optimizer: Adam groups for weights and quantizer parameters, step decay. */
export const optimizer = (t: Recipe.Recipe["train"]): Optim.Transform =>
  Optim.partition(
    {
      weights: Optim.adam({ lr: Optim.stepDecay(t.lrWeights, t.decayEvery, t.decayFactor) }),
      quant: Optim.adam({ lr: Optim.stepDecay(t.lrQuant, t.decayEvery, t.decayFactor) }),
    },
    (p) => (Quant.isQuantizerParam(p) ? "quant" : "weights"),
  );

/** The merge rule a recipe asks for. */
export const mergeOf = (r: Recipe.Recipe["regularizer"]): Cooperative.Merge =>
  r.merge === "cooperative"
    ? Cooperative.cooperative({
      lambdaR: r.lambdaR,
      lambdaM: r.lambdaM,
      granularity: r.granularity,
    })
    : r.merge === "naive"
    ? Cooperative.naive({ lambdaR: r.lambdaR, lambdaM: r.lambdaM })
    : Cooperative.reconstructionOnly({ lambdaR: r.lambdaR });

/**
 * The step configuration a recipe describes, for its (quantized) model; a recipe that
 * distills needs the FP `teacher` (network and parameters, which the caller keeps alive).
 */
export function configOf(
  recipe: Recipe.Recipe,
  model: Nn.AnyLayer,
  teacher?: { readonly model: Nn.AnyLayer; readonly params: Params },
): StepConfig {
  const base = {
    model,
    optimizer: optimizer(recipe.train),
    merge: mergeOf(recipe.regularizer),
    detach: recipe.regularizer.detach,
  };
  const { weight, at } = recipe.distill;
  if (weight === 0) return base;
  if (!teacher) throw new Error("configOf: recipe.distill needs the full-precision teacher");
  return {
    ...base,
    model: Nn.observeAt(model, at),
    distill: { teacher: Nn.observeAt(teacher.model, at), params: teacher.params, weight, at },
  };
}

/** A state at step 0: the parameters and a fresh optimizer state. */
export const initialState = (cfg: StepConfig, params: ReadonlyMap<string, tf.Tensor>): State => ({
  step: 0,
  params,
  opt: cfg.optimizer.init(params),
});

/**
 * One optimisation step (synchronous, inside one `tf.tidy`). Returns the new state and the
 * five reported scalars `[l1, mismatch, cosine, conflict, distill]` as one tensor (cosine and
 * conflict are 0 unless `opts.stats`, default true; distill is the unweighted SKT loss). Does
 * not dispose the old state.
 */
export function step(
  cfg: StepConfig,
  state: State,
  batch: { readonly lr: tf.Tensor4D; readonly hr: tf.Tensor4D },
  opts: { readonly stats?: boolean } = {},
): { state: State; report: tf.Tensor1D } {
  const paths = [...state.params.keys()];
  const leaves = [...state.params.values()];
  const quantized = Quant.layers(cfg.model).length > 0;
  const combine = Cooperative.combine(cfg.merge, { reconstructionOnly: Quant.isQuantizerParam });
  const out = tf.tidy(() => {
    const aux = quantized && cfg.merge.usesAuxiliary;
    // Steps 1–3: one forward pass, two backward walks over its tape (lib/internal/tape.ts):
    // g_R from output 0, g_M from output 1 when the merge rule reads it. The mismatch walk
    // only visits the layers up to the last quantized one: L_M reads nothing after it.
    // SKT's target: the FP teacher's features, a constant (computed off the tape).
    const distill = cfg.distill;
    const target = distill && observed(distill.teacher, distill.params, batch.lr, "eval");
    const { values: [, lm, l1, skt], grads: [gr, gm] } = Tape.valuesAndGrads(
      (...ls: tf.Tensor[]) => {
        const taps: Nn.Tap[] = [];
        let feature: tf.Tensor | undefined;
        const ctx = Nn.context("train", {
          step: state.step,
          tap: (t) => taps.push(t),
          observe: (_, x) => (feature = x),
        });
        const p = Tree.unflatten(paths.map((q, i) => [q, ls[i]] as const));
        const l1 = Loss.l1(cfg.model.apply(p, batch.lr, ctx), batch.hr);
        const mismatch = quantized ? Loss.mismatch(taps, { detach: cfg.detach }) : tf.scalar(0);
        const skt = target
          ? Loss.attentionTransfer(feature as tf.Tensor4D, target as tf.Tensor4D)
          : tf.scalar(0);
        const reconstruction = distill ? tf.add(l1, tf.mul(skt, distill.weight)) : l1;
        return [reconstruction as tf.Scalar, mismatch, l1, skt];
      },
      leaves,
      aux ? [0, 1] : [0],
    );
    const gR = new Map(paths.map((p, i) => [p, gr![i]] as const));
    const gM = gm && new Map(paths.map((p, i) => [p, gm[i]] as const));
    const { grads, stats } = combine(gR, gM, opts.stats ?? true);
    const [updates, opt] = cfg.optimizer.update(grads, state.opt, state.params, state.step);
    const params = Optim.apply(state.params, updates);
    const report = tf.stack([l1, lm, stats.cosine, stats.conflict, skt]) as tf.Tensor1D;
    return { params: [...params.values()], opt: [...opt], report };
  });
  return {
    state: {
      step: state.step + 1,
      params: new Map(paths.map((p, i) => [p, out.params[i]] as const)),
      opt: new Map(out.opt),
    },
    report: out.report,
  };
}

/** The input of the layer `model` observes (see `Nn.observeAt`) in a forward pass. */
function observed(model: Nn.AnyLayer, params: Params, x: tf.Tensor, mode: Nn.Ctx["mode"]) {
  let feature: tf.Tensor | undefined;
  model.apply(params, x, Nn.context(mode, { observe: (_, f) => (feature = f) }));
  if (!feature) throw new Error("distillation: the observed layer was not reached");
  return feature;
}

/** Disposes a training state. */
export function dispose(s: State): void {
  for (const t of s.params.values()) t.dispose();
  for (const t of s.opt.values()) t.dispose();
}

/**
 * Runs `step` and reads the report back, failing on a non-finite loss. `stats` asks for the
 * gradient statistics (the run computes them on logged steps only).
 */
export const runStep = (
  cfg: StepConfig,
  state: State,
  b: Data.Batch,
  stats = true,
): Effect.Effect<{ state: State; report: StepReport }, NonFiniteLoss> =>
  Effect.gen(function* () {
    const t = Data.tensors(b);
    const out = (() => {
      try {
        return step(cfg, state, t, { stats });
      } finally {
        t.lr.dispose();
        t.hr.dispose();
      }
    })();
    const [l1, mismatch, cosine, conflict, distill] = yield* Effect.promise(() =>
      out.report.data()
    );
    out.report.dispose();
    const bad = !Number.isFinite(l1)
      ? ["L1", l1] as const
      : !Number.isFinite(mismatch)
      ? ["L_M", mismatch] as const
      : undefined;
    if (bad) {
      dispose(out.state);
      return yield* Effect.fail(
        new NonFiniteLoss({ step: state.step, loss: bad[0], value: bad[1] }),
      );
    }
    return {
      state: out.state,
      report: { step: state.step + 1, l1, mismatch, cosine, conflict, distill },
    };
  });

/**
 * Scores of one model on the evaluation set. `psnr`/`ssim` are NaN (`null` in JSON) when an
 * output was flagged as implausible (see `Evaluate`); failed and flagged images are named.
 */
export interface Score {
  readonly psnr: number;
  readonly ssim: number;
  readonly failed?: ReadonlyArray<Evaluate.Problem>;
  readonly flagged?: ReadonlyArray<Evaluate.Problem>;
}

const scoreOf = (s: Evaluate.Scores): Score => ({
  psnr: s.psnr,
  ssim: s.ssim,
  ...(s.failed.length ? { failed: s.failed } : {}),
  ...(s.flagged.length ? { flagged: s.flagged } : {}),
});

/** Final scores of a run. */
export interface Summary {
  readonly fp32: Score;
  readonly ptq: Score | null;
  readonly qat: Score;
  readonly steps: number;
  /** Seconds in the training loop (all sessions of a resumed run). */
  readonly seconds: number;
  /** Wall seconds of this invocation: evaluation, calibration and training. */
  readonly wallSeconds: number;
  readonly backend: string;
  readonly recipe: string;
  readonly stepsPerSecond: number;
}

/** A model ready to train: the FP32 network, its parameters, and where to quantize it. */
export interface Prepared {
  readonly fp32: Nn.Layer<3, 3>;
  readonly params: Params;
  readonly quantized: Nn.Layer<3, 3>;
}

/** Options of {@link run}. */
export interface RunOptions {
  /** Output folder (checkpoint, metrics.jsonl, summary.json). */
  readonly out: string;
  /**
   * Continue from `<out>/checkpoint.bin` if present (made by the same recipe, see
   * {@link prepareOut}).
   */
  readonly resume: boolean;
  /** Replace a run already in `out`: its files are removed first. */
  readonly force?: boolean;
  /** Progress lines (default console.log). */
  readonly log?: (line: string) => void;
}

const fmtTime = (s: number) => {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
};

/** The files of a run in its folder. */
const RUN_FILES = ["checkpoint.bin", "metrics.jsonl", "summary.json"] as const;

/** The recipe fields a resumed run may change (that is how a run is extended). */
const RESUMABLE = ["train.steps", "train.logEvery", "train.checkpointEvery"];

const exists = (path: string) =>
  Effect.promise(() => Deno.lstat(path).then(() => true, () => false));

const fileError = (file: string) => (e: unknown) =>
  new RunFileError({ file, reason: (e as Error).message });

/** Writes a text file atomically (`Checkpoint.writeAtomic`), not interruptibly. */
const writeText = (file: string, text: string) =>
  Effect.tryPromise({
    try: () => Checkpoint.writeAtomic(file, new TextEncoder().encode(text)),
    catch: fileError(file),
  }).pipe(Effect.uninterruptible);

const appendLine = (file: string, line: string) =>
  Effect.tryPromise({
    try: () => Deno.writeTextFile(file, line + "\n", { append: true }),
    catch: fileError(file),
  }).pipe(Effect.uninterruptible);

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The fields where a checkpoint's recipe (`saved`) and the given one differ, both in
 * `Recipe.toJSON` form, as `recipe.quant.wbits: 4 in the checkpoint, 2 given`. The fields a
 * resumed run may change (`train.steps`, `train.logEvery`, `train.checkpointEvery`) are not
 * compared, nor `quant.dynamicLayers` when the given recipe leaves them to be picked from data.
 */
export function recipeDifferences(saved: unknown, given: unknown): string[] {
  if (!isRecord(saved)) return ["recipe: the checkpoint holds none"];
  const out: string[] = [];
  const show = (v: unknown) => (v === undefined ? "absent" : JSON.stringify(v));
  const walk = (a: unknown, b: unknown, path: string) => {
    if (RESUMABLE.includes(path.slice("recipe.".length))) return;
    if (path === "recipe.quant.dynamicLayers" && b === undefined) return;
    if (isRecord(a) && isRecord(b)) {
      for (const k of new Set([...Object.keys(b), ...Object.keys(a)])) {
        walk(a[k], b[k], `${path}.${k}`);
      }
    } else if (JSON.stringify(a) !== JSON.stringify(b)) {
      out.push(`${path}: ${show(a)} in the checkpoint, ${show(b)} given`);
    }
  };
  walk(saved, given, "recipe");
  return out;
}

/** Options of {@link prepareOut}. */
export interface OutOptions {
  /** Resuming: a run in the folder is continued (its checkpoint must fit `recipe`). */
  readonly resume: boolean;
  /** Replacing: the files of a run in the folder are removed. */
  readonly force?: boolean;
  /** The recipe (`Recipe.toJSON` form) a resumed checkpoint must have been made by. */
  readonly recipe?: unknown;
  readonly log?: (line: string) => void;
}

/**
 * Makes a run's output folder ready, before any data or model is loaded: it must be a folder
 * or creatable ({@link OutputInvalid}); a run already in it (any of `checkpoint.bin`,
 * `metrics.jsonl`, `summary.json`) is refused ({@link RunExists}) unless resuming or `force`
 * (which removes those files). Resuming checks the checkpoint's header: made by `recipe` up to
 * the resumable fields ({@link RecipeChanged}), not past `recipe.train.steps`
 * ({@link StepsBelowCheckpoint}).
 */
export const prepareOut = (dir: string, o: OutOptions) =>
  Effect.gen(function* () {
    const log = o.log ?? ((l: string) => console.log(l));
    yield* Effect.tryPromise({
      try: async () => {
        const st = await Deno.stat(dir).catch(() => undefined);
        if (st && !st.isDirectory) {
          throw new OutputInvalid({ dir, reason: "is a file, not a folder" });
        }
        if (!st) await Deno.mkdir(dir, { recursive: true });
      },
      catch: (e) =>
        e instanceof OutputInvalid
          ? e
          : new OutputInvalid({ dir, reason: `cannot be created: ${(e as Error).message}` }),
    });
    const present: string[] = [];
    for (const f of RUN_FILES) if (yield* exists(`${dir}/${f}`)) present.push(f);
    if (present.length === 0) return;
    const ckptFile = `${dir}/checkpoint.bin`;
    if (o.force) {
      yield* Effect.tryPromise({
        try: async () => {
          for (const f of present) await Deno.remove(`${dir}/${f}`);
          for (const f of RUN_FILES) await Deno.remove(`${dir}/${f}.tmp`).catch(() => {});
        },
        catch: (e) =>
          new OutputInvalid({ dir, reason: `cannot be cleared: ${(e as Error).message}` }),
      });
      log(`--force: removed the previous run's ${present.join(", ")} from ${dir}`);
      return;
    }
    if (!o.resume) {
      const holds: string[] = [];
      for (const f of present) {
        if (f !== "checkpoint.bin") holds.push(f);
        else {
          const h = yield* Effect.result(Checkpoint.readHeader(ckptFile));
          if (h._tag === "Failure") holds.push(`checkpoint.bin (unreadable: ${h.failure.reason})`);
          else {
            const r = h.success.recipe;
            const total = isRecord(r) && isRecord(r.train) ? r.train.steps : undefined;
            holds.push(
              `checkpoint at step ${h.success.step}` +
                (typeof total === "number" ? ` of ${total}` : ""),
            );
          }
        }
      }
      return yield* Effect.fail(new RunExists({ dir, holds }));
    }
    if (!present.includes("checkpoint.bin") || o.recipe === undefined) return;
    const h = yield* Checkpoint.readHeader(ckptFile);
    const differences = recipeDifferences(h.recipe, o.recipe);
    if (differences.length > 0) {
      return yield* Effect.fail(new RecipeChanged({ file: ckptFile, differences }));
    }
    const steps = isRecord(o.recipe) && isRecord(o.recipe.train) ? o.recipe.train.steps : undefined;
    if (typeof steps === "number" && steps < h.step) {
      return yield* Effect.fail(
        new StepsBelowCheckpoint({ file: ckptFile, steps, checkpointStep: h.step }),
      );
    }
  });

/**
 * Fails unless some image of `ds` has an LR side ≥ `patch` on both axes (a batch can be cut
 * from it); `folder` names the data in the message.
 */
export const checkPatch = (
  patch: number,
  ds: Data.Dataset,
  folder: string = ds.name,
): Effect.Effect<void, PatchTooLarge> => {
  if (ds.pairs.some((p) => p.lr.width >= patch && p.lr.height >= patch)) return Effect.void;
  const side = (p: Data.Pair) => Math.min(p.lr.width, p.lr.height);
  const best = ds.pairs.reduce<Data.Pair | undefined>(
    (b, p) =>
      !b || side(p) > side(b) ||
        (side(p) === side(b) && p.lr.width * p.lr.height > b.lr.width * b.lr.height)
        ? p
        : b,
    undefined,
  );
  return Effect.fail(
    new PatchTooLarge({
      patch,
      folder: folder.length > 1 ? folder.replace(/\/+$/, "") : folder,
      scale: ds.scale,
      largest: { width: best?.lr.width ?? 0, height: best?.lr.height ?? 0 },
    }),
  );
};

/**
 * Keeps only the metrics lines of steps ≤ `step` (a resumed run writes the rest again),
 * rewriting the file atomically. A torn (unparsable) last line — a run killed while appending
 * — is dropped with one log line; an unparsable line before it is a {@link MetricsCorrupt}
 * naming the file and line.
 */
export const truncateMetrics = (
  file: string,
  step: number,
  log: (line: string) => void = (l) => console.log(l),
): Effect.Effect<void, MetricsCorrupt | RunFileError> =>
  Effect.gen(function* () {
    const text = yield* Effect.tryPromise({
      try: () =>
        Deno.readTextFile(file).catch((e) => {
          if (e instanceof Deno.errors.NotFound) return undefined;
          throw e;
        }),
      catch: fileError(file),
    });
    if (text === undefined) return;
    const lines = text.split("\n");
    const last = lines.findLastIndex((l) => l.trim() !== "");
    const kept: string[] = [];
    for (const [i, l] of lines.entries()) {
      if (l.trim() === "") continue;
      let reason: string | undefined;
      let at: unknown;
      try {
        const rec: unknown = JSON.parse(l);
        at = isRecord(rec) ? rec.step : undefined;
        if (typeof at !== "number") reason = `not a metrics record (no numeric "step")`;
      } catch (e) {
        reason = `not JSON (${(e as Error).message})`;
      }
      if (reason === undefined) {
        if ((at as number) <= step) kept.push(l);
      } else if (i === last) {
        log(`${file}: dropped a torn last line (line ${i + 1}: ${reason})`);
      } else return yield* Effect.fail(new MetricsCorrupt({ file, line: i + 1, reason }));
    }
    yield* writeText(file, kept.map((l) => l + "\n").join(""));
  });

/**
 * Trains a prepared model by a recipe: calibration (or resume), the step loop with progress,
 * metrics and checkpoints, and the FP32 / PTQ / QAT evaluation table.
 */
export const run = (
  recipe: Recipe.Recipe,
  recipeJson: unknown,
  prepared: Prepared,
  data: { readonly train: Data.Dataset; readonly eval: Data.Dataset },
  opts: RunOptions,
) =>
  Effect.gen(function* () {
    const backend = yield* Backend.Backend;
    const wallStart = performance.now();
    const log = opts.log ?? ((l: string) => console.log(l));
    const t = recipe.train;
    const ckptFile = `${opts.out}/checkpoint.bin`;
    const metricsFile = `${opts.out}/metrics.jsonl`;
    const summaryFile = `${opts.out}/summary.json`;
    // The folder and the data before any work (train.ts checks both earlier already).
    yield* prepareOut(opts.out, {
      resume: opts.resume,
      force: opts.force,
      recipe: recipeJson,
      log,
    });
    yield* checkPatch(t.patch, data.train);
    const model = prepared.quantized;
    const nQuant = Quant.layers(model).length;
    const batchOpts: Data.BatchOptions = { batch: t.batch, patch: t.patch, seed: t.seed };
    // A distilling recipe keeps its own copy of the FP32 parameters as the teacher: the
    // starting parameters become the first state and are freed as training moves on.
    const teacher = recipe.distill.weight > 0
      ? {
        model: prepared.fp32,
        params: Tree.unflatten(
          [...Tree.flatten(prepared.params)].map(([k, v]) => [k, v.clone()] as const),
        ),
      }
      : undefined;
    const cfg = configOf(recipe, model, teacher);
    const evalOpts = (what: string): Evaluate.Options => ({
      onImage: (i, n, s) =>
        log(
          `  eval ${what} ${i + 1}/${n} ${s.file.split("/").pop()}: ${s.psnr.toFixed(2)} dB` +
            (s.flag ? ` ⚠ flagged: ${s.flag}` : ""),
        ),
      onFailure: (file, reason) => log(`  eval ${what} ${file}: failed: ${reason}; left out`),
    });

    // Resume, or start: FP32 scores, calibration, PTQ scores. prepareOut has checked that a
    // checkpoint to resume was made by this recipe and is not past its last step.
    const resumed = opts.resume && (yield* exists(ckptFile))
      ? yield* Checkpoint.read(ckptFile)
      : undefined;
    if (opts.resume && !resumed) {
      // Metrics or a summary without a checkpoint belong to no run that can be continued.
      const stale: string[] = [];
      for (const f of ["metrics.jsonl", "summary.json"]) {
        if (yield* exists(`${opts.out}/${f}`)) stale.push(f);
      }
      for (const f of stale) {
        yield* Effect.tryPromise({
          try: () => Deno.remove(`${opts.out}/${f}`),
          catch: fileError(`${opts.out}/${f}`),
        });
      }
      log(
        `no checkpoint in ${opts.out}; starting from step 0` +
          (stale.length ? ` (removed the stale ${stale.join(", ")})` : ""),
      );
    }
    let state: State;
    let fp32: Summary["fp32"];
    let ptq: Summary["ptq"];
    let elapsedBefore = 0;
    if (resumed) {
      const init = Tree.flatten(model.init(t.seed));
      const mismatch = Checkpoint.check(ckptFile, resumed.params, init);
      Tree.dispose(Tree.unflatten(init));
      if (mismatch) return yield* Effect.fail(mismatch);
      state = { step: resumed.step, params: resumed.params, opt: resumed.opt };
      Tree.dispose(prepared.params); // the checkpoint's parameters replace the starting ones
      fp32 = resumed.meta.fp32 as Summary["fp32"];
      ptq = resumed.meta.ptq as Summary["ptq"];
      elapsedBefore = (resumed.meta.seconds as number | undefined) ?? 0;
      log(`resumed from ${ckptFile} at step ${state.step}`);
      yield* truncateMetrics(metricsFile, state.step, log);
    } else {
      log(`evaluating FP32 on ${data.eval.pairs.length} images`);
      const f = yield* Evaluate.evaluate(
        prepared.fp32,
        prepared.params,
        data.eval,
        evalOpts("fp32"),
      );
      fp32 = scoreOf(f);
      // Quantized model: the FP32 weights + calibrated quantizer parameters.
      const fresh = model.init(t.seed);
      const base = Tree.merge(fresh, prepared.params);
      log(`calibrating ${nQuant} quantized layers on ${t.calibrationBatches} batches`);
      const cal = yield* Calibration.calibrate(model, base, data.train, {
        batches: t.calibrationBatches,
        batch: batchOpts,
      });
      const params = Tree.flatten(Tree.merge(base, cal));
      // Dispose what the merge did not keep (fresh tensors shadowed by pretrained/calibrated ones).
      const kept = new Set(params.values());
      for (const x of Tree.flatten(fresh).values()) if (!kept.has(x)) x.dispose();
      for (const x of Tree.flatten(prepared.params).values()) if (!kept.has(x)) x.dispose();
      if (nQuant > 0) {
        log(`evaluating the calibrated model (PTQ) on ${data.eval.pairs.length} images`);
        const p = yield* Evaluate.evaluate(
          model,
          Tree.unflatten(params),
          data.eval,
          evalOpts("ptq"),
        );
        ptq = scoreOf(p);
      } else ptq = null;
      state = initialState(cfg, params);
    }

    // The step of the last checkpoint written, for the message of an interrupted run. The
    // write and this update are one uninterruptible piece: an interrupt waits for the write.
    let saved = state.step;
    let at = state.step;
    const save = (s: State, seconds: number) =>
      Checkpoint.write(ckptFile, {
        step: s.step,
        params: s.params,
        opt: s.opt,
        recipe: recipeJson,
        meta: { fp32, ptq, seconds, backend: backend.name },
      }).pipe(
        Effect.tap(() => Effect.sync(() => (saved = s.step))),
        Effect.uninterruptible,
      );
    if (!resumed) {
      yield* save(state, 0);
      yield* writeText(metricsFile, "");
    }

    const started = performance.now();
    const firstStep = state.step;
    log(
      resumed && firstStep === t.steps
        ? `nothing left to train: ${ckptFile} is at step ${firstStep} of ${t.steps}`
        : `training ${recipe.name}: steps ${firstStep}→${t.steps}, batch ${t.batch}×${t.patch}², ` +
          `${nQuant} quantized layers, merge ${cfg.merge.name}` +
          (cfg.distill ? `, SKT ×${cfg.distill.weight} at "${cfg.distill.at}"` : ""),
    );
    const initial = state;
    const trainAndEvaluate = Effect.gen(function* () {
      const final = yield* Data.stream(data.train, batchOpts, initial.step, t.steps).pipe(
        Stream.runFoldEffect(
          () => initial,
          (s, b) =>
            Effect.gen(function* () {
              const logged = (s.step + 1) % t.logEvery === 0 || s.step + 1 === t.steps;
              const { state: next, report } = yield* runStep(cfg, s, b, logged).pipe(
                Effect.tapError(() => Effect.sync(() => dispose(s))),
              );
              dispose(s);
              const done = next.step;
              at = done;
              const seconds = (performance.now() - started) / 1000;
              if (logged) {
                const rate = (done - firstStep) / seconds;
                // The process's resident memory: flat after warm-up (tests/leak.test.ts).
                const rssMiB = Math.round(Deno.memoryUsage().rss / 2 ** 20);
                yield* appendLine(
                  metricsFile,
                  JSON.stringify({ ...report, seconds: elapsedBefore + seconds, rssMiB }),
                );
                log(
                  `step ${done}/${t.steps} | L1 ${report.l1.toFixed(3)} | ` +
                    (cfg.distill ? `SKT ${report.distill.toExponential(3)} | ` : "") +
                    `L_M ${report.mismatch.toExponential(3)} | ` +
                    `cos ${report.cosine.toFixed(3)} | conflict ${
                      (100 * report.conflict).toFixed(1)
                    }% | ` +
                    `${rate.toFixed(2)} step/s | ${rssMiB} MiB | ETA ${
                      fmtTime((t.steps - done) / rate)
                    }`,
                );
              }
              if (done % t.checkpointEvery === 0 || done === t.steps) {
                yield* save(next, elapsedBefore + seconds);
              }
              return next;
            }),
        ),
      );
      const loopSeconds = (performance.now() - started) / 1000;
      log(`evaluating the trained model (QAT) on ${data.eval.pairs.length} images`);
      const q = yield* Evaluate.evaluate(
        model,
        Tree.unflatten(final.params),
        data.eval,
        evalOpts("qat"),
      );
      dispose(final);
      if (teacher) Tree.dispose(teacher.params);
      const trained = t.steps - firstStep;
      const summary: Summary = {
        fp32,
        ptq,
        qat: scoreOf(q),
        steps: t.steps,
        seconds: elapsedBefore + loopSeconds,
        wallSeconds: (performance.now() - wallStart) / 1000,
        backend: `${backend.name} (${backend.adapter})`,
        recipe: recipe.name,
        stepsPerSecond: trained > 0 ? trained / Math.max(1e-9, loopSeconds) : 0,
      };
      yield* writeText(summaryFile, JSON.stringify(summary, null, 2) + "\n");
      return summary;
    });
    return yield* trainAndEvaluate.pipe(
      Effect.onInterrupt(() =>
        Effect.sync(() =>
          log(
            `interrupted at step ${at}; the checkpoint at step ${saved} in ${opts.out} is kept: ` +
              "continue with --resume",
          )
        )
      ),
    );
  });

/**
 * The final table, Markdown. A score that is missing (no PTQ row; NaN, stored as `null` in a
 * checkpoint's meta) is `–`; a flagged one says so.
 */
export function table(s: Summary, scale: number): string {
  const num = (x: number | null | undefined, digits: number) =>
    typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";
  const row = (name: string, v: Score | null) =>
    v?.flagged?.length
      ? `| ${name} | ⚠ flagged: ${v.flagged[0].reason} | – |`
      : `| ${name} | ${num(v?.psnr, 2)} | ${num(v?.ssim, 4)} |` +
        (v?.failed?.length ? ` (${v.failed.length} image(s) failed)` : "");
  return [
    `| model (×${scale}) | PSNR (dB) | SSIM |`,
    "|---|---|---|",
    row("FP32", s.fp32),
    row("quantized, calibrated (before QAT)", s.ptq),
    row("quantized, after QAT", s.qat),
  ].join("\n");
}
