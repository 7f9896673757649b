/**
 * DDTB ("Dynamic Dual Trainable Bounds for Ultra-low Precision Super-Resolution Networks",
 * Zhong et al., ECCV 2022) as its official code runs it (zysxmu/DDTB; files below are in
 * `model/quant_ops.py` unless named):
 *
 * - the grid: `sf = n/(u − l)`, `zp = round(sf·l) + 2^(b−1)`, `q = (round(sf·clip(x, l, u) − zp)
 *   + zp)/sf`, `n = 2^b − 1` (`quant_weight_asym99.forward`,
 *   `DDTB_quant_act_asym_dynamic_quantized.forward`). zp is an integer, so the levels are the
 *   multiples of `1/sf` inside `[l, u]` (zero is one): 4 or 5 levels at 2 bits, not Eq. 1's grid
 *   anchored at l;
 * - weights: bounds at the 1st/99th percentiles of W (`quant_weight_asym99`, used by
 *   `model/edsr.py` and `model/bnsrresnet.py`) or at its min/max for RDN (`quant_weight_asym`,
 *   `model/rdn.py`), recomputed from the current weights, identity gradient inside;
 * - activations: learnable `l, u` (`alpha_lower`, `alpha_upper`), initialised once from the
 *   first batch's percentiles `M` and `100 − M` (`_ema`, "only calibration once"): M = 99 for
 *   EDSR/SRResNet, 95 for RDN (`model/rdn.py`: `M=95`);
 * - the dynamic layers: every activation quantizer's FP input max and min are collected per
 *   batch over the statistics pass; the `int(ratio·L)` quantizers with the largest
 *   `var(max) + var(min)` get a gate (`main_limitrange_incremental.py` `train`, epoch 2), ratio
 *   0.3 EDSR, 0.5 RDN, 0.1 SRResNet (`run.sh --dynamic_ratio`);
 * - the gate (`atten_c`): `2·sigmoid(conv₂(act₂(relu(bn(conv₁(act₁(avgpool(x)))))))` with
 *   2-bit dynamic min/max activation quantizers (`quant_activation`, which detach their input:
 *   no gradient reaches conv₁ or the BN) and 2-bit PAMS-style weights (`QuantConv2d`,
 *   `quant_weight`), C → 32 → 2, no biases, PyTorch's default init; it scales `u` and `l` per
 *   image. It is off for a first stage (`first_stage_epoch = 6` of 60 epochs, the first being
 *   the statistics pass: the gate is used from 5/60 of the schedule, {@link GATE_FROM}), while
 *   an MSE regulariser pulls its logits to 0 (so it starts at factor 1);
 * - loss: L1 + 1e3·SKT throughout (`option.py --w_at 1000`); Adam, the bounds (`alpha` in their
 *   names) at lr 1e-2, everything else, the gates too, at the base lr.
 *
 * Where the paper's tables place it: the activation quantizers in the data path, as PAMS does
 * (`model/edsr.py` `DDTB_ResBlock`, `model/rdn.py`; `placement.ts` `dataPath`); SRResNet on the
 * conv inputs (`model/bnsrresnet.py` `act1`, `act2`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Effect, Stream } from "effect";
import * as Calibration from "../Calibration.ts";
import * as Cooperative from "../Cooperative.ts";
import * as Data from "../Data.ts";
import type * as Method from "../Method.ts";
import * as Nn from "../Nn.ts";
import * as Quant from "../Quant.ts";
import * as Quantizer from "../Quantizer.ts";
import * as Range from "../Range.ts";
import * as Rng from "../Rng.ts";
import * as Ste from "../Ste.ts";
import * as Tree from "../Tree.ts";
import type { Params } from "../Tree.ts";
import * as Odm from "./odm.ts";
import * as Pams from "./pams.ts";
import * as Placement from "./placement.ts";

/** SKT weight (`option.py --w_at 1000`). */
export const SKT_WEIGHT = 1e3;
/** Learning rate of the bounds (`main_limitrange_incremental.py`, the `alpha` group). */
export const BOUNDS_LR = 1e-2;
/** The gate is used from this share of the training steps on (5 of 60 epochs). */
export const GATE_FROM = 5 / 60;
/** Gate width and bit-width (`self.gate_bit = 2`, `QuantConv2d(inplanes, 32, …)`). */
export const GATE_HIDDEN = 32;
export const GATE_BITS = 2;

