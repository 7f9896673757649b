/**
 * Quantizers against a scalar float64 reference of Eq. 1, and their STE gradients against
 * finite differences.
 *
 * Oracle for gradients: with a straight-through round, the gradient the quantizer defines is
 * the derivative of the same expression with the rounding residual `round(t) − t` held at its
 * value at the base point. `refFrozen` below is that function in float64; central finite
 * differences of it are compared with tfjs's gradients. Points within a small margin of a
 * rounding boundary or a clipping bound are avoided, where the residual or the active branch
 * of the clip changes.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Rng from "../lib/Rng.ts";
import { roundHalfEven, scalar, values } from "./_setup.ts";

/** Eq. 1 in float64. */
function ref(x: number, l: number, u: number, bits: number): number {
  const s = (u - l) / (2 ** bits - 1);
  const c = Math.min(Math.max(x, l), u);
  return roundHalfEven((c - l) / s) * s + l;
}

/** Eq. 1 with the rounding residual frozen (the STE surrogate), float64. */
function refFrozen(x: number, l: number, u: number, bits: number, residual: number): number {
  const s = (u - l) / (2 ** bits - 1);
  const c = Math.min(Math.max(x, l), u);
  return ((c - l) / s + residual) * s + l;
}

const residualAt = (x: number, l: number, u: number, bits: number) => {
  const s = (u - l) / (2 ** bits - 1);
  const t = (Math.min(Math.max(x, l), u) - l) / s;
  return roundHalfEven(t) - t;
};

Deno.test("fakeQuant equals Eq. 1 on level boundaries (half to even) and outside the range", async () => {
  for (let bits = 1; bits <= 8; bits++) {
    const n = 2 ** bits - 1;
    // Asymmetric [0, n]: s = 1 exactly, so k + 0.5 is exactly on a rounding boundary.
    // Symmetric [−n/2, n/2]: s = 1 exactly too.
    for (const [l, u] of [[0, n], [-n / 2, n / 2]]) {
      const xs: number[] = [l - 3.25, l - 0.5, l, u, u + 0.5, u + 7];
      for (let k = 0; k < Math.min(n, 40); k++) xs.push(l + k + 0.5, l + k + 0.25, l + k);
      const q = tf.tidy(() =>
        Quantizer.fakeQuant(tf.tensor1d(xs), tf.scalar(l), tf.scalar(u), bits)
      );
      const got = await values(q);
      q.dispose();
      xs.forEach((x, i) =>
        assertEquals(got[i], ref(x, l, u, bits), `bits ${bits} [${l}, ${u}] x=${x}`)
      );
    }
  }
});

Deno.test("symmetric and asymmetric quantizers equal Eq. 1 on random values at bits 1–8", async () => {
  const xs = Array.from(Rng.normal(7, 400, 0, 1.5));
  for (let bits = 1; bits <= 8; bits++) {
    const asym = Quantizer.asymmetric({ bits, range: Range.learnable() });
    const sym = Quantizer.symmetric({ bits, range: Range.learnable() });
    for (
      const [q, p, l, u] of [
        [asym, { lower: tf.scalar(-0.7), upper: tf.scalar(1.9) }, -0.7, 1.9],
        [sym, { upper: tf.scalar(1.3) }, -1.3, 1.3],
      ] as const
    ) {
      const y = tf.tidy(() => q.apply(p, tf.tensor1d(xs)));
      const got = await values(y);
      y.dispose();
      const s = (u - l) / (2 ** bits - 1);
      xs.forEach((x, i) => {
        const t = (Math.min(Math.max(x, l), u) - l) / s;
        if (Math.abs(t - Math.floor(t) - 0.5) < 1e-4) return; // float32 may round the other way
        assertAlmostEquals(got[i], ref(x, l, u, bits), 1e-5, `${q.name} x=${x}`);
      });
      tf.dispose(Object.values(p));
    }
  }
});

Deno.test("2-bit symmetric weights have no zero level: ±u/3, ±u", async () => {
  const q = Quantizer.symmetric({ bits: 2, range: Range.learnable() });
  const y = tf.tidy(() =>
    q.apply({ upper: tf.scalar(3) }, tf.tensor1d([-5, -2.1, -0.2, 0, 0.2, 1.9, 9]))
  );
  assertEquals(await values(y), [-3, -3, -1, 1, 1, 1, 3]);
  y.dispose();
});

