/**
 * Baselines: the quantization schemes the ODM paper compares against (Tables 2–7), as
 * composable quantizers and range policies — not forks of the training loop. Every method runs
 * through the same `Train.run`; only the quantizers and the merge rule differ (SPEC §11).
 *
 * - **LSQ-style** (Eq. 8): learnable `u_w` initialised to a percentile of |W| — {@link lsq}
 *   (an alias of `Range.learnable(Range.percentile(j))`).
 * - **max** (Eq. 7 with f = max): `u_w = max|W|` per call — {@link max} (`Range.max`).
 * - **PAMS**: symmetric quantizers with zero as a level ({@link zeroLevel}: `2^(b−1) − 1`
 *   positive levels). Weights use `u = max|W|` (no learning, {@link pamsWeight}); activations
 *   `[−α, α]` with one learnable α per quantizer ({@link pamsActivation}, {@link pamsAlpha}).
 *   α starts at an EMA (decay 0.9997, from the first batch) of per-batch max|x| over the
 *   calibration batches (NOTE: PAMS runs that EMA over its first training epoch, with
 *   activations not yet quantized; with this decay the value stays close to the first
 *   batch's either way). The method trains α at lr 1e-2 ({@link PAMS_ALPHA_LR}) and adds
 *   PAMS's SKT loss, `1e3 · MSE(at(student), at(teacher))` on the body output
 *   (`Loss.attentionTransfer`, recipe field `distill`).
 * - **DAQ**: activations normalised per image and per channel by their run-time mean and std,
 *   quantized to `2^b` levels with a fixed step table, de-normalised ({@link daq}). No
 *   learnable parameters; its run-time statistics are charged by `Cost.of` through
 *   {@link RuntimeCost}. The step table is Max's (1960) optimal uniform quantizer for a
 *   unit Gaussian ({@link DAQ_STEPS}), which is the table DAQ builds on.
 * - **DDTB**: asymmetric learnable bounds `[l, u]` initialised from the 1st/99th percentiles
 *   ({@link ddtb}); on the layers whose input range varies most between images
 *   ({@link selectDynamic}, 30% of the quantized layers by default) a small gate (spatial mean
 *   → FC → ReLU → FC → `2·sigmoid`) computes per image two factors that scale `u` and `l`, so
 *   each image is quantized with its own range at test time too. The gate's parameters are
 *   stored and its arithmetic runs per image: `Cost.of` charges both (at 32 bits: our gate is
 *   not quantized, DDTB's is at 2 bits — our count is an upper bound of its overhead).
 *   Weights as PAMS.
 *
 * {@link methods} and {@link ablations} are the recipe variations (`quant` and `regularizer`
 * fields) that `deno task compare` runs from one base recipe.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Effect, Stream } from "effect";
import * as Calibration from "./Calibration.ts";
import * as Data from "./Data.ts";
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import * as Quantizer from "./Quantizer.ts";
import * as Range from "./Range.ts";
import type * as Recipe from "./Recipe.ts";
import * as Rng from "./Rng.ts";
import * as Ste from "./Ste.ts";
import type { Params } from "./Tree.ts";

/** LSQ-style learnable weight range (Eq. 8): `u_w` a parameter initialised to percentile_j(|W|). */
export const lsq = (j = 0.99): Range.Range<Range.LearnableParams> =>
  Range.learnable(Range.percentile(j));

/** The max weight range (Eq. 7 with f = max): `u = max|W|`, recomputed per call. */
export const max: Range.Range<Record<never, never>> = Range.max;