/** Per family: the dynamic ratio, the activation percentile M/100, the weight bounds. */
export const SETTINGS: Readonly<
  Record<Method.Family, { ratio: number; percentile: number; weights: "p99" | "minmax" }>
> = {
  edsr: { ratio: 0.3, percentile: 0.99, weights: "p99" },
  rdn: { ratio: 0.5, percentile: 0.95, weights: "minmax" },
  srresnet: { ratio: 0.1, percentile: 0.99, weights: "p99" },
  // Not in DDTB's code: EDSR's settings.
  swinir: { ratio: 0.3, percentile: 0.99, weights: "p99" },
};

/** A guard so that `u > l` whatever the learned bounds do (not in the official code). */
const EPSILON = Quantizer.EPSILON;

const ops = new Map<number, (x: tf.Tensor, l: tf.Scalar, u: tf.Scalar) => tf.Tensor>();

/**
 * DDTB's fake quantization of `x` over `[l, u]` (see the module comment), with autodiff's
 * gradients of that expression under straight-through rounds: `∂q/∂x = 1` inside `[l, u]`, 0
 * outside; `∂q/∂u = [x > u] + (q − a)/(u − l)`, `∂q/∂l = [x < l] + (a − q)/(u − l)` with
 * `a = clip(x, l, u)` (zp's rounding cancels out). tests/methods.test.ts checks both against a
 * float64 port and finite differences.
 */
export function quant(x: tf.Tensor, lower: tf.Scalar, upper: tf.Scalar, bits: number): tf.Tensor {
  let op = ops.get(bits);
  if (!op) {
    const n = 2 ** bits - 1;
    const half = 2 ** (bits - 1);
    const f = tf.customGrad(
      ((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
        const [x, l, u, save] = args as [tf.Tensor, tf.Scalar, tf.Scalar, tf.GradSaveFunc];
        const a = tf.minimum(tf.maximum(x, l), u);
        const sf = tf.div(n, tf.sub(u, l));
        const zp = tf.add(tf.round(tf.mul(sf, l)), half);
        const q = tf.div(tf.add(tf.round(tf.sub(tf.mul(sf, a), zp)), zp), sf);
        save([x, l, u, a, q]);
        return {
          value: q,
          gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
            const [sx, sl, su, sa, sq] = saved;
            const width = tf.sub(su, sl);
            const inside = tf.logicalAnd(tf.greaterEqual(sx, sl), tf.lessEqual(sx, su));
            const zero = tf.zerosLike(sx);
            const dx = tf.where(inside, dy, zero);
            const slope = tf.div(tf.sub(sq, sa), width); // (q − a)/(u − l)
            const above = tf.cast(tf.greater(sx, su), "float32");
            const below = tf.cast(tf.less(sx, sl), "float32");
            const du = tf.sum(tf.mul(dy, tf.add(above, slope)));
            const dl = tf.sum(tf.mul(dy, tf.sub(below, slope)));
            return [dx, dl, du];
          },
        };
      }) as Parameters<typeof tf.customGrad>[0],
    );
    op = (x, l, u) => f(x, l, u);
    ops.set(bits, op);
  }
  return op(x, lower, upper);
}

const checkBits = (bits: number) => {
  if (!(Number.isInteger(bits) && ((bits >= 1 && bits <= 8) || bits === 32))) {
    throw new RangeError(`ddtb: bits must be an integer in 1–8 or 32, got ${bits}`);
  }
};

/** DDTB weights: bounds at the 1st/99th percentiles (`asym99`) or min/max (`asym`), fixed. */
export function weight(
  bits: number,
  bounds: "p99" | "minmax",
): Quantizer.Quantizer<Record<never, never>> {
  checkBits(bits);
  const stat = Ste.constant((w) =>
    bounds === "p99"
      ? tf.stack([Range.quantile(w, 0.01), Range.quantile(w, 0.99)])
      : tf.stack([tf.min(w), tf.max(w)])
  );
  const range = (w: tf.Tensor): Range.Bounds => {
    const lu = stat(w);
    return {
      lower: lu.slice([0], [1]).reshape([]) as tf.Scalar,
      upper: lu.slice([1], [1]).reshape([]) as tf.Scalar,
    };
  };
  return {
    bits,
    symmetric: false,
    name: `ddtb${bits}·${bounds === "p99" ? "asym99" : "asym"}`,
    dynamic: true,
    init: () => ({}),
    defaults: () => ({}),
    bounds: (_p, w) => range(w),
    apply: (_p, w) => {
      if (bits === 32) return w;
      const b = range(w);
      return quant(w, b.lower, b.upper, bits);
    },
  };
}

