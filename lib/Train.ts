/**
 * Training: Algorithm 1 of the ODM paper as Effect programs, for any `Method`.
 *
 * One step (pure tensor maths, one `tf.tidy`), top to bottom:
 *   1. forward the quantized model on the LR batch; the wrapped layers record (X_i, q(X_i)),
 *      layers and quantizers report what the method's extra terms read (`ctx.observe`) and new
 *      running statistics (`ctx.buffer`);
 *   2. `g_R = ∇ (L1(SR, HR) + w·SKT + Σ terms)` — the reconstruction stream (tape 1);
 *   3. `g_M = ∇ Σ_i ‖X_i − q(X_i)‖_F` — the mismatch stream, a second backward walk over the
 *      same recorded forward pass (lib/internal/tape.ts), through the quantized part only;
 *   4. merge the streams with the method's rule (Eq. 6 for ODM, {@link Cooperative.combine});
 *      quantizer parameters get g_R only;
 *   5. the method's optimizer (ODM: Adam, weights 1e-4, quantizer parameters 1e-3, halved on
 *      schedule); buffers take their reported values.
 * Weight clipping correction (Eq. 9) needs nothing here: the weight quantizer recomputes the
 * percentile of the current weights in every forward pass.
 *
 * A run is phases composed in {@link run}: FP32 evaluation, calibration, PTQ evaluation, the
 * training loop, QAT evaluation, summary. The loop ({@link steps}) is a stream of step events,
 * and progress, metrics, checkpoints and stopping are stages on it ({@link progress},
 * {@link metrics}, {@link checkpoints}); a recipe or a script adds its own (`hooks.stages`,
 * `hooks.stopWhen`). A non-finite loss stops the run with {@link NonFiniteLoss} and leaves the
 * last good checkpoint in place. The run folder's rules are in lib/Run.ts.
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
import * as Kernels from "./Kernels.ts";
import * as Loss from "./Loss.ts";
import type * as Method from "./Method.ts";
import * as Nn from "./Nn.ts";
import * as Optim from "./Optim.ts";
import * as Quant from "./Quant.ts";
import type * as Recipe from "./Recipe.ts";
import * as Run from "./Run.ts";
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

/**
 * Fails unless some image of `ds` has an LR side ≥ `patch` on both axes (a batch can be cut
 * from it); `folder` names the data in the message.
 */
export const checkPatch = (
  patch: number,
  ds: Data.Training,
  folder: string = ds.name,
): Effect.Effect<void, PatchTooLarge> => {
  // [issue 14] LR sizes of in-memory and streamed training sets alike (Data.lrSizes).
  const sizes = Data.lrSizes(ds);
  if (sizes.some((s) => s.width >= patch && s.height >= patch)) return Effect.void;
  const side = (s: Data.Size) => Math.min(s.width, s.height);
  const best = sizes.reduce<Data.Size | undefined>(
    (b, s) =>
      !b || side(s) > side(b) ||
        (side(s) === side(b) && s.width * s.height > b.width * b.height)
        ? s
        : b,
    undefined,
  );
  return Effect.fail(
    new PatchTooLarge({
      patch,
      folder: folder.length > 1 ? folder.replace(/\/+$/, "") : folder,
      scale: ds.scale,
      largest: { width: best?.width ?? 0, height: best?.height ?? 0 },
    }),
  );
};

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
  /** The method's further terms of the reconstruction stream (DDTB's gate regulariser). */
  readonly terms: ReadonlyArray<Method.Term>;
  /** The L1 loss's factor in the reconstruction stream (1, or 1/255 for `train.l1: "unit"`). */
  readonly l1Scale?: number;
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
  /** The method's further terms, weighted and summed (0 without any). */
  readonly terms: number;
  /** `‖λ_M·sim·g_M‖/‖g_R‖` after the merge, before the optimizer (`Cooperative.Stats.ratio`). */
  readonly regRatio: number;
}

/**
 * The step configuration of a recipe's method, for its (quantized) model; a method that
 * distills needs the FP `teacher` (network and parameters, which the caller keeps alive).
 */
