/** The cooperative merge (Eq. 6) against hand computations, and who receives g_M. */
import * as tf from "@tensorflow/tfjs";
import { assertAlmostEquals, assertEquals } from "@std/assert";
import * as Cooperative from "../lib/Cooperative.ts";
import { values } from "./_setup.ts";

const flat = (entries: Record<string, number[]>) =>
  new Map(Object.entries(entries).map(([k, v]) => [k, tf.tensor1d(v)] as const));

Deno.test("cooperative merge: identical → weight 1, opposite → 0, orthogonal → 1/2 (hand computed)", async () => {
  const lambdaM = 0.5;
  const merge = Cooperative.cooperative({ lambdaR: 1, lambdaM });
  const gR = flat({ same: [1, 2], opposite: [1, 2], orthogonal: [1, 0] });
  const gM = flat({ same: [2, 4], opposite: [-3, -6], orthogonal: [0, 5] });
  const out = merge.merge(gR, gM);
  // g = g_R + λ_M · (cos + 1)/2 · g_M
  assertEquals(await values(out.get("same")!), [1 + 0.5 * 1 * 2, 2 + 0.5 * 1 * 4]);
  assertEquals(await values(out.get("opposite")!), [1, 2]);
  assertEquals(await values(out.get("orthogonal")!), [1, 0 + 0.5 * 0.5 * 5]);
  tf.dispose([...gR.values(), ...gM.values(), ...out.values()]);
});

Deno.test("global cosine: one similarity over all tensors", async () => {
  const merge = Cooperative.cooperative({ lambdaM: 1, granularity: "global" });
  // Over both tensors: g_R = (1, 0 | 0, 1), g_M = (1, 0 | 0, −1) → cos = 0 → sim 1/2.
  const gR = flat({ a: [1, 0], b: [0, 1] });
  const gM = flat({ a: [1, 0], b: [0, -1] });
  const out = merge.merge(gR, gM);
  assertEquals(await values(out.get("a")!), [1.5, 0]);
  assertEquals(await values(out.get("b")!), [0, 0.5]);
  tf.dispose([...gR.values(), ...gM.values(), ...out.values()]);
});

Deno.test("naive and reconstruction-only merges", async () => {
  const gR = flat({ w: [1, -1] });
  const gM = flat({ w: [-4, 2] });
  const n = Cooperative.naive({ lambdaM: 0.25 }).merge(gR, gM);
  assertEquals(await values(n.get("w")!), [0, -0.5]);
  const r = Cooperative.reconstructionOnly({ lambdaR: 2 }).merge(gR, gM);
  assertEquals(await values(r.get("w")!), [2, -2]);
  tf.dispose([...gR.values(), ...gM.values(), ...n.values(), ...r.values()]);
});

Deno.test("combine: quantizer parameters never receive g_M; statistics are hand-checkable", async () => {
  const isQuant = (p: string) => p.includes(".aq.") || p.includes(".wq.");
  const combine = Cooperative.combine(Cooperative.cooperative({ lambdaM: 10 }), {
    reconstructionOnly: isQuant,
  });
  const gR = flat({ "c.weight": [1, 2, -1], "c.aq.upper": [0.5], "c.wq.gamma": [-2] });
  const gM = flat({ "c.weight": [1, 2, 1], "c.aq.upper": [100], "c.wq.gamma": [100] });
  const { grads, stats } = combine(gR, gM);
  assertEquals(await values(grads.get("c.aq.upper")!), [0.5]);
  assertEquals(await values(grads.get("c.wq.gamma")!), [-2]);
  // cos(g_R, g_M) for the weight = (1 + 4 − 1)/(√6·√6) = 2/3; one of three entries conflicts.
  assertAlmostEquals((await values(stats.cosine))[0], 2 / 3, 1e-6);
  assertAlmostEquals((await values(stats.conflict))[0], 1 / 3, 1e-6);
  const sim = (2 / 3 + 1) / 2;
  const w = await values(grads.get("c.weight")!);
  [1 + 10 * sim, 2 + 20 * sim, -1 + 10 * sim].forEach((v, i) => assertAlmostEquals(w[i], v, 1e-5));
  tf.dispose([...gR.values(), ...gM.values(), ...grads.values(), stats.cosine, stats.conflict]);
});

Deno.test("a tensor whose g_M is zero gets λ_R g_R and does not count in the mean cosine", async () => {
  const combine = Cooperative.combine(Cooperative.cooperative({ lambdaM: 1 }), {
    reconstructionOnly: () => false,
  });
  const gR = flat({ early: [1, 1], late: [3, -3] });
  const gM = flat({ early: [2, 2], late: [0, 0] });
  const { grads, stats } = combine(gR, gM);
  assertEquals(await values(grads.get("late")!), [3, -3]);
  assertAlmostEquals((await values(stats.cosine))[0], 1, 1e-6);
  assertEquals((await values(stats.conflict))[0], 0);
  tf.dispose([...gR.values(), ...gM.values(), ...grads.values(), stats.cosine, stats.conflict]);
});

Deno.test("conflict (Fig. 2c) counts only entries where both streams are non-zero", async () => {
  const combine = Cooperative.combine(Cooperative.cooperative({ lambdaM: 1 }), {
    reconstructionOnly: () => false,
  });
  // Entries with both non-zero: (1, −1), (2, 3), (−1, −2), (1e-30, −1e-30) → 2 of 4 conflict; the
  // last pair's product underflows float32 and must still count. Entries with a zero: 4.
  const gR = flat({ body: [1, 2, -1, 1e-30, 0, 5], tail: [7, -7] });
  const gM = flat({ body: [-1, 3, -2, -1e-30, 4, 0], tail: [0, 0] });
  const { grads, stats } = combine(gR, gM);
  assertAlmostEquals((await values(stats.conflict))[0], 2 / 4, 1e-6);
  tf.dispose([...gR.values(), ...gM.values(), ...grads.values(), stats.cosine, stats.conflict]);
});

Deno.test("the fused statistics equal the composite ones (random streams, zeros, a g_M-free tensor)", async () => {
  const rnd = (n: number, seed: number) => {
    let s = seed;
    return Array.from({ length: n }, () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return s / 2 ** 31 - 1;
    });
  };
  const r1 = rnd(300, 1), m1 = rnd(300, 2).map((v, i) => (i % 7 === 0 ? 0 : v));
  const gR = flat({ a: r1, b: rnd(37, 3), c: [0, 1, -2, 3], d: rnd(16, 4) });
  const gM = flat({ a: m1, b: rnd(37, 5), c: [1, -1, 0, -3], d: new Array(16).fill(0) });
  const merged = Cooperative.cooperative({ lambdaR: 0.9, lambdaM: 0.3 }).merge(gR, gM);
  const fused = Cooperative.fusedStatistics(gR, gM, merged, 0.9);
  const composite = {
    ...Cooperative.statistics(gR, gM),
    ratio: Cooperative.ratio(gR, merged, 0.9),
  };
  for (const k of ["cosine", "conflict", "ratio"] as const) {
    const [got] = await values(fused[k]), [want] = await values(composite[k]);
    assertAlmostEquals(got, want, 1e-5 * Math.max(1, Math.abs(want)), k);
  }
  tf.dispose([...gR.values(), ...gM.values(), ...merged.values(), ...Object.values(fused)]);
  tf.dispose(Object.values(composite));
});