/** The gate's parameters: two 1×1 convs (as matrices) and a batch norm. */
export type GateParams = {
  readonly w1: tf.Tensor2D;
  readonly w2: tf.Tensor2D;
  readonly bn: Params;
};

/** Parameters of {@link activation}: the two bounds and, on a dynamic layer, the gate. */
export type ActivationParams = {
  readonly lower: tf.Scalar;
  readonly upper: tf.Scalar;
  readonly gate?: GateParams;
};

/**
 * `quant_activation` (the gate's): min/max of the detached input, DDTB's grid, no gradient.
 * NOTE: the official module quantizes `input.detach()`, so nothing before it is trained by the
 * gradient that reaches it.
 */
export function gateActivation(x: tf.Tensor, bits = GATE_BITS): tf.Tensor {
  const d = Ste.stopGradient(x);
  return Ste.stopGradient(quant(d, tf.min(d) as tf.Scalar, tf.max(d) as tf.Scalar, bits));
}

/** The gate's 2-bit PAMS-style weight (`QuantConv2d` → `quant_weight`), identity gradient. */
const gateWeight = (w: tf.Tensor) =>
  Pams.zeroLevelQuant(
    w,
    tf.add(Ste.stopGradient(tf.max(tf.abs(w))), Pams.MAX_EPSILON) as tf.Scalar,
    GATE_BITS,
  );

const gateNorm = Nn.batchNorm({ channels: GATE_HIDDEN });

/**
 * The gate's logits `[N, 2]` for an NHWC input: `conv₂(act(relu(bn(conv₁(act(avgpool(x)))))))`
 * (`atten_c`; `avg_pool(x.detach())`). `ctx` is the wrapped layer's (the BN reports its running
 * statistics under `<path>.aq.gate.bn`).
 */
export function gateLogits(g: GateParams, x: tf.Tensor, ctx: Nn.Ctx): tf.Tensor2D {
  const context = tf.mean(Ste.stopGradient(x), [1, 2]) as tf.Tensor2D; // [N, C]
  const h = tf.matMul(gateActivation(context) as tf.Tensor2D, gateWeight(g.w1) as tf.Tensor2D);
  const bnCtx = Nn.childContext(Nn.childContext(Nn.childContext(ctx, "aq"), "gate"), "bn");
  const normed = gateNorm.apply(g.bn, h, bnCtx);
  const a = gateActivation(tf.relu(normed));
  return tf.matMul(a as tf.Tensor2D, gateWeight(g.w2) as tf.Tensor2D);
}

/** PyTorch's default conv init, `kaiming_uniform_(a=√5)`: uniform ±1/√fan_in. */
function defaultConv(key: number, fanIn: number, out: number): tf.Tensor2D {
  const bound = 1 / Math.sqrt(fanIn);
  return tf.tensor2d(Rng.uniform(key, fanIn * out, -bound, bound), [fanIn, out]);
}

/** Options of {@link activation}. */
export interface ActivationOptions {
  /** The percentile M/100 of the initial bounds (0.99, RDN 0.95). */
  readonly percentile: number;
  /** Give this quantizer a gate for an input of `channels` channels, used from `from` on. */
  readonly gate?: { readonly channels: number; readonly from: number };
}