export function configOf(
  recipe: Recipe.Recipe,
  model: Nn.AnyLayer,
  teacher?: { readonly model: Nn.AnyLayer; readonly params: Params },
): StepConfig {
  const m = recipe.method;
  const base = {
    model,
    optimizer: m.optimizer(recipe.train),
    merge: m.merge(recipe.regularizer),
    detach: recipe.regularizer.detach,
    terms: m.terms?.({ steps: recipe.train.steps }) ?? [],
    l1Scale: recipe.train.l1 === "unit" ? 1 / 255 : 1,
  };
  if (!m.distill || m.distill.weight === 0) return base;
  if (!teacher) throw new Error(`configOf: method ${m.name} distills: it needs the FP teacher`);
  const { weight, at } = m.distill;
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

/** Indices of the reported scalars in the tensor {@link step} returns. */
const REPORT = ["l1", "mismatch", "cosine", "conflict", "distill", "terms", "regRatio"] as const;

/**
 * One optimisation step (synchronous, inside one `tf.tidy`). Returns the new state and the
 * reported scalars (see {@link StepReport}) as one tensor (cosine, conflict and the ratio are 0
 * unless `opts.stats`, default true). Does not dispose the old state.
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
  const buffers = new Map<string, tf.Tensor>();
  const out = tf.tidy(() => {
    const aux = quantized && cfg.merge.usesAuxiliary;
    // SKT's target: the FP teacher's features, a constant (computed off the tape).
    const distill = cfg.distill;
    const target = distill && observedAt(distill.teacher, distill.params, batch.lr, distill.at);
    const weights = cfg.terms.map((t) => t.weight(state.step));
    // Steps 1–3: one forward pass, two backward walks over its tape (lib/internal/tape.ts):
    // g_R from output 0, g_M from output 1 when the merge rule reads it. The mismatch walk
    // only visits the layers up to the last quantized one: L_M reads nothing after it.
    const { values: [, lm, l1, skt, extra], grads: [gr, gm] } = Tape.valuesAndGrads(
      (...ls: tf.Tensor[]) => {
        const taps: Nn.Tap[] = [];
        const observed = new Map<string, tf.Tensor>();
        const ctx = Nn.context("train", {
          step: state.step,
          tap: (t) => taps.push(t),
          observe: (p, x) => observed.set(p, x),
          // Running statistics outlive the forward pass's scope: they become the next state.
          buffer: (p, v) => {
            buffers.get(p)?.dispose();
            buffers.set(p, tf.keep(v));
          },
        });
        const p = Tree.unflatten(paths.map((q, i) => [q, ls[i]] as const));
        const l1 = Loss.l1(cfg.model.apply(p, batch.lr, ctx), batch.hr);
        const mismatch = quantized ? Loss.mismatch(taps, { detach: cfg.detach }) : tf.scalar(0);
        const feature = distill && observed.get(distill.at);
        if (distill && !feature) throw new Error(`distillation: "${distill.at}" was not reached`);
        const skt = target
          ? Loss.attentionTransfer(feature as tf.Tensor4D, target as tf.Tensor4D)
          : tf.scalar(0);
        const extra = cfg.terms.length
          ? tf.addN(cfg.terms.map((t, i) => tf.mul(t.loss(observed), weights[i])))
          : tf.scalar(0);
        const scaled = (cfg.l1Scale ?? 1) === 1 ? l1 : tf.mul(l1, cfg.l1Scale!);
        let reconstruction: tf.Tensor = distill
          ? tf.add(scaled, tf.mul(skt, distill.weight))
          : scaled;
        if (cfg.terms.length) reconstruction = tf.add(reconstruction, extra);
        return [reconstruction as tf.Scalar, mismatch, l1, skt, extra as tf.Scalar];
      },
      leaves,
      aux ? [0, 1] : [0],
    );
    const gR = new Map(paths.map((p, i) => [p, gr![i]] as const));
    const gM = gm && new Map(paths.map((p, i) => [p, gm[i]] as const));
    // Steps 4–5: the merge, then the optimizer; buffers (not trained) take their new values.
    const { grads, stats } = combine(gR, gM, opts.stats ?? true);
    const [updates, opt] = cfg.optimizer.update(grads, state.opt, state.params, state.step);
    const params = Optim.apply(state.params, updates);
    for (const [p, v] of buffers) {
      if (!params.has(p)) throw new Error(`step: a buffer "${p}" is not a parameter`);
      params.get(p)!.dispose();
      params.set(p, v);
    }
    const report = tf.stack([l1, lm, stats.cosine, stats.conflict, skt, extra, stats.ratio]);
    return { params: [...params.values()], opt: [...opt], report: report as tf.Tensor1D };
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

/** The input of the layer at `at` that `model` observes (see `Nn.observeAt`) in a pass. */
function observedAt(model: Nn.AnyLayer, params: Params, x: tf.Tensor, at: string) {
  let feature: tf.Tensor | undefined;
  model.apply(params, x, Nn.context("eval", { observe: (p, f) => p === at && (feature = f) }));
  if (!feature) throw new Error(`distillation: the teacher's "${at}" was not reached`);
  return feature;
}

/** Disposes a training state. */
export function dispose(s: State): void {
  for (const t of s.params.values()) t.dispose();
  for (const t of s.opt.values()) t.dispose();
}

/** A step dispatched to the device whose report has not been read back yet. */
interface InFlight {
  readonly state: State;
  /** The report's values, on their way back (`Kernels.readSoon`). */
  readonly values: Promise<Float32Array>;
  /** The step of the state it started from (it names a failing step). */
  readonly from: number;
}

/** Records `step` on a batch (its tensors are freed once recorded); nothing is read back. */
function dispatch(cfg: StepConfig, state: State, b: Data.Batch, stats: boolean): InFlight {
  const t = Data.tensors(b);
  try {
    const out = step(cfg, state, t, { stats });
    const values = Kernels.readSoon(out.report);
    out.report.dispose();
    return { state: out.state, values, from: state.step };
  } finally {
    t.lr.dispose();
    t.hr.dispose();
  }
}

/** Frees a step in flight. */
function drop(f: InFlight): void {
  f.values.catch(() => {});
  dispose(f.state);
}

/**
 * Reads a dispatched step's report back, failing on a non-finite loss (the step's state is
 * then freed).
 */
const settle = (f: InFlight): Effect.Effect<StepReport, NonFiniteLoss> =>
  Effect.gen(function* () {
    const values = yield* Effect.promise(() => f.values);
    const r = Object.fromEntries(REPORT.map((k, i) => [k, values[i]])) as Record<
      (typeof REPORT)[number],
      number
    >;
    const bad = !Number.isFinite(r.l1)
      ? ["L1", r.l1] as const
      : !Number.isFinite(r.mismatch)
      ? ["L_M", r.mismatch] as const
      : !Number.isFinite(r.terms)
      ? ["the method's terms", r.terms] as const
      : undefined;
    if (bad) {
      dispose(f.state);
      return yield* Effect.fail(new NonFiniteLoss({ step: f.from, loss: bad[0], value: bad[1] }));
    }
    return { step: f.from + 1, ...r };
  });

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
  Effect.suspend(() => {
    const f = dispatch(cfg, state, b, stats);
    return Effect.map(settle(f), (report) => ({ state: f.state, report }));
  });

// ---------------------------------------------------------------------------------------------
// The loop: a stream of step events, and the stages that consume them.
// ---------------------------------------------------------------------------------------------

/** One step of the loop, as its stages see it. */
export interface StepEvent {
  /** The state after this step; valid until the next event (the loop then frees it). */
  readonly state: State;
  readonly report: StepReport;
  /** A logged step: its gradient statistics were computed. */
  readonly logged: boolean;
  /** Seconds since the loop started in this process. */
  readonly seconds: number;
  /** The run's first and last step (this process). */
  readonly from: number;
  readonly to: number;
}

/** A stage of the loop: runs on every step event (progress, metrics, checkpoints, yours). */
export type Stage = (e: StepEvent) => Effect.Effect<void, unknown>;

/**
 * The training steps `initial.step + 1 … to` over `batches` as a stream of events. Each
 * step's previous state is freed when the next one exists: the last event's state is the
 * caller's. `logEvery` picks the steps whose gradient statistics are computed (and the last).
 *
 * One step runs ahead: step k+1 is recorded and submitted before step k's report is read
 * back. On a GPU the device works through k+1 while this thread waits for k's numbers and runs
 * the stages of event k; on lavapipe, whose `queue.submit` runs the work on the calling thread,
 * what it saves is the queue drain and the mapping latency of each step's readback
 * (PLATFORM.md, "every wait for GPU completion": default job 1.87 → 2.12 step/s). The
 * arithmetic is the same. A non-finite loss at step k
 * fails the stream after step k+1 was recorded; both are freed. A stream stopped early (a
 * stopping rule, an interrupt) frees the step still in flight.
 */
export function steps(
  cfg: StepConfig,
  initial: State,
  batches: Stream.Stream<Data.Batch>,
  o: { readonly to: number; readonly logEvery: number },
): Stream.Stream<StepEvent, NonFiniteLoss> {
  const started = performance.now();
  const logs = (s: number) => s % o.logEvery === 0 || s === o.to;
  let current = initial;
  let ahead: InFlight | undefined;
  // Reads `f` back and makes its state the current one.
  const complete = (f: InFlight) =>
    settle(f).pipe(
      Effect.map((report): StepEvent => {
        dispose(current);
        current = f.state;
        const seconds = (performance.now() - started) / 1000;
        const logged = logs(report.step);
        return { state: f.state, report, logged, seconds, from: initial.step, to: o.to };
      }),
    );
  const ran = batches.pipe(
    Stream.mapEffect((b) =>
      Effect.gen(function* () {
        const prev = ahead;
        const base = prev?.state ?? current;
        // The step in flight from here on is `next`: the finalizer frees it if `prev` fails.
        ahead = yield* Effect.sync(() => dispatch(cfg, base, b, logs(base.step + 1)));
        return prev ? [yield* complete(prev)] : [];
      })
    ),
    Stream.flattenIterable,
  );
  const last = Stream.suspend(() => {
    const f = ahead;
    ahead = undefined;
    return f ? Stream.fromEffect(complete(f)) : Stream.empty;
  });
  return Stream.concat(ran, last).pipe(
    Stream.tapError(() => Effect.sync(() => dispose(current))),
    Stream.ensuring(Effect.sync(() => {
      if (ahead) drop(ahead);
      ahead = undefined;
    })),
  );
}

const fmtTime = (s: number) => {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
};

/** The one line of a logged step (what non-terminal output shows). */
export function line(e: StepEvent, cfg: { readonly distill: boolean; readonly terms: boolean }) {
  const r = e.report;
  const rate = (r.step - e.from) / Math.max(1e-9, e.seconds);
  const rss = Math.round(Deno.memoryUsage().rss / 2 ** 20);
  return `step ${r.step}/${e.to} | L1 ${r.l1.toFixed(3)} | ` +
    (cfg.distill ? `SKT ${r.distill.toExponential(3)} | ` : "") +
    (cfg.terms ? `terms ${r.terms.toExponential(3)} | ` : "") +
    `L_M ${r.mismatch.toExponential(3)} | cos ${r.cosine.toFixed(3)} | ` +
    `conflict ${(100 * r.conflict).toFixed(1)}% | reg/rec ${r.regRatio.toExponential(2)} | ` +
    `${rate.toFixed(2)} step/s | ${rss} MiB | ETA ${fmtTime((e.to - r.step) / rate)}`;
}

/**
 * Progress: on a terminal a live bar with the ETA, redrawn every step, with each logged step's
 * line printed above it; elsewhere (logs, pipes) one line per logged step.
 */
export function progress(
  o: {
    readonly log: (l: string) => void;
    readonly distill: boolean;
    readonly terms: boolean;
    readonly tty?: boolean;
  },
): Stage {
  const tty = o.tty ?? Deno.stdout.isTerminal();
  const out = new TextEncoder();
  const draw = (s: string) => Deno.stdout.writeSync(out.encode(`\r\x1b[2K${s}`));
  return (e) =>
    Effect.sync(() => {
      const text = e.logged ? line(e, o) : undefined;
      if (!tty) {
        if (text) o.log(text);
        return;
      }
      if (text) {
        draw("");
        o.log(text);
      }
      const done = e.report.step - e.from, total = Math.max(1, e.to - e.from);
      const width = 30, filled = Math.round((width * done) / total);
      const rate = done / Math.max(1e-9, e.seconds);
      draw(
        `[${"█".repeat(filled)}${"░".repeat(width - filled)}] ${e.report.step}/${e.to} ` +
          `L1 ${e.report.l1.toFixed(3)} | ${rate.toFixed(2)} step/s | ETA ${
            fmtTime((e.to - e.report.step) / rate)
          }`,
      );
      if (e.report.step === e.to) draw("");
    });
}

/** metrics.jsonl: one JSON line per logged step (the report, seconds, resident memory). */
export const metrics = (file: string, secondsBefore: number): Stage => (e) =>
  e.logged
    ? Run.appendLine(
      file,
      JSON.stringify({
        ...e.report,
        seconds: secondsBefore + e.seconds,
        rssMiB: Math.round(Deno.memoryUsage().rss / 2 ** 20),
      }),
    )
    : Effect.void;

/** Checkpoints every `every` steps and at the last, through `save` (atomic, uninterruptible). */
export const checkpoints = (
  every: number,
  save: (s: State, seconds: number) => Effect.Effect<void, unknown>,
): Stage =>
(e) =>
  e.report.step % every === 0 || e.report.step === e.to ? save(e.state, e.seconds) : Effect.void;

// ---------------------------------------------------------------------------------------------
// The phases of a run.
// ---------------------------------------------------------------------------------------------

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
  readonly method: string;
  readonly stepsPerSecond: number;
}

