/** Optimizers against float64 hand computations of PyTorch's Adam and the step schedule. */
import * as tf from "@tensorflow/tfjs";
import { assertAlmostEquals, assertEquals } from "@std/assert";
import * as Optim from "../lib/Optim.ts";
import { values } from "./_setup.ts";

/** PyTorch Adam on a scalar, float64. */
function refAdam(
  grads: number[],
  lr: (t: number) => number,
  b1 = 0.9,
  b2 = 0.999,
  eps = 1e-8,
): number[] {
  let m = 0, v = 0, x = 0;
  const xs: number[] = [];
  grads.forEach((g, i) => {
    const t = i + 1;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    x -= (lr(i) * (m / (1 - b1 ** t))) / (Math.sqrt(v / (1 - b2 ** t)) + eps);
    xs.push(x);
  });
  return xs;
}

Deno.test("adam matches PyTorch's update over several steps, with parameter groups and step decay", async () => {
  const grads = [0.3, -1.2, 0.7, 2.0, -0.1, 0.4];
  const schedW = Optim.stepDecay(1e-2, 2);
  const schedQ = Optim.stepDecay(1e-1, 3);
  const opt = Optim.partition(
    { weights: Optim.adam({ lr: schedW }), quant: Optim.adam({ lr: schedQ }) },
    (p) => (p.endsWith("gamma") ? "quant" : "weights"),
  );
  let params = new Map<string, tf.Tensor>([["w", tf.scalar(0)], ["wq.gamma", tf.scalar(0)]]);
  let state = opt.init(params);
  const got: Array<[number, number]> = [];
  for (const [step, g] of grads.entries()) {
    const gs = new Map([["w", tf.scalar(g)], ["wq.gamma", tf.scalar(-g)]]);
    const [u, s] = opt.update(gs, state, params, step);
    const next = Optim.apply(params, u);
    tf.dispose([...gs.values(), ...u.values(), ...state.values(), ...params.values()]);
    params = next;
    state = s;
    got.push([(await values(params.get("w")!))[0], (await values(params.get("wq.gamma")!))[0]]);
  }
  const refW = refAdam(grads, schedW);
  const refQ = refAdam(grads.map((g) => -g), schedQ);
  got.forEach(([w, q], i) => {
    assertAlmostEquals(w, refW[i], 1e-6, `w step ${i}`);
    assertAlmostEquals(q, refQ[i], 1e-5, `gamma step ${i}`);
  });
  assertEquals([...state.keys()].sort(), [
    "quant.m.wq.gamma",
    "quant.v.wq.gamma",
    "weights.m.w",
    "weights.v.w",
  ]);
  tf.dispose([...params.values(), ...state.values()]);
});

Deno.test("stepDecay halves every `every` steps", () => {
  const s = Optim.stepDecay(1e-4, 15000);
  assertEquals([s(0), s(14999), s(15000), s(45000)], [1e-4, 1e-4, 5e-5, 1.25e-5]);
});

Deno.test("chain applies transforms in order", async () => {
  const opt = Optim.chain(Optim.sgd(0.5), Optim.scale(-2));
  const p = new Map([["x", tf.scalar(1)]]);
  const [u] = opt.update(new Map([["x", tf.scalar(3)]]), opt.init(p), p, 0);
  assertEquals((await values(u.get("x")!))[0], 3);
});
