/** No tensor leaks: 20 forward+backward passes of a quantized EDSR leave the tensor count unchanged. */
import * as tf from "@tensorflow/tfjs";
import { addN } from "../lib/internal/ops.ts";
import { assert, assertEquals } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import { edsr, placement } from "../models/edsr.ts";
import { scalar } from "./_setup.ts";

Deno.test("20 forward+backward passes of a W2A2 EDSR leave tf.memory().numTensors unchanged", async () => {
  const model = Quant.quantize(
    edsr({ upscale: 2, numFeat: 8, numBlock: 2 }),
    placement({
      weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
      input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
    }),
  );
  let params = Tree.flatten(model.init(1));
  const lr = tf.tensor1d([1e-3]).reshape([]);
  const lrBatch = tf.randomUniform([2, 6, 6, 3], 0, 255, "float32", 1);
  const hrBatch = tf.randomUniform([2, 12, 12, 3], 0, 255, "float32", 2);
  const counts: number[] = [];
  for (let step = 0; step < 20; step++) {
    const paths = [...params.keys()];
    const next = tf.tidy(() => {
      const { value, grads } = tf.valueAndGrads((...leaves: tf.Tensor[]) => {
        const p = Tree.unflatten(paths.map((k, i) => [k, leaves[i]] as const));
        const taps: Nn.Tap[] = [];
        const sr = model.apply(p, lrBatch, Nn.context("train", { step, tap: (t) => taps.push(t) }));
        return tf.add(
          tf.mean(tf.abs(tf.sub(sr, hrBatch))),
          tf.mul(1e-5, addN(taps.map((t) => tf.norm(tf.sub(t.x, t.q))))),
        ) as tf.Scalar;
      })([...params.values()]);
      return {
        loss: value,
        leaves: [...params.values()].map((t, i) => tf.sub(t, tf.mul(lr, grads[i]))),
      };
    });
    assert(Number.isFinite(await scalar(next.loss)));
    next.loss.dispose();
    for (const t of params.values()) t.dispose();
    params = new Map([...params.keys()].map((k, i) => [k, next.leaves[i]]));
    counts.push(tf.memory().numTensors);
  }
  assertEquals(new Set(counts).size, 1, `tensor counts per step: ${counts}`);
  for (const t of params.values()) t.dispose();
  tf.dispose([lr, lrBatch, hrBatch]);
});