/** A model ready to train: the FP32 network, its parameters, and the quantized network. */
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
   * `Run.prepareOut`).
   */
  readonly resume: boolean;
  /** Replace a run already in `out`: its files are removed first. */
  readonly force?: boolean;
  /** Progress lines (default console.log). */
  readonly log?: (line: string) => void;
  /** Stages of the loop besides progress, metrics and checkpoints (the recipe's come first). */
  readonly stages?: ReadonlyArray<Stage>;
  /** Stop after the first step for which this holds (an early-stop rule). */
  readonly stopWhen?: (r: StepReport) => boolean;
  /** Draw the progress as a live bar (default: when stdout is a terminal). */
  readonly tty?: boolean;
  /** SSIM of the evaluations: `same` (default, SPEC §8) or `valid` (MATLAB `ssim_index`). */
  readonly ssim?: "same" | "valid";
}

/** Phase: scores a model on the evaluation set, one log line per image. */
export const evaluation = (
  what: string,
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Dataset,
  o: { readonly log: (l: string) => void; readonly step: number; readonly ssim?: "same" | "valid" },
) =>
  Effect.gen(function* () {
    o.log(`evaluating ${what} on ${ds.pairs.length} images`);
    const s = yield* Evaluate.evaluate(model, params, ds, {
      step: o.step,
      ssim: o.ssim,
      onImage: (i, n, s) =>
        o.log(
          `  eval ${what} ${i + 1}/${n} ${s.file.split("/").pop()}: ${s.psnr.toFixed(2)} dB` +
            (s.flag ? ` ⚠ flagged: ${s.flag}` : ""),
        ),
      onFailure: (file, reason) => o.log(`  eval ${what} ${file}: failed: ${reason}; left out`),
    });
    // The evaluation's full-size maps are pooled for reuse; training never needs them again.
    Backend.releaseMemory();
    return scoreOf(s);
  });

