/**
 * Calibration: initial quantizer parameters from the full-precision model (SPEC §2).
 *
 * Every activation range starts as the mean, over the calibration batches, of the 1st and
 * 99th percentiles of the layer's input (or, for a quantizer with a `calibrationDecay` such as
 * PAMS's α, an exponential moving average from the first batch's value), recorded with the FP
 * model (the wrapped layers run full precision in `calibrate` mode and report their inputs). Weight quantizers start from
 * the current weights (γ = 1 for clip correction, `u = f(W)` for learnable ranges).
 * One batch is in memory at a time: each batch's statistics are reduced before the next.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Effect, Stream } from "effect";
import * as Data from "./Data.ts";
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";

/** Options of {@link calibrate}. */
export interface Options {
  /** Number of batches (SPEC §2 default: 100 patches, so 13 batches of 8). */
  readonly batches: number;
  /** Batch shape and seed; calibration draws from its own sub-stream of the seed. */
  readonly batch: Data.BatchOptions;
  /** Called after each batch. */
  readonly onBatch?: (i: number, n: number) => void;
}

/** The batches calibration draws: the training batch shape on its own sub-stream of the seed. */
export const sampling = (batch: Data.BatchOptions): Data.BatchOptions => ({
  ...batch,
  seed: batch.seed ^ 0x5eed_ca1b,
});

/**
 * The calibrated `wq`/`aq` parameters of every quantized layer (to merge into `params`).
 * Returns an empty tree when the model has no quantized layers.
 */
export const calibrate = (
  model: Nn.AnyLayer,
  params: Params,
  ds: Data.Training,
  opts: Options,
): Effect.Effect<Params> =>
  Effect.gen(function* () {
    const layers = Quant.layers(model);
    if (layers.length === 0) return {};
    // Quantizers that ask for an exponential moving average over the batches (PAMS) instead of
    // the mean, by parameter-path prefix.
    const decays = layers.flatMap(({ path, layer }) => {
      const d = layer.spec.input?.calibrationDecay;
      return d === undefined ? [] : [[`${path}.aq.`, d] as const];
    });
    const decayOf = (p: string) => decays.find(([prefix]) => p.startsWith(prefix))?.[1];
    const sums = yield* Data.stream(ds, sampling(opts.batch), 0, opts.batches).pipe(
      Stream.runFold(
        () => new Map<string, tf.Tensor>(),
        (acc, b) => {
          tf.tidy(() => {
            const inputs = new Map<string, tf.Tensor[]>();
            const ctx = Nn.context("calibrate", { tap: (t) => inputs.set(t.path, [t.x]) });
            const { lr } = Data.tensors(b);
            model.apply(params, lr, ctx);
            for (const [p, t] of Tree.flatten(Quant.calibrate(model, params, inputs))) {
              const prev = acc.get(p);
              const d = decayOf(p);
              const next = !prev
                ? t
                : d === undefined
                ? tf.add(prev, t)
                : tf.add(tf.mul(prev, d), tf.mul(t, 1 - d));
              acc.set(p, tf.keep(next));
              prev?.dispose();
            }
          });
          opts.onBatch?.(b.index, opts.batches);
          return acc;
        },
      ),
    );
    return Tree.unflatten([...sums].map(([p, t]) => {
      if (decayOf(p) !== undefined) return [p, t] as const;
      const mean = tf.div(t, opts.batches);
      t.dispose();
      return [p, mean] as const;
    }));
  });
