/**
 * The QatQuantile kernel against the `tf.topk`-based quantile it replaces, at the sizes the
 * project uses: a 3×3×64×64 weight (n = 36,864; p = 0.99 of |W| on every step) and a calibration
 * activation (n = 1,179,648). Each iteration queues K calls and syncs once at the end (one
 * read-back of all K results), so the GPU→CPU wait (~11 ms under Deno) is amortised; a table of
 * milliseconds per call is printed when the run ends.
 *
 *   XDG_RUNTIME_DIR=/tmp deno bench -A bench/quantile.bench.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Backend from "../lib/Backend.ts";
import { quantile } from "../lib/internal/quantile.ts";

const info = await Backend.initialize();

/** The previous implementation (lib/Range.ts before QatQuantile): top-k of the shorter tail. */
function topkQuantile(x: tf.Tensor, p: number): tf.Scalar {
  return tf.tidy(() => {
    const flat = x.reshape([-1]);
    const n = flat.size;
    const pos = p * (n - 1);
    const lo = Math.floor(pos);
    const hi = Math.min(lo + 1, n - 1);
    const frac = pos - lo;
    let vLo: tf.Tensor, vHi: tf.Tensor;
    if (p >= 0.5) {
      const { values } = tf.topk(flat, n - lo, true);
      vLo = values.slice([n - 1 - lo], [1]);
      vHi = values.slice([n - 1 - hi], [1]);
    } else {
      const { values } = tf.topk(flat.neg(), hi + 1, true);
      vLo = values.slice([lo], [1]).neg();
      vHi = values.slice([hi], [1]).neg();
    }
    return vLo.mul(1 - frac).add(vHi.mul(frac)).reshape([]) as tf.Scalar;
  });
}

const IMPLS = { ours: quantile, topk: topkQuantile } as const;

/** [n, p, |x| or x, calls per iteration for ours / topk, iterations for ours / topk]. */
const CASES = [
  { n: 36_864, p: 0.99, abs: true, calls: { ours: 50, topk: 3 }, iters: { ours: 10, topk: 3 } },
  { n: 1_179_648, p: 0.99, abs: true, calls: { ours: 10, topk: 1 }, iters: { ours: 5, topk: 2 } },
  { n: 1_179_648, p: 0.01, abs: false, calls: { ours: 10, topk: 1 }, iters: { ours: 5, topk: 2 } },
];

const perCall = new Map<string, number[]>();
const seen = new Set<string>();

for (const c of CASES) {
  const x = tf.tidy(() => {
    const r = tf.randomNormal([c.n], 0, 1, "float32", 7);
    return c.abs ? tf.abs(r) : r;
  });
  const group = `n=${c.n} p=${c.p}${c.abs ? " |x|" : ""}`;
  for (const impl of ["ours", "topk"] as const) {
    const f = IMPLS[impl];
    const calls = c.calls[impl];
    const key = `${group}  ${impl}`;
    // No bench groups: the two rows run different numbers of calls per iteration, so Deno's
    // "× faster" summary would mislead; compare the per-call table printed at the end.
    Deno.bench({
      name: `${group}: ${impl}, ${calls} calls + 1 sync`,
      n: c.iters[impl],
      warmup: 1,
      async fn(b) {
        b.start();
        const t0 = performance.now();
        const outs: tf.Tensor[] = [];
        for (let i = 0; i < calls; i++) outs.push(f(x, c.p));
        const all = tf.stack(outs);
        await all.data();
        const ms = (performance.now() - t0) / calls;
        b.end();
        tf.dispose([all, ...outs]);
        // The first (warm-up) iteration compiles pipelines: not recorded.
        if (seen.has(key)) perCall.set(key, [...(perCall.get(key) ?? []), ms]);
        seen.add(key);
      },
    });
  }
}

globalThis.addEventListener("unload", () => {
  if (perCall.size === 0) return;
  console.log(`\nms per call (${info.name}: ${info.adapter}), median over iterations:`);
  for (const [key, list] of perCall) {
    const s = [...list].sort((a, b) => a - b);
    const med = s[Math.floor(s.length / 2)];
    console.log(`  ${key.padEnd(34)} ${med.toFixed(2).padStart(9)} ms  (min ${s[0].toFixed(2)})`);
  }
});