/**
 * Symmetric fake quantization with zero as a level: `q = round(clip(x, −α, α)/s)·s`,
 * `s = α / n`, `n = 2^(b−1) − 1` positive levels (so `2^b − 1` levels in all).
 *
 * NOTE: a custom gradient, for the same reason as `Quantizer.fakeQuant` (tfjs's Maximum/Minimum
 * gradients do not reduce broadcast axes). With a straight-through round: inside `[−α, α]`
 * `∂q/∂x = 1`, `∂q/∂α = (q − x)/α`; above `α`: `∂q/∂α = 1`; below `−α`: `∂q/∂α = −1`;
 * `∂q/∂x = 0` outside. tests/Baselines.test.ts checks them against finite differences.
 */
export const zeroLevelQuant = (x: tf.Tensor, alpha: tf.Scalar, bits: number): tf.Tensor =>
  zeroLevelOp(bits)(x, alpha);

const zeroOps = new Map<number, (x: tf.Tensor, a: tf.Scalar) => tf.Tensor>();

function zeroLevelOp(bits: number) {
  let op = zeroOps.get(bits);
  if (op) return op;
  const n = 2 ** (bits - 1) - 1;
  const f = tf.customGrad(
    ((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
      const [x, a, save] = args as [tf.Tensor, tf.Scalar, tf.GradSaveFunc];
      const s = tf.div(a, n);
      const clipped = tf.minimum(tf.maximum(x, tf.neg(a)), a);
      const q = tf.mul(tf.round(tf.div(clipped, s)), s);
      save([x, a, q]);
      return {
        value: q,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sx, sa, sq] = saved;
          const inside = tf.lessEqual(tf.abs(sx), sa);
          const zero = tf.zerosLike(sx);
          const dx = tf.where(inside, dy, zero);
          const slope = tf.div(tf.mul(dy, tf.sub(sq, sx)), sa);
          const outside = tf.where(tf.greater(sx, sa), dy, tf.neg(dy));
          const da = tf.sum(tf.where(inside, slope, outside));
          return [dx, da];
        },
      };
    }) as Parameters<typeof tf.customGrad>[0],
  );
  op = (x, a) => f(x, a);
  zeroOps.set(bits, op);
  return op;
}

/**
 * A symmetric quantizer with a zero level (PAMS): the range policy gives `u` (= α), the tensor
 * is quantized by {@link zeroLevelQuant}. Bits 2–8, or 32 for none.
 */
export function zeroLevel<P extends Params>(
  opts: { readonly bits: number; readonly range: Range.Range<P> },
): Quantizer.Quantizer<P> {
  const { bits, range } = opts;
  if (!(Number.isInteger(bits) && ((bits >= 2 && bits <= 8) || bits === 32))) {
    throw new RangeError(`zeroLevel: bits must be an integer in 2–8 or 32, got ${bits}`);
  }
  const bounds = (params: P, x: tf.Tensor): Range.Bounds => {
    const u = tf.maximum(range.bounds(params, x, true).upper, Quantizer.EPSILON) as tf.Scalar;
    return { lower: tf.neg(u), upper: u };
  };
  return {
    bits,
    symmetric: true,
    name: `zero${bits}·${range.name}`,
    dynamic: range.dynamic ?? true,
    init: (sample) => range.init(sample, true),
    defaults: () => range.defaults(true),
    bounds,
    apply: (params, x) => (bits === 32 ? x : zeroLevelQuant(x, bounds(params, x).upper, bits)),
  };
}

/** Parameters of {@link pamsAlpha}: the learnable clipping bound α. */
export type AlphaParams = { readonly alpha: tf.Scalar };

/**
 * PAMS's activation range `[−α, α]`, α learnable, initialised to max|x| of the calibration
 * sample (averaged over calibration batches by `Quant.calibrate`).
 */
export const pamsAlpha: Range.Range<AlphaParams> = {
  name: "pamsAlpha",
  dynamic: false,
  init: (sample) => ({ alpha: tf.tidy(() => tf.max(tf.abs(sample)) as tf.Scalar) }),
  defaults: () => ({ alpha: tf.scalar(1) }),
  bounds: (p) => ({ lower: tf.neg(p.alpha), upper: p.alpha }),
};