Deno.test("bits 32 is the identity and invalid bit-widths are refused", async () => {
  const q = Quantizer.asymmetric({ bits: 32, range: Range.max });
  const x = tf.tensor1d([0.123, -4.5]);
  assertEquals(await values(q.apply({}, x)), await values(x));
  x.dispose();
  for (const bits of [0, 9, 16, 2.5]) {
    assertThrows(() => Quantizer.symmetric({ bits, range: Range.max }), RangeError, "bits");
  }
});

Deno.test("guards keep u > l + ε and u_w > ε", async () => {
  const a = Quantizer.asymmetric({ bits: 2, range: Range.learnable() });
  const b = tf.tidy(() => {
    const r = a.bounds({ lower: tf.scalar(1), upper: tf.scalar(0.5) }, tf.zeros([1]));
    return tf.stack([r.lower, r.upper]);
  });
  const [l, u] = await values(b);
  assert(u > l, `upper ${u} must exceed lower ${l}`);
  const s = Quantizer.symmetric({ bits: 2, range: Range.learnable() });
  const v = tf.tidy(() => s.bounds({ upper: tf.scalar(-1) }, tf.zeros([1])).upper);
  assert((await scalar(v)) > 0);
  tf.dispose([b, v]);
});

/** Picks points away from rounding and clipping boundaries. */
function safePoints(key: number, n: number, l: number, u: number, bits: number): number[] {
  const s = (u - l) / (2 ** bits - 1);
  const out: number[] = [];
  const rng = Rng.stream(key);
  while (out.length < n) {
    const x = l - 0.6 * (u - l) + rng.next() * 2.2 * (u - l);
    const t = (x - l) / s;
    const frac = t - Math.floor(t);
    if (Math.abs(frac - 0.5) < 0.05 || Math.abs(x - l) < 0.02 || Math.abs(x - u) < 0.02) continue;
    out.push(x);
  }
  return out;
}

Deno.test("∂q/∂x, ∂q/∂l, ∂q/∂u equal finite differences of the STE surrogate (asymmetric, learnable)", async () => {
  const h = 1e-6;
  for (const bits of [1, 2, 3, 4, 8]) {
    const [l, u] = [-0.8, 1.7];
    const xs = safePoints(bits, 64, l, u, bits);
    const w = Array.from(Rng.normal(100 + bits, xs.length));
    const q = Quantizer.asymmetric({ bits, range: Range.learnable() });
    const [gx, gl, gu] = tf.tidy(() =>
      tf.grads((x: tf.Tensor, lo: tf.Tensor, up: tf.Tensor) =>
        q.apply({ lower: lo as tf.Scalar, upper: up as tf.Scalar }, x).mul(tf.tensor1d(w)).sum()
      )([tf.tensor1d(xs), tf.scalar(l), tf.scalar(u)])
    );
    const res = xs.map((x) => residualAt(x, l, u, bits));
    const loss = (xv: number[], lv: number, uv: number) =>
      xv.reduce((acc, x, i) => acc + w[i] * refFrozen(x, lv, uv, bits, res[i]), 0);
    const fdL = (loss(xs, l + h, u) - loss(xs, l - h, u)) / (2 * h);
    const fdU = (loss(xs, l, u + h) - loss(xs, l, u - h)) / (2 * h);
    assertAlmostEquals(
      await scalar(gl),
      fdL,
      1e-3 * Math.max(1, Math.abs(fdL)),
      `∂/∂l bits ${bits}`,
    );
    assertAlmostEquals(
      await scalar(gu),
      fdU,
      1e-3 * Math.max(1, Math.abs(fdU)),
      `∂/∂u bits ${bits}`,
    );
    const gxv = await values(gx);
    for (let i = 0; i < xs.length; i++) {
      const xp = xs.slice(), xm = xs.slice();
      xp[i] += h;
      xm[i] -= h;
      const fd = (loss(xp, l, u) - loss(xm, l, u)) / (2 * h);
      assertAlmostEquals(gxv[i], fd, 1e-4, `∂/∂x bits ${bits} x=${xs[i]}`);
    }
    tf.dispose([gx, gl, gu]);
  }
});

