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

/** Final scores of a run. */
export interface Summary {
  readonly fp32: { readonly psnr: number; readonly ssim: number };
  readonly ptq: { readonly psnr: number; readonly ssim: number } | null;
  readonly qat: { readonly psnr: number; readonly ssim: number };
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
  /** Continue from `<out>/checkpoint.bin` if present. */
  readonly resume: boolean;
  /** Progress lines (default console.log). */
  readonly log?: (line: string) => void;
}

const fmtTime = (s: number) => {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
};

const appendLine = (file: string, line: string) =>
  Effect.promise(() => Deno.writeTextFile(file, line + "\n", { append: true }));

/** Keeps only the metrics lines of steps ≤ `step` (a resumed run writes the rest again). */
const truncateMetrics = (file: string, step: number) =>
  Effect.promise(async () => {
    let text = "";
    try {
      text = await Deno.readTextFile(file);
    } catch {
      return;
    }
    const kept = text.split("\n").filter((l) =>
      l.trim() !== "" && (JSON.parse(l) as { step: number }).step <= step
    );
    await Deno.writeTextFile(file, kept.map((l) => l + "\n").join(""));
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
    yield* Effect.promise(() => Deno.mkdir(opts.out, { recursive: true }));
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
        log(`  eval ${what} ${i + 1}/${n} ${s.file.split("/").pop()}: ${s.psnr.toFixed(2)} dB`),
    });

    // Resume, or start: FP32 scores, calibration, PTQ scores.
    const resumed = opts.resume
      ? yield* Checkpoint.read(ckptFile).pipe(
        Effect.map((c) => c as Checkpoint.Contents | undefined),
        Effect.catchTag("CheckpointError", (e) =>
          e.reason.includes("No such file")
            ? Effect.sync(() => {
              log(`no checkpoint in ${opts.out}; starting from step 0`);
              return undefined;
            })
            : Effect.fail(e)),
      )
      : undefined;
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
      yield* truncateMetrics(metricsFile, state.step);
    } else {
      yield* Effect.promise(() => Deno.writeTextFile(metricsFile, ""));
      log(`evaluating FP32 on ${data.eval.pairs.length} images`);
      const f = yield* Evaluate.evaluate(
        prepared.fp32,
        prepared.params,
        data.eval,
        evalOpts("fp32"),
      );
      fp32 = { psnr: f.psnr, ssim: f.ssim };
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
        ptq = { psnr: p.psnr, ssim: p.ssim };
      } else ptq = null;
      state = initialState(cfg, params);
    }

    const save = (s: State, seconds: number) =>
      Checkpoint.write(ckptFile, {
        step: s.step,
        params: s.params,
        opt: s.opt,
        recipe: recipeJson,
        meta: { fp32, ptq, seconds, backend: backend.name },
      });
    if (!resumed) yield* save(state, 0);

    const started = performance.now();
    const firstStep = state.step;
    log(
      `training ${recipe.name}: steps ${firstStep}→${t.steps}, batch ${t.batch}×${t.patch}², ` +
        `${nQuant} quantized layers, merge ${cfg.merge.name}` +
        (cfg.distill ? `, SKT ×${cfg.distill.weight} at "${cfg.distill.at}"` : ""),
    );
    const final = yield* Data.stream(data.train, batchOpts, state.step, t.steps).pipe(
      Stream.runFoldEffect(
        () => state,
        (s, b) =>
          Effect.gen(function* () {
            const logged = (s.step + 1) % t.logEvery === 0 || s.step + 1 === t.steps;
            const { state: next, report } = yield* runStep(cfg, s, b, logged).pipe(
              Effect.tapError(() => Effect.sync(() => dispose(s))),
            );
            dispose(s);
            const done = next.step;
            const seconds = (performance.now() - started) / 1000;
            if (logged) {
              const rate = (done - firstStep) / seconds;
              yield* appendLine(
                metricsFile,
                JSON.stringify({ ...report, seconds: elapsedBefore + seconds }),
              );
              log(
                `step ${done}/${t.steps} | L1 ${report.l1.toFixed(3)} | ` +
                  (cfg.distill ? `SKT ${report.distill.toExponential(3)} | ` : "") +
                  `L_M ${report.mismatch.toExponential(3)} | ` +
                  `cos ${report.cosine.toFixed(3)} | conflict ${
                    (100 * report.conflict).toFixed(1)
                  }% | ` +
                  `${rate.toFixed(2)} step/s | ETA ${fmtTime((t.steps - done) / rate)}`,
              );
            }
            if (done % t.checkpointEvery === 0 || done === t.steps) {
              yield* save(next, elapsedBefore + seconds);
            }
            return next;
          }),
      ),
    );
    const seconds = elapsedBefore + (performance.now() - started) / 1000;
    log(`evaluating the trained model (QAT) on ${data.eval.pairs.length} images`);
    const q = yield* Evaluate.evaluate(
      model,
      Tree.unflatten(final.params),
      data.eval,
      evalOpts("qat"),
    );
    dispose(final);
    if (teacher) Tree.dispose(teacher.params);
    const summary: Summary = {
      fp32,
      ptq,
      qat: { psnr: q.psnr, ssim: q.ssim },
      steps: t.steps,
      seconds,
      wallSeconds: (performance.now() - wallStart) / 1000,
      backend: `${backend.name} (${backend.adapter})`,
      recipe: recipe.name,
      stepsPerSecond: (t.steps - firstStep) / Math.max(1e-9, (performance.now() - started) / 1000),
    };
    yield* Effect.promise(() =>
      Deno.writeTextFile(`${opts.out}/summary.json.tmp`, JSON.stringify(summary, null, 2) + "\n")
        .then(() => Deno.rename(`${opts.out}/summary.json.tmp`, `${opts.out}/summary.json`))
    );
    return summary;
  });

/** The final table, Markdown. */
export function table(s: Summary, scale: number): string {
  const row = (name: string, v: { psnr: number; ssim: number } | null) =>
    v ? `| ${name} | ${v.psnr.toFixed(2)} | ${v.ssim.toFixed(4)} |` : `| ${name} | – | – |`;
  return [
    `| model (×${scale}) | PSNR (dB) | SSIM |`,
    "|---|---|---|",
    row("FP32", s.fp32),
    row("quantized, calibrated (before QAT)", s.ptq),
    row("quantized, after QAT", s.qat),
  ].join("\n");
}