/** PAMS weights: symmetric, zero level, `u = max|W|`, nothing learned. */
export const pamsWeight = (bits: number): Quantizer.Quantizer<Record<never, never>> =>
  zeroLevel({ bits, range: Range.max });

/** PAMS's EMA decay for α's initial value (SPEC §11). */
export const PAMS_EMA_DECAY = 0.9997;

/**
 * PAMS activations: symmetric `[−α, α]`, zero level, α learnable, initialised by an EMA
 * (decay 0.9997) of the per-batch max|x| over the calibration batches.
 */
export const pamsActivation = (bits: number): Quantizer.Quantizer<AlphaParams> => ({
  ...zeroLevel({ bits, range: pamsAlpha }),
  calibrationDecay: PAMS_EMA_DECAY,
});

/**
 * The step of DAQ's quantizer for normalised (zero-mean, unit-std) activations, by bit-width:
 * the optimal uniform quantizer of a unit Gaussian with `2^b` levels (J. Max, "Quantizing for
 * minimum distortion", 1960, Table II). Levels sit at `±Δ/2, ±3Δ/2, …` (mid-rise).
 */
export const DAQ_STEPS: Readonly<Record<number, number>> = {
  1: 1.596,
  2: 0.9957,
  3: 0.586,
  4: 0.3352,
  5: 0.1881,
  6: 0.1041,
  7: 0.0569,
  8: 0.0308,
};

/** A quantizer with arithmetic of its own at run time, which `Cost.of` charges at FP32. */
export interface RuntimeCost {
  /** FLOPs per forward for an input of `elements` values in `channels` channels (one image). */
  readonly runtimeFlops: (elements: number, channels: number) => number;
}

/** Variance floor of DAQ's normalisation (keeps `1/σ` finite on constant channels). */
export const DAQ_EPSILON = 1e-6;

/**
 * DAQ's activation quantizer: for each image and channel, `μ, σ` over the spatial axes (every
 * axis but the first and the last), computed from `x` itself on every call (training and
 * evaluation alike); `q(x) = σ · Q((x − μ)/σ) + μ` with `Q` the `2^b`-level mid-rise uniform
 * quantizer of step `DAQ_STEPS[b]` (STE round). No learnable parameters.
 *
 * `bounds` reports the range in the normalised domain, `±(2^b − 1)·Δ/2`.
 *
 * Run-time cost per value: 1 add (mean), 3 (variance: sub, square, add), 2 (normalise: sub,
 * multiply by 1/σ), 2 (de-normalise: multiply, add) = 8 FLOPs, plus 2 per channel (sqrt,
 * reciprocal).
 */
export function daq(
  bits: number,
): Quantizer.Quantizer<Record<never, never>> & RuntimeCost {
  if (!(Number.isInteger(bits) && ((bits >= 1 && bits <= 8) || bits === 32))) {
    throw new RangeError(`daq: bits must be an integer in 1–8 or 32, got ${bits}`);
  }
  const step = DAQ_STEPS[bits] ?? 0;
  const half = ((2 ** bits - 1) * step) / 2;
  const bounds = (): Range.Bounds => ({ lower: tf.scalar(-half), upper: tf.scalar(half) });
  return {
    bits,
    symmetric: false,
    name: `daq${bits}`,
    dynamic: true, // per-image, per-channel statistics
    init: () => ({}),
    defaults: () => ({}),
    bounds,
    runtimeFlops: (elements, channels) => (bits === 32 ? 0 : 8 * elements + 2 * channels),
    apply: (_p, x) => {
      if (bits === 32) return x;
      const axes = Array.from({ length: x.rank - 2 }, (_, i) => i + 1);
      const { mean, variance } = tf.moments(x, axes, true);
      const std = tf.sqrt(tf.add(variance, DAQ_EPSILON));
      const normalised = tf.div(tf.sub(x, mean), std);
      const b = bounds();
      const q = Quantizer.fakeQuant(normalised, b.lower, b.upper, bits);
      return tf.add(tf.mul(q, std), mean);
    },
  };
}