Deno.test("the STE gradients match SPEC §1's closed forms", async () => {
  // inside: ∂q/∂u = (q − x)/(u − l), ∂q/∂l = (x − q)/(u − l); above u: ∂q/∂u = 1; below l: ∂q/∂l = 1
  const [l, u, bits] = [0, 3, 2];
  const cases = [0.8, 2.2, 4.0, -1.0];
  for (const x of cases) {
    const [gl, gu] = tf.tidy(() =>
      tf.grads((lo: tf.Tensor, up: tf.Tensor) =>
        Quantizer.fakeQuant(tf.scalar(x), lo as tf.Scalar, up as tf.Scalar, bits)
      )([tf.scalar(l), tf.scalar(u)])
    );
    const q = ref(x, l, u, bits);
    const inside = x >= l && x <= u;
    const expectU = inside ? (q - x) / (u - l) : x > u ? 1 : 0;
    const expectL = inside ? (x - q) / (u - l) : x < l ? 1 : 0;
    assertAlmostEquals(await scalar(gu), expectU, 1e-6, `∂q/∂u at x=${x}`);
    assertAlmostEquals(await scalar(gl), expectL, 1e-6, `∂q/∂l at x=${x}`);
    tf.dispose([gl, gu]);
  }
});

Deno.test("symmetric learnable u_w and clip-corrected γ gradients equal finite differences", async () => {
  const h = 1e-6;
  const ws = Array.from(Rng.normal(11, 300, 0, 0.05));
  const coef = Array.from(Rng.normal(12, ws.length));
  const sorted = ws.map(Math.abs).sort((a, b) => a - b);
  const pos = 0.99 * (sorted.length - 1);
  const p99 = sorted[Math.floor(pos)] * (1 - (pos % 1)) + sorted[Math.ceil(pos)] * (pos % 1);
  for (const bits of [2, 3, 4]) {
    const loss = (uu: number, res: number[]) =>
      ws.reduce((acc, w, i) => acc + coef[i] * refFrozen(w, -uu, uu, bits, res[i]), 0);
    // Learnable u_w (Eq. 8).
    {
      const u = 0.09;
      const res = ws.map((w) => residualAt(w, -u, u, bits));
      const q = Quantizer.symmetric({ bits, range: Range.learnable() });
      const g = tf.tidy(() =>
        tf.grad((up: tf.Tensor) =>
          q.apply({ upper: up as tf.Scalar }, tf.tensor1d(ws)).mul(tf.tensor1d(coef)).sum()
        )(
          tf.scalar(u),
        )
      );
      const fd = (loss(u + h, res) - loss(u - h, res)) / (2 * h);
      assertAlmostEquals(
        await scalar(g),
        fd,
        1e-3 * Math.max(1, Math.abs(fd)),
        `learnable u_w bits ${bits}`,
      );
      g.dispose();
    }
    // Clip correction (Eq. 9): u = p99(|W|) · γ; γ = 1.1.
    {
      const gamma = 1.1;
      const u = p99 * gamma;
      const res = ws.map((w) => residualAt(w, -u, u, bits));
      const q = Quantizer.symmetric({ bits, range: Range.clipCorrected(0.99) });
      const [gw, gg] = tf.tidy(() =>
        tf.grads((w: tf.Tensor, g: tf.Tensor) =>
          q.apply({ gamma: g as tf.Scalar }, w).mul(tf.tensor1d(coef)).sum()
        )([tf.tensor1d(ws), tf.scalar(gamma)])
      );
      const lossG = (gm: number) => loss(p99 * gm, res);
      const fd = (lossG(gamma + h) - lossG(gamma - h)) / (2 * h);
      assertAlmostEquals(await scalar(gg), fd, 2e-3 * Math.max(1, Math.abs(fd)), `γ bits ${bits}`);
      // ∂/∂W: the percentile is a constant (stop-gradient), so only the STE path remains.
      const gwv = await values(gw);
      ws.forEach((w, i) => {
        const near = Math.abs(Math.abs(w) - u) < 1e-4;
        if (!near) assertAlmostEquals(gwv[i], Math.abs(w) <= u ? coef[i] : 0, 1e-5, `∂/∂W w=${w}`);
      });
      tf.dispose([gw, gg]);
    }
  }
});

Deno.test("max and percentile policies pass the STE gradient to x only", async () => {
  const xs = [-2, -0.3, 0.1, 0.45, 1.2, 3];
  for (const range of [Range.max, Range.percentile(0.9)]) {
    const q = Quantizer.asymmetric({ bits: 3, range });
    const g = tf.tidy(() => tf.grad((x: tf.Tensor) => q.apply({}, x).sum())(tf.tensor1d(xs)));
    const b = tf.tidy(() => {
      const r = q.bounds({}, tf.tensor1d(xs));
      return tf.stack([r.lower, r.upper]);
    });
    const [l, u] = await values(b);
    const gv = await values(g);
    xs.forEach((x, i) => assertEquals(gv[i], x >= l && x <= u ? 1 : 0, `${range.name} x=${x}`));
    tf.dispose([g, b]);
  }
});
