/**
 * The integer conv kernels (lib/internal/kernels/intconv.ts, through lib/Engine.ts) against
 * two independent oracles: the fake-quant float path (`Quant.wrap` around `Nn.conv2d`: Eq. 1
 * on the input and the weights, then our float conv) and a scalar float64 reference with
 * exact integer sums. Odd shapes (channels not a multiple of the packing, widths not a multiple
 * of the tile), 3×3 and 1×1, 2, 3 and 4 bits and mixed widths, inputs beyond the range and on
 * rounding ties; the u32 packing argument checked on its worst case.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertLess } from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as Engine from "../lib/Engine.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Int from "../lib/internal/kernels/intconv.ts";

const info = await Backend.initialize({ log: false });
Kernels.install(info);

/** Deterministic uniform values in [lo, hi). */
function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = lo + (hi - lo) * (s / 2 ** 32);
  }
  return out;
}

/** `max|a − b| / max|b|`. */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let d = 0, m = 1e-12;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

Deno.test("layoutOf: 4 codes a word up to 3×3 bits, 2 at 4 bits, none past 5", () => {
  assertEquals(Int.layoutOf(2, 2), { n: 4, s: 8, T: 7 });
  assertEquals(Int.layoutOf(3, 3), { n: 4, s: 8, T: 1 });
  assertEquals(Int.layoutOf(4, 4), { n: 2, s: 16, T: 145 });
  assertEquals(Int.layoutOf(2, 4)?.n, 4);
  assertEquals(Int.layoutOf(8, 8), undefined);
});

Deno.test("the packed-field product is the exact dot product (worst case, u32 wrap)", () => {
  for (const [wb, ab] of [[1, 1], [2, 2], [2, 3], [3, 3], [2, 4], [3, 4], [4, 4], [5, 5]]) {
    const l = Int.layoutOf(wb, ab)!;
    const ka = 2 ** ab - 1, kw = 2 ** wb - 1;
    // All codes at their maximum, and a pattern, summed over T products: the largest fields.
    for (
      const pattern of [(_i: number) => [ka, kw], (i: number) => [i % (ka + 1), (3 * i) % (kw + 1)]]
    ) {
      let acc = 0, exact = 0;
      for (let t = 0; t < l.T; t++) {
        let A = 0, K = 0;
        for (let f = 0; f < l.n; f++) {
          const [a] = pattern(t * l.n + f);
          const [, k] = pattern(t * l.n + (l.n - 1 - f));
          A += a * 2 ** (l.s * f);
          K += k * 2 ** (l.s * f);
        }
        for (let f = 0; f < l.n; f++) exact += pattern(t * l.n + f)[0] * pattern(t * l.n + f)[1];
        acc = (acc + Math.imul(A >>> 0, K >>> 0)) >>> 0;
      }
      assertEquals(acc >>> (l.s * (l.n - 1)), exact, `W${wb}A${ab}`);
    }
  }
});

interface Case {
  readonly x: [number, number, number, number];
  readonly k: number;
  readonly o: number;
  readonly wbits: number;
  readonly abits: number;
  readonly bias?: boolean;
}

const CASES: Case[] = [
  { x: [1, 7, 9, 5], k: 3, o: 6, wbits: 2, abits: 2 },
  { x: [2, 5, 11, 19], k: 3, o: 9, wbits: 3, abits: 3 },
  { x: [1, 6, 5, 7], k: 3, o: 5, wbits: 4, abits: 4, bias: false },
  { x: [1, 5, 7, 13], k: 1, o: 7, wbits: 2, abits: 2 },
  { x: [1, 3, 6, 9], k: 1, o: 4, wbits: 4, abits: 4 },
  { x: [1, 4, 10, 64], k: 3, o: 64, wbits: 2, abits: 2 },
  { x: [1, 4, 9, 64], k: 3, o: 64, wbits: 4, abits: 4 },
  { x: [1, 5, 6, 11], k: 3, o: 6, wbits: 2, abits: 4 },
  { x: [1, 5, 6, 11], k: 3, o: 6, wbits: 3, abits: 2 },
];