/** Hidden width of DDTB's gate (its reference code uses 32 after a 1×1 conv from C channels). */
export const DDTB_HIDDEN = 32;

/** Parameters of DDTB's per-image gate: two fully connected layers. */
export type GateParams = {
  readonly w1: tf.Tensor2D;
  readonly b1: tf.Tensor1D;
  readonly w2: tf.Tensor2D;
  readonly b2: tf.Tensor1D;
};

/** Parameters of {@link ddtb}: the two bounds, and the gate on dynamic layers. */
export type DdtbParams = {
  readonly lower: tf.Scalar;
  readonly upper: tf.Scalar;
  readonly gate?: GateParams;
};

/**
 * The gate's two factors per image, `[N, 2]` = `(s_u, s_l)`, from the spatial mean of the
 * layer's input (no gradient into `x` through the gate, as in DDTB). At initialisation `w2 = 0`,
 * `b2 = 0`, so both factors are exactly 1 and the layer starts as a static quantizer.
 */
export function gateScales(g: GateParams, x: tf.Tensor): tf.Tensor2D {
  const axes = Array.from({ length: x.rank - 2 }, (_, i) => i + 1);
  const context = tf.mean(Ste.stopGradient(x), axes) as tf.Tensor2D;
  const h = tf.relu(tf.add(tf.matMul(context, g.w1), g.b1));
  return tf.mul(tf.sigmoid(tf.add(tf.matMul(h, g.w2), g.b2)), 2) as tf.Tensor2D;
}

/**
 * DDTB's activation quantizer (asymmetric, Eq. 1 of the ODM paper with DDTB's bounds). Static:
 * learnable `l, u` from the calibration percentiles. With `gate` (a dynamic layer of
 * `channels` input channels): image `n` is quantized over `[s_l(n)·l, s_u(n)·u]`, the factors
 * from {@link gateScales}, one fused fake-quant per image; gradients reach `l`, `u` and the gate
 * through the bounds (SPEC §1).
 *
 * Run-time cost of the gate per image (`Cost.of` charges it at 32 bits): the spatial mean
 * (`elements` adds + `channels` divides), the two FC layers with biases (`2·C·h + h` and
 * `2·2h + 2`), the sigmoids and the doubling (4 per factor), two multiplies for the bounds.
 */
export function ddtb(
  bits: number,
  opts: { readonly percentile?: number; readonly gate?: { readonly channels: number } } = {},
): Quantizer.Quantizer<DdtbParams> & RuntimeCost {
  const base = Quantizer.asymmetric({
    bits,
    range: Range.learnable(Range.percentile(opts.percentile ?? 0.99)),
  });
  const channels = opts.gate?.channels;
  if (channels !== undefined && !(Number.isInteger(channels) && channels > 0)) {
    throw new RangeError(`ddtb: gate channels must be a positive integer, got ${channels}`);
  }
  const h = DDTB_HIDDEN;
  const gateDefaults = (c: number): GateParams => {
    // Kaiming-uniform first layer from a fixed key per width, so every run starts the same.
    const rng = Rng.stream(Rng.fold(0xdd7b, c));
    const bound = Math.sqrt(6 / c);
    const w1 = Float32Array.from({ length: c * h }, () => (2 * rng.next() - 1) * bound);
    return {
      w1: tf.tensor2d(w1, [c, h]),
      b1: tf.zeros([h]),
      w2: tf.zeros([h, 2]),
      b2: tf.zeros([2]),
    };
  };
  return {
    bits,
    symmetric: false,
    name: `ddtb${bits}${channels ? `·gate(${channels})` : ""}`,
    dynamic: channels !== undefined, // the gate reads each image's mean
    init: (sample) => base.init(sample) as DdtbParams,
    defaults: () => ({
      ...(base.defaults() as DdtbParams),
      ...(channels && bits < 32 ? { gate: gateDefaults(channels) } : {}),
    }),
    bounds: (p, x) => base.bounds(p, x),
    runtimeFlops: (elements, c) =>
      channels && bits < 32 ? elements + c + (2 * c * h + h) + (4 * h + 2) + 8 + 2 : 0,
    apply: (p, x) => {
      if (bits === 32 || !p.gate) return base.apply(p, x);
      // Per image: the static bounds scaled by the gate, with the asymmetric quantizer's guard.
      const scales = tf.unstack(gateScales(p.gate, x));
      const images = tf.split(x, x.shape[0]!, 0);
      return tf.concat(
        images.map((xi, n) => {
          const lower = tf.mul(scales[n].slice([1], [1]).reshape([]), p.lower) as tf.Scalar;
          const upper = tf.mul(scales[n].slice([0], [1]).reshape([]), p.upper) as tf.Scalar;
          const b = base.bounds({ lower, upper }, xi);
          return Quantizer.fakeQuant(xi, b.lower, b.upper, bits);
        }),
        0,
      );
    },
  };
}