/**
 * Phase: the quantized model's starting parameters — the FP32 ones plus calibrated quantizer
 * parameters (SPEC §2; the method's own count of calibration batches). Frees what it does not
 * keep of `fresh` and `fp32`.
 */
export const calibration = (
  recipe: Recipe.Recipe,
  model: Nn.AnyLayer,
  fp32: Params,
  train: Data.Training,
  o: { readonly log: (l: string) => void; readonly batches: number },
) =>
  Effect.gen(function* () {
    const t = recipe.train;
    const fresh = model.init(t.seed);
    const base = Tree.merge(fresh, fp32);
    const n = Quant.layers(model).length;
    if (n > 0) o.log(`calibrating ${n} quantized layers on ${o.batches} batches`);
    const cal = yield* Calibration.calibrate(model, base, train, {
      batches: o.batches,
      batch: { batch: t.batch, patch: t.patch, seed: t.seed },
    });
    const params = Tree.flatten(Tree.merge(base, cal));
    // Dispose what the merge did not keep (fresh tensors shadowed by pretrained/calibrated ones).
    const kept = new Set(params.values());
    for (const x of Tree.flatten(fresh).values()) if (!kept.has(x)) x.dispose();
    for (const x of Tree.flatten(fp32).values()) if (!kept.has(x)) x.dispose();
    return params;
  });

