/**
 * No leaks: 20 forward+backward passes of a quantized EDSR leave the tensor count unchanged, and
 * 300 training steps leave the resident memory flat after warm-up (measured in a process of their
 * own, tests/_leak_steps.ts: RSS is the whole process's, and the tests before this one in the
 * suite's process leave native memory of their own behind).
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess } from "@std/assert";
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
          tf.mul(1e-5, tf.addN(taps.map((t) => tf.norm(tf.sub(t.x, t.q))))),
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

// Issue 12: the default job's resident memory grew by ~6.5 MB per step, without end, while
// tf.memory() stayed flat (native memory of the WebGPU implementation: a texture view per
// dispatch, and on lavapipe a conv weight-gradient kernel whose pixel loop read its bound from
// the uniforms). The bound: 300 ODM steps may grow by at most 40 MB after 50 warm-up steps.
Deno.test("300 ODM training steps: resident memory after warm-up stays within 40 MB", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${root}deno.json`, `${root}tests/_leak_steps.ts`],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout);
  assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
  const { rss50, rss300 } = JSON.parse(out.trim().split("\n").pop()!);
  console.log(`RSS at step 50: ${rss50.toFixed(0)} MiB, at step 300: ${rss300.toFixed(0)} MiB`);
  assertLess(rss300 - rss50, 40, `grew ${(rss300 - rss50).toFixed(0)} MiB in 250 steps`);
});