/**
 * How much a layer's input range moves between images, DDTB's criterion for a gate:
 * `(std_n max_n + std_n min_n) / (mean_n max_n − mean_n min_n)` over the per-image maxima and
 * minima (population standard deviations; 0 for a layer whose mean range is empty).
 */
export function rangeVariability(
  s: { readonly max: ReadonlyArray<number>; readonly min: ReadonlyArray<number> },
): number {
  const mean = (v: ReadonlyArray<number>) => v.reduce((a, b) => a + b, 0) / v.length;
  const std = (v: ReadonlyArray<number>) => {
    const m = mean(v);
    return Math.sqrt(mean(v.map((a) => (a - m) ** 2)));
  };
  const width = mean(s.max) - mean(s.min);
  return width > 0 ? (std(s.max) + std(s.min)) / width : 0;
}

/** Options of {@link selectDynamic}. */
export interface SelectOptions {
  /** Share of the quantized layers that get a gate (DDTB: about 30%); at least one. */
  readonly fraction: number;
  /** Batches of training patches to measure on, drawn as calibration draws them. */
  readonly batches: number;
  readonly batch: Data.BatchOptions;
}

/**
 * DDTB's choice of dynamic layers: the quantized layers whose input range varies most from
 * image to image, measured on the full-precision model (`model` in calibrate mode runs FP and
 * reports each quantized layer's input). For each layer and image, the max and min of its
 * input; the score is `(std_n max + std_n min) / (mean_n max − mean_n min)` (scale-free, so wide
 * and narrow layers compare), and the top `fraction` of layers (rounded up) are returned in
 * forward order.
 */
export const selectDynamic = (
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Dataset,
  opts: SelectOptions,
): Effect.Effect<ReadonlyArray<string>> =>
  Effect.gen(function* () {
    if (!(opts.fraction > 0 && opts.fraction <= 1)) {
      throw new RangeError(`selectDynamic: fraction must be in (0, 1], got ${opts.fraction}`);
    }
    const paths = Quant.layers(model).map((l) => l.path);
    const stats = new Map<string, { max: number[]; min: number[] }>(
      paths.map((p) => [p, { max: [], min: [] }]),
    );
    yield* Data.stream(ds, Calibration.sampling(opts.batch), 0, opts.batches).pipe(
      Stream.runForEach((b) =>
        Effect.promise(async () => {
          const taps: Array<{ path: string; range: tf.Tensor }> = [];
          tf.tidy(() => {
            const ctx = Nn.context("calibrate", {
              tap: (t) => {
                const axes = Array.from({ length: t.x.rank - 1 }, (_, i) => i + 1);
                const range = tf.stack([tf.max(t.x, axes), tf.min(t.x, axes)]);
                taps.push({ path: t.path, range: tf.keep(range) });
              },
            });
            const { lr } = Data.tensors(b);
            model.apply(params, lr, ctx);
          });
          for (const t of taps) {
            const [mx, mn] = (await t.range.array()) as number[][];
            t.range.dispose();
            stats.get(t.path)?.max.push(...mx);
            stats.get(t.path)?.min.push(...mn);
          }
        })
      ),
    );
    const score = new Map(paths.map((p) => [p, rangeVariability(stats.get(p)!)] as const));
    const k = Math.max(1, Math.ceil(opts.fraction * paths.length));
    const chosen = new Set([...paths].sort((a, b) => score.get(b)! - score.get(a)!).slice(0, k));
    return paths.filter((p) => chosen.has(p));
  });