/** Where a run starts from: its first state, the scores before training, earlier seconds. */
export interface Start {
  readonly state: State;
  readonly fp32: Score;
  readonly ptq: Score | null;
  /** Seconds of the training loop in earlier sessions (0 for a fresh run). */
  readonly secondsBefore: number;
  readonly resumed: boolean;
}

/**
 * Phase: the starting state. Resuming: the checkpoint's state and the scores it recorded
 * (`Run.prepareOut` has checked that it was made by this recipe and is not past its last step).
 * Otherwise: the FP32 scores, calibration, the PTQ scores and a fresh optimizer state.
 */
export const starting = (
  recipe: Recipe.Recipe,
  cfg: StepConfig,
  prepared: Prepared,
  data: { readonly train: Data.Training; readonly eval: Data.Dataset },
  opts: Pick<RunOptions, "out" | "resume" | "ssim"> & {
    readonly log: (l: string) => void;
    readonly calibrationBatches?: number;
  },
): Effect.Effect<Start, unknown, never> =>
  Effect.gen(function* () {
    const { log } = opts;
    const t = recipe.train;
    const model = prepared.quantized;
    const ckptFile = `${opts.out}/checkpoint.bin`;
    const resumed = opts.resume && (yield* Run.exists(ckptFile))
      ? yield* Checkpoint.read(ckptFile)
      : undefined;
    if (resumed) {
      const init = Tree.flatten(model.init(t.seed));
      const mismatch = Checkpoint.check(ckptFile, resumed.params, init);
      Tree.dispose(Tree.unflatten(init));
      if (mismatch) return yield* Effect.fail(mismatch);
      Tree.dispose(prepared.params); // the checkpoint's parameters replace the starting ones
      log(`resumed from ${ckptFile} at step ${resumed.step}`);
      yield* Run.truncateMetrics(`${opts.out}/metrics.jsonl`, resumed.step, log);
      return {
        state: { step: resumed.step, params: resumed.params, opt: resumed.opt },
        fp32: resumed.meta.fp32 as Score,
        ptq: resumed.meta.ptq as Score | null,
        secondsBefore: (resumed.meta.seconds as number | undefined) ?? 0,
        resumed: true,
      };
    }
    if (opts.resume) {
      // Metrics or a summary without a checkpoint belong to no run that can be continued.
      const stale: string[] = [];
      for (const f of ["metrics.jsonl", "summary.json"]) {
        if (yield* Run.exists(`${opts.out}/${f}`)) stale.push(f);
      }
      for (const f of stale) {
        yield* Effect.tryPromise({
          try: () => Deno.remove(`${opts.out}/${f}`),
          catch: Run.fileError(`${opts.out}/${f}`),
        });
      }
      log(
        `no checkpoint in ${opts.out}; starting from step 0` +
          (stale.length ? ` (removed the stale ${stale.join(", ")})` : ""),
      );
    }
    const fp32 = yield* evaluation("FP32", prepared.fp32, prepared.params, data.eval, {
      log,
      step: 0,
      ssim: opts.ssim,
    });
    const params = yield* calibration(recipe, model, prepared.params, data.train, {
      log,
      batches: opts.calibrationBatches ?? t.calibrationBatches,
    });
    const ptq = Quant.layers(model).length > 0
      ? yield* evaluation("the calibrated model (PTQ)", model, Tree.unflatten(params), data.eval, {
        log,
        step: 0,
        ssim: opts.ssim,
      })
      : null;
    return { state: initialState(cfg, params), fp32, ptq, secondsBefore: 0, resumed: false };
  });