/** DDTB's activation quantizer (`DDTB_quant_act_asym_dynamic_quantized`). */
export function activation(
  bits: number,
  o: ActivationOptions,
): Quantizer.Quantizer<ActivationParams> {
  checkBits(bits);
  const j = o.percentile;
  const base = Range.learnable(Range.percentile(j));
  const g = o.gate;
  const guard = (l: tf.Scalar, u: tf.Scalar) =>
    [l, tf.maximum(u, tf.add(l, EPSILON)) as tf.Scalar] as const;
  const gateOn = (ctx: Nn.Ctx | undefined) => g !== undefined && (ctx?.step ?? 0) >= g.from;
  return {
    bits,
    symmetric: false,
    name: `ddtb${bits}·p${Math.round(j * 100)}${g ? `·gate(${g.channels})` : ""}`,
    dynamic: g !== undefined,
    init: (sample) => base.init(sample, false) as ActivationParams,
    defaults: (key = 0) => ({
      lower: tf.scalar(-10), // `reset_parameter`: alpha_lower −10, alpha_upper 10
      upper: tf.scalar(10),
      ...(g && bits < 32
        ? {
          gate: {
            w1: defaultConv(Rng.fold(key, "w1"), g.channels, GATE_HIDDEN),
            w2: defaultConv(Rng.fold(key, "w2"), GATE_HIDDEN, 2),
            bn: gateNorm.init(0),
          },
        }
        : {}),
    }),
    bounds: (p) => {
      const [l, u] = guard(p.lower, p.upper);
      return { lower: l, upper: u };
    },
    cost: ({ elements, channels }) => {
      if (!g || bits >= 32) return { storage: 2, flops: 0, bitops: 0 };
      // Stored: the bounds, the gate's convs at 2 bits, its BN (γ, β, running mean and var).
      const weights = channels * GATE_HIDDEN + GATE_HIDDEN * 2;
      // Per image: the average pool (one add per input value, at 32 bits), the two convs at
      // 2×2 bits, BN and ReLU and the sigmoids (a few FP32 operations per value), the bounds.
      const convFlops = 2 * weights;
      const fpFlops = elements + 4 * GATE_HIDDEN + 4 * 2 + 2;
      return {
        storage: 2 + (weights * GATE_BITS) / 32 + 4 * GATE_HIDDEN,
        flops: convFlops + fpFlops,
        bitops: convFlops * GATE_BITS * GATE_BITS + fpFlops * 32 * 32,
      };
    },
    apply: (p, x, ctx) => {
      if (bits === 32) return x;
      const [l, u] = guard(p.lower, p.upper);
      if (!p.gate) return quant(x, l, u, bits);
      const logits = gateLogits(p.gate, x, ctx ?? Nn.context("eval"));
      if (!gateOn(ctx)) {
        // First stage: static bounds; the logits go to the MSE regulariser.
        if (ctx?.mode === "train") ctx.observe?.(`${ctx.path}.aq.gate`, logits);
        return quant(x, l, u, bits);
      }
      const scales = tf.unstack(tf.mul(tf.sigmoid(logits), 2)); // per image (s_u, s_l)
      const images = tf.split(x, x.shape[0]!, 0);
      return tf.concat(
        images.map((xi, n) => {
          const su = scales[n].slice([0], [1]).reshape([]) as tf.Scalar;
          const sl = scales[n].slice([1], [1]).reshape([]) as tf.Scalar;
          const [li, ui] = guard(tf.mul(sl, l) as tf.Scalar, tf.mul(su, u) as tf.Scalar);
          return quant(xi, li, ui, bits);
        }),
        0,
      );
    },
  };
}

/**
 * The gate regulariser of the first stage: the mean over gates of `mean(logits²)`
 * (`F.mse_loss(output, zeros)` averaged over the hooked `atten_c` modules).
 */
export const gateTerm = (from: number): Method.Term => ({
  name: "gate",
  weight: (step) => (step < from ? 1 : 0),
  loss: (observed) => {
    const gates = [...observed].filter(([p]) => p.endsWith(".aq.gate")).map(([, t]) => t);
    if (gates.length === 0) return tf.scalar(0);
    return tf.div(tf.addN(gates.map((t) => tf.mean(tf.square(t)))), gates.length) as tf.Scalar;
  },
});

/** The step from which the gates are used (`GATE_FROM` of the run's steps). */
export const gateStep = (steps: number) => Math.round(steps * GATE_FROM);

/** The activation rules with DDTB's quantizers, gated on the layers in `dynamic`. */
function rules(s: Method.SchemeInput, dynamic: ReadonlySet<string>): ReadonlyArray<Quant.Rule> {
  const set = SETTINGS[s.family];
  const input = activation(s.abits, { percentile: set.percentile });
  const statics = Placement.dataPath(s.family, { weight: weight(s.wbits, set.weights), input });
  if (dynamic.size === 0) return statics;
  // A gated rule per dynamic layer (first match wins), sized to that layer's input.
  const channels = new Map<string, number>();
  for (const { path, layer } of Quant.layers(Quant.quantize(s.model, statics))) {
    if (layer.spec.input && dynamic.has(path)) channels.set(path, layer.inChannels as number);
  }
  const from = gateStep(s.steps);
  const gated: Quant.Rule[] = [...dynamic].map((path) => {
    const c = channels.get(path);
    if (c === undefined) throw new Error(`ddtb: "${path}" is not an activation quantizer`);
    const rule = statics.find((r) => r.input && Tree.matches(r.match, path))!;
    return {
      ...rule,
      match: path,
      input: activation(s.abits, { percentile: set.percentile, gate: { channels: c, from } }),
    };
  });
  return [...gated, ...statics];
}