for (const c of CASES) {
  const name = `int conv W${c.wbits}A${c.abits} ${c.k}×${c.k} [${c.x}] → ${c.o}` +
    (c.bias === false ? " (no bias)" : "");
  Deno.test(`${name}: equals the fake-quant float path and the scalar reference`, async () => {
    const [n, h, w, cin] = c.x;
    const layer = Quant.wrap({
      weight: Quantizer.symmetric({ bits: c.wbits, range: Range.learnable() }),
      input: Quantizer.asymmetric({ bits: c.abits, range: Range.learnable() }),
    })(Nn.conv2d({ in: cin, out: c.o, kernel: c.k, bias: c.bias ?? true }));
    // float32 bounds, as the quantizer parameters hold them (the ties below depend on it).
    const la = Math.fround(-0.3), ua = Math.fround(1.7), uw = Math.fround(0.3);
    // Inputs beyond both bounds, and some exactly on the rounding ties of the activation grid.
    const xs = uniform(n * h * w * cin, 11 + cin, -0.8, 2.2);
    const sa = Math.fround(Math.fround(ua - la) / (2 ** c.abits - 1));
    for (let i = 0; i < xs.length; i += 7) xs[i] = Math.fround(la + (((i / 7) % 3) + 0.5) * sa);
    const params = {
      weight: tf.tensor4d(uniform(c.k * c.k * cin * c.o, 5 + c.o, -0.4, 0.4), [
        c.k,
        c.k,
        cin,
        c.o,
      ]),
      ...(c.bias === false ? {} : { bias: tf.tensor1d(uniform(c.o, 3, -0.5, 0.5)) }),
      wq: { upper: tf.scalar(uw) },
      aq: { lower: tf.scalar(la), upper: tf.scalar(ua) },
    };
    const x = tf.tensor4d(xs, c.x);
    const before = tf.memory().numTensors;
    const float = tf.tidy(() => layer.apply(params, x, Nn.context("eval")));
    const engine = await Engine.prepare({ model: layer, params }, { kind: "int" });
    assertEquals(engine.plan.map((p) => p.engine), ["int"]);
    const int = tf.tidy(() => engine.model.apply(params, x, Nn.context("eval")));
    assertEquals(int.shape, float.shape);
    const yi = await int.data(), yf = await float.data();
    // The scalar oracle, from the same host data the engine packs.
    const W = await params.weight.data();
    const wgrid = { bits: c.wbits, lower: -uw, upper: uw };
    const codes = Uint8Array.from(W, (v) => Int.codeOf(v, wgrid));
    const yr = Int.reference(
      {
        k: c.k,
        cin,
        cout: c.o,
        codes,
        weight: wgrid,
        input: { bits: c.abits, lower: la, upper: ua },
        bias: c.bias === false
          ? new Float32Array(c.o)
          : Float32Array.from(await params.bias!.data()),
      },
      xs,
      c.x,
    );
    assertLess(relDiff(yi, yf), 1e-4, `${name}: int vs float path ${relDiff(yi, yf)}`);
    assertLess(relDiff(yr, yf), 1e-4, `${name}: reference vs float path ${relDiff(yr, yf)}`);
    assertLess(relDiff(yi, yr), 1e-5, `${name}: int vs reference ${relDiff(yi, yr)}`);
    tf.dispose([int, float]);
    assertEquals(tf.memory().numTensors, before, "tensors leaked");
    engine.dispose();
    tf.dispose([x, params.weight, params.wq.upper, params.aq.lower, params.aq.upper]);
    if (params.bias) params.bias.dispose();
  });
}

Deno.test("a layer the integer kernel cannot run stays on the float path, with the reason", async () => {
  const layer = Quant.wrap({
    weight: Quantizer.symmetric({ bits: 8, range: Range.learnable() }),
    input: Quantizer.asymmetric({ bits: 8, range: Range.learnable() }),
  })(Nn.conv2d({ in: 3, out: 4 }));
  const params = layer.init(1);
  const e = await Engine.prepare({ model: layer, params }, { kind: "int" });
  assertEquals(e.plan[0].engine, "float");
  assert(e.plan[0].reason?.includes("W8A8"), e.plan[0].reason);
  e.dispose();
});