/**
 * Trains a prepared model by a recipe: the FP32, calibration and PTQ phases (or resume), the
 * loop with its stages, the QAT evaluation and the summary. `recipeJson` is what checkpoints
 * record (`Recipe.toJSON`, with the recipe module); `calibrationBatches` the method's count.
 */
export const run = (
  recipe: Recipe.Recipe,
  recipeJson: unknown,
  prepared: Prepared,
  data: { readonly train: Data.Training; readonly eval: Data.Dataset },
  opts: RunOptions & { readonly calibrationBatches?: number },
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
    yield* Run.prepareOut(opts.out, {
      resume: opts.resume,
      force: opts.force,
      recipe: recipeJson,
      log,
    });
    yield* checkPatch(t.patch, data.train);
    const model = prepared.quantized;
    const nQuant = Quant.layers(model).length;
    // A distilling method keeps its own copy of the FP32 parameters as the teacher: the
    // starting parameters become the first state and are freed as training moves on.
    const teacher = recipe.method.distill
      ? {
        model: prepared.fp32,
        params: Tree.unflatten(
          [...Tree.flatten(prepared.params)].map(([k, v]) => [k, v.clone()] as const),
        ),
      }
      : undefined;
    const cfg = configOf(recipe, model, teacher);

    const { state, fp32, ptq, secondsBefore: elapsedBefore, resumed } = yield* starting(
      recipe,
      cfg,
      prepared,
      data,
      { ...opts, log },
    );

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
        meta: { fp32, ptq, seconds: elapsedBefore + seconds, backend: backend.name },
      }).pipe(
        Effect.tap(() => Effect.sync(() => (saved = s.step))),
        Effect.uninterruptible,
      );
    if (!resumed) {
      yield* save(state, 0);
      yield* Run.writeText(metricsFile, "");
    }

    const firstStep = state.step;
    log(
      resumed && firstStep === t.steps
        ? `nothing left to train: ${ckptFile} is at step ${firstStep} of ${t.steps}`
        : `training ${recipe.name} with ${recipe.method.label}: steps ${firstStep}→${t.steps}, ` +
          `batch ${t.batch}×${t.patch}², ${nQuant} quantized layers, merge ${cfg.merge.name}` +
          (cfg.distill ? `, SKT ×${cfg.distill.weight} at "${cfg.distill.at}"` : "") +
          (cfg.terms.length ? `, terms ${cfg.terms.map((x) => x.name).join(", ")}` : ""),
    );
    const initial = state;
    const stages: Stage[] = [
      (e) => Effect.sync(() => (at = e.report.step)),
      progress({ log, distill: !!cfg.distill, terms: cfg.terms.length > 0, tty: opts.tty }),
      metrics(metricsFile, elapsedBefore),
      ...(opts.stages ?? []),
      checkpoints(t.checkpointEvery, save),
    ];
    const trainAndEvaluate = Effect.gen(function* () {
      const started = performance.now();
      const batches = Data.stream(
        data.train,
        { batch: t.batch, patch: t.patch, seed: t.seed },
        initial.step,
        t.steps,
      );
      let loop = steps(cfg, initial, batches, { to: t.steps, logEvery: t.logEvery }).pipe(
        Stream.tap((e) => Effect.forEach(stages, (s) => s(e), { discard: true })),
      );
      if (opts.stopWhen) {
        const stop = opts.stopWhen;
        loop = loop.pipe(Stream.takeUntil((e) => stop(e.report)));
      }
      const last = yield* Stream.runLast(loop);
      const final = last._tag === "Some" ? last.value.state : initial;
      if (last._tag === "Some" && last.value.report.step !== t.steps) {
        // Stopped early: the last state is checkpointed as it is.
        yield* save(final, last.value.seconds);
        log(`stopped at step ${last.value.report.step} by the recipe's stopping rule`);
      }
      const loopSeconds = (performance.now() - started) / 1000;
      const q = yield* evaluation(
        "the trained model (QAT)",
        model,
        Tree.unflatten(final.params),
        data.eval,
        { log, step: final.step, ssim: opts.ssim },
      );
      dispose(final);
      if (teacher) Tree.dispose(teacher.params);
      const trained = final.step - firstStep;
      const summary: Summary = {
        fp32,
        ptq,
        qat: q,
        steps: final.step,
        seconds: elapsedBefore + loopSeconds,
        wallSeconds: (performance.now() - wallStart) / 1000,
        backend: `${backend.name} (${backend.adapter})`,
        recipe: recipe.name,
        method: recipe.method.name,
        stepsPerSecond: trained > 0 ? trained / Math.max(1e-9, loopSeconds) : 0,
      };
      yield* Run.writeText(summaryFile, JSON.stringify(summary, null, 2) + "\n");
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