/** `np.var`: the population variance. */
const variance = (v: ReadonlyArray<number>) => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  return v.reduce((a, b) => a + (b - m) ** 2, 0) / v.length;
};

/**
 * The dynamic layers: over the calibration batches, each activation quantizer's FP input max
 * and min per batch; the `int(ratio·L)` with the largest `var(max) + var(min)` (ties by forward
 * order), returned in forward order. (The official statistics pass is a whole epoch of 1000
 * batches; we use the recipe's calibration batches.)
 */
export const selectDynamic = (
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Training,
  opts: { readonly ratio: number; readonly batches: number; readonly batch: Data.BatchOptions },
): Effect.Effect<ReadonlyArray<string>> =>
  Effect.gen(function* () {
    const paths = Quant.layers(model).filter((l) => l.layer.spec.input).map((l) => l.path);
    const stats = new Map(paths.map((p) => [p, { max: [] as number[], min: [] as number[] }]));
    yield* Data.stream(ds, Calibration.sampling(opts.batch), 0, opts.batches).pipe(
      Stream.runForEach((b) =>
        Effect.promise(async () => {
          const taps: Array<{ path: string; range: tf.Tensor }> = [];
          tf.tidy(() => {
            const ctx = Nn.context("calibrate", {
              tap: (t) => {
                if (stats.has(t.path)) {
                  taps.push({ path: t.path, range: tf.keep(tf.stack([tf.max(t.x), tf.min(t.x)])) });
                }
              },
            });
            model.apply(params, Data.tensors(b).lr, ctx);
          });
          for (const t of taps) {
            const [mx, mn] = await t.range.data();
            t.range.dispose();
            stats.get(t.path)!.max.push(mx);
            stats.get(t.path)!.min.push(mn);
          }
        })
      ),
    );
    const score = (p: string) => variance(stats.get(p)!.max) + variance(stats.get(p)!.min);
    const k = Math.floor(opts.ratio * paths.length);
    const ranked = paths.map((p, i) => ({ p, i, s: score(p) })).sort((a, b) =>
      b.s - a.s || a.i - b.i
    );
    const chosen = new Set(ranked.slice(0, k).map((r) => r.p));
    return paths.filter((p) => chosen.has(p));
  });

/** The DDTB method; `dynamic` fixes the gated layers (else {@link selectDynamic} picks them). */
export function method(o: { readonly dynamic?: ReadonlyArray<string> } = {}): Method.Method {
  const dynamicOf = (d: Method.Decisions) =>
    new Set((o.dynamic ?? (d.dynamic as ReadonlyArray<string> | undefined) ?? []) as string[]);
  return {
    name: "ddtb",
    label: "DDTB (dual bounds, per-image gate, SKT)",
    options: {},
    scheme: (s) => rules(s, dynamicOf(s.decisions)),
    merge: (r) => Cooperative.reconstructionOnly({ lambdaR: r.lambdaR }),
    optimizer: (t) => Odm.optimizerBy(t, BOUNDS_LR, (p) => /\.aq\.(lower|upper)$/.test(p)),
    distill: { weight: SKT_WEIGHT, at: "upsample" },
    terms: (s) => [gateTerm(gateStep(s.steps))],
    // "only calibration once": the first batch.
    calibrationBatches: () => 1,
    decide: (d) =>
      o.dynamic ? Effect.succeed({ dynamic: [...o.dynamic] }) : Effect.gen(function* () {
        const statics = Quant.quantize(d.model, rules({ ...d, decisions: {} }, new Set()));
        const dynamic = yield* selectDynamic(statics, d.params, d.train, {
          ratio: SETTINGS[d.family].ratio,
          batches: d.batches,
          batch: d.batch,
        });
        return { dynamic };
      }),
  };
}

/** DDTB with its gated layers picked from the training data. */
export const ddtb: Method.Method = method();