/** The fields that make a method out of a base recipe. */
export interface Variation {
  /** One line for tables. */
  readonly label: string;
  readonly quant: Pick<Recipe.Input["quant"], "weightRange" | "activationRange">;
  readonly regularizer: { readonly merge: "cooperative" | "naive" | "reconstruction" };
  /** Distillation from the FP model (PAMS's SKT); off when absent. */
  readonly distill?: { readonly weight: number };
  /** The learning rate of the quantizer parameters, when the method fixes it (PAMS: 1e-2). */
  readonly lrQuant?: number;
}

/** PAMS's weight on its SKT attention-transfer loss (SPEC §11). */
export const PAMS_SKT_WEIGHT = 1e3;
/** PAMS's learning rate for α (SPEC §11). */
export const PAMS_ALPHA_LR = 1e-2;

/** The methods of Tables 2–5: ODM and the baselines, all trained with the same loop. */
export const methods: Readonly<Record<string, Variation>> = {
  odm: {
    label: "ODM (WCC + cooperative MR)",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
  lsq: {
    label: "LSQ-style learnable u_w (Eq. 8)",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  max: {
    label: "max u_w (Eq. 7)",
    quant: { weightRange: "max", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  pams: {
    label: "PAMS (max|W|, learnable α, SKT)",
    quant: { weightRange: "pams", activationRange: "pams" },
    regularizer: { merge: "reconstruction" },
    distill: { weight: PAMS_SKT_WEIGHT },
    lrQuant: PAMS_ALPHA_LR,
  },
  ddtb: {
    label: "DDTB (dual bounds, per-image gate)",
    quant: { weightRange: "pams", activationRange: "ddtb" },
    regularizer: { merge: "reconstruction" },
  },
  daq: {
    label: "DAQ (per-image channel norm)",
    quant: { weightRange: "pams", activationRange: "daq" },
    regularizer: { merge: "reconstruction" },
  },
};

/** Table 7's ablation: (a) baseline … (e) full ODM. */
export const ablations: Readonly<Record<string, Variation>> = {
  a: {
    label: "(a) learnable u_w, reconstruction only",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  b: {
    label: "(b) + WCC",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "reconstruction" },
  },
  c: {
    label: "(c) + cooperative MR, no WCC",
    quant: { weightRange: "learnable", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
  d: {
    label: "(d) WCC + naive MR",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "naive" },
  },
  e: {
    label: "(e) WCC + cooperative MR (ODM)",
    quant: { weightRange: "clipCorrected", activationRange: "learnable" },
    regularizer: { merge: "cooperative" },
  },
};

/** The base recipe as the given method (name suffixed with `-<method>`), as recipe input. */
export function vary(base: Recipe.Recipe, key: string, v: Variation): Recipe.Input {
  return {
    ...base,
    name: `${base.name}-${key}`,
    quant: { ...base.quant, ...v.quant },
    regularizer: { ...base.regularizer, ...v.regularizer },
    distill: { ...base.distill, weight: v.distill?.weight ?? 0 },
    train: { ...base.train, ...(v.lrQuant !== undefined ? { lrQuant: v.lrQuant } : {}) },
  };
}
