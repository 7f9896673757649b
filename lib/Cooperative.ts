/**
 * The cooperative optimizer: a combinator over two gradient streams, the reconstruction
 * gradient `g_R` and the mismatch-regulariser gradient `g_M`, merged into the one gradient the
 * base optimizer sees (Eq. 6 of the ODM paper):
 *
 *   g = λ_R · g_R + λ_M · sim(g_R, g_M) · g_M,   sim(a, b) = (cos(a, b) + 1) / 2
 *
 * so the regulariser is followed fully where it agrees with reconstruction, half where the two
 * are orthogonal, and not at all where they are opposite. The cosine is taken per parameter
 * tensor (default) or over all of θ at once. Quantizer parameters (l_a, u_a, γ_w) get
 * `λ_R · g_R` only (SPEC §4).
 *
 * The merge rule is a value ({@link Merge}): {@link cooperative}, {@link naive} (Table 7 (d):
 * `λ_R g_R + λ_M g_M`) and {@link reconstructionOnly} are the paper's ablations, and any
 * object of the same shape is accepted.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Kernels from "./Kernels.ts";
import type * as Tree from "./Tree.ts";

/** A rule that merges the two gradient streams of the parameters that receive both. */
export interface Merge {
  readonly name: string;
  /** Weight of `g_R` (also applied alone to reconstruction-only parameters). */
  readonly lambdaR: number;
  /** Whether the rule reads `g_M` at all (reconstruction-only does not: one backward pass). */
  readonly usesAuxiliary: boolean;
  /** The merged gradient for every path of `gR` (`gM` has the same paths). */
  readonly merge: (gR: Tree.Flat, gM: Tree.Flat) => Map<string, tf.Tensor>;
}

const dot = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(a, b));
const EPS = 1e-20;

/** cos(a, b) as a scalar tensor; 0 when either is zero. */
export const cosine = (a: tf.Tensor, b: tf.Tensor): tf.Scalar =>
  tf.div(dot(a, b), tf.add(tf.sqrt(tf.mul(dot(a, a), dot(b, b))), EPS)) as tf.Scalar;

/** Options of {@link cooperative}. */
export interface CooperativeOptions {
  readonly lambdaR?: number;
  readonly lambdaM: number;
  /** One cosine per parameter tensor (default) or one over all parameters. */
  readonly granularity?: "tensor" | "global";
}

/** Eq. 6: `λ_R g_R + λ_M · (cos + 1)/2 · g_M`. */
export function cooperative(o: CooperativeOptions): Merge {
  const lambdaR = o.lambdaR ?? 1;
  const granularity = o.granularity ?? "tensor";
  return {
    name: `cooperative(${granularity})`,
    lambdaR,
    usesAuxiliary: true,
    merge: (gR, gM) => {
      const out = new Map<string, tf.Tensor>();
      let globalSim: tf.Scalar | undefined;
      if (granularity === "global") {
        const paths = [...gR.keys()];
        const ab = tf.addN(paths.map((p) => dot(gR.get(p)!, gM.get(p)!)));
        const aa = tf.addN(paths.map((p) => dot(gR.get(p)!, gR.get(p)!)));
        const bb = tf.addN(paths.map((p) => dot(gM.get(p)!, gM.get(p)!)));
        globalSim = tf.div(
          tf.add(tf.div(ab, tf.add(tf.sqrt(tf.mul(aa, bb)), EPS)), 1),
          2,
        ) as tf.Scalar;
      }
      for (const [p, r] of gR) {
        const m = gM.get(p);
        if (!m) throw new Error(`cooperative: no auxiliary gradient for "${p}"`);
        if (!globalSim && r.dtype === "float32" && m.dtype === "float32" && Kernels.fusedMerge()) {
          // One op per tensor (16 tfjs dispatches as the composite below; same formula).
          out.set(p, Kernels.coopMerge(r, m, { lambdaR, lambdaM: o.lambdaM, eps: EPS }));
          continue;
        }
        const sim = globalSim ?? tf.div(tf.add(cosine(r, m), 1), 2);
        out.set(p, tf.add(tf.mul(r, lambdaR), tf.mul(m, tf.mul(sim, o.lambdaM))));
      }
      return out;
    },
  };
}

/** The non-cooperative ablation (Table 7 (d)): `λ_R g_R + λ_M g_M`. */
export function naive(o: { readonly lambdaR?: number; readonly lambdaM: number }): Merge {
  const lambdaR = o.lambdaR ?? 1;
  return {
    name: "naive",
    lambdaR,
    usesAuxiliary: true,
    merge: (gR, gM) =>
      new Map(
        [...gR].map(([p, r]) => [p, tf.add(tf.mul(r, lambdaR), tf.mul(gM.get(p)!, o.lambdaM))]),
      ),
  };
}

/** No regulariser: `λ_R g_R`. */
export function reconstructionOnly(o: { readonly lambdaR?: number } = {}): Merge {
  const lambdaR = o.lambdaR ?? 1;
  return {
    name: "reconstruction",
    lambdaR,
    usesAuxiliary: false,
    merge: (gR) =>
      new Map([...gR].map(([p, r]) => [p, lambdaR === 1 ? tf.clone(r) : tf.mul(r, lambdaR)])),
  };
}

/** What one merge reports (the paper's Figure 2b and 2c), as scalar tensors. */
export interface Stats {
  /** Mean over parameter tensors (with a non-zero g_M) of cos(g_R, g_M); 0 when none. */
  readonly cosine: tf.Scalar;
  /**
   * Fraction of the gradient entries where both g_R and g_M are non-zero in which they have
   * opposite signs (Fig. 2c); 0 when there is no such entry. Entries that one stream does not
   * reach (the FP head, tail and upsampler get g_M = 0) cannot conflict and are not counted.
   */
  readonly conflict: tf.Scalar;
  /**
   * `‖g − λ_R g_R‖ / ‖g_R‖` over the merged parameters: the size of the regulariser's share of
   * the update next to the reconstruction gradient (`‖λ_M·sim·g_M‖/‖g_R‖` under Eq. 6), after
   * the merge and before the optimizer. Under Adam only this relative size matters. 0 when the
   * rule reads no g_M.
   */
  readonly ratio: tf.Scalar;
}

/**
 * Combines the two streams: parameters for which `reconstructionOnly(path)` holds (the
 * quantizer parameters) get `λ_R g_R`; all others get `merge.merge`. Returns the gradient for
 * every parameter of `gR` and, when `withStats` (default true), the statistics of the merged
 * set (zeros otherwise: they cost a few reductions per tensor, so steps that are not logged
 * skip them).
 */
export function combine(
  merge: Merge,
  opts: { readonly reconstructionOnly: (path: string) => boolean },
): (
  gR: Tree.Flat,
  gM: Tree.Flat | undefined,
  withStats?: boolean,
) => { grads: Map<string, tf.Tensor>; stats: Stats } {
  return (gR, gM, withStats = true) => {
    const own = new Map([...gR].filter(([p]) => !opts.reconstructionOnly(p)));
    const grads = new Map<string, tf.Tensor>();
    for (const [p, r] of gR) {
      if (opts.reconstructionOnly(p)) {
        grads.set(p, merge.lambdaR === 1 ? tf.clone(r) : tf.mul(r, merge.lambdaR));
      }
    }
    if (!merge.usesAuxiliary || !gM) {
      for (const [p, g] of reconstructionOnly({ lambdaR: merge.lambdaR }).merge(own, own)) {
        grads.set(p, g);
      }
      return {
        grads,
        stats: { cosine: tf.scalar(0), conflict: tf.scalar(0), ratio: tf.scalar(0) },
      };
    }
    const aux = new Map([...own.keys()].map((p) => {
      const m = gM.get(p);
      if (!m) throw new Error(`combine: the auxiliary stream has no gradient for "${p}"`);
      return [p, m] as const;
    }));
    const merged = merge.merge(own, aux);
    for (const [p, g] of merged) grads.set(p, g);
    const stats = !withStats
      ? { cosine: tf.scalar(0), conflict: tf.scalar(0), ratio: tf.scalar(0) }
      : Kernels.fusedMerge()
      ? fusedStatistics(own, aux, merged, merge.lambdaR)
      : { ...statistics(own, aux), ratio: ratio(own, merged, merge.lambdaR) };
    return { grads, stats };
  };
}

/** `‖g − λ_R g_R‖ / ‖g_R‖` over the parameters of `gR` (see {@link Stats.ratio}). */
export function ratio(gR: Tree.Flat, merged: Tree.Flat, lambdaR: number): tf.Scalar {
  return tf.tidy(() => {
    const paths = [...gR.keys()];
    if (paths.length === 0) return tf.scalar(0);
    const sq = (t: tf.Tensor) => tf.sum(tf.square(t));
    const extra = tf.addN(
      paths.map((p) => sq(tf.sub(merged.get(p)!, tf.mul(gR.get(p)!, lambdaR)))),
    );
    const base = tf.addN(paths.map((p) => sq(gR.get(p)!)));
    return tf.div(tf.sqrt(extra), tf.add(tf.sqrt(base), EPS)) as tf.Scalar;
  });
}

/**
 * Mean per-tensor cosine (over tensors with g_M ≠ 0) and the fraction of opposite signs among
 * the entries where both streams are non-zero.
 */
export function statistics(gR: Tree.Flat, gM: Tree.Flat): Omit<Stats, "ratio"> {
  return tf.tidy(() => {
    const cosines: tf.Tensor[] = [];
    const present: tf.Tensor[] = [];
    const conflicts: tf.Tensor[] = [];
    const both: tf.Tensor[] = [];
    for (const [p, r] of gR) {
      const m = gM.get(p)!;
      // Signs, not the product r·m, which underflows to 0 for tiny entries.
      const signs = tf.mul(tf.sign(r), tf.sign(m));
      cosines.push(cosine(r, m));
      present.push(tf.cast(tf.greater(dot(m, m), 0), "float32"));
      conflicts.push(tf.sum(tf.cast(tf.less(signs, 0), "float32")));
      both.push(tf.sum(tf.abs(signs)));
    }
    if (cosines.length === 0) return { cosine: tf.scalar(0), conflict: tf.scalar(0) };
    const n = tf.addN(present);
    const c = tf.div(
      tf.addN(cosines.map((x, i) => tf.mul(x, present[i]))),
      tf.maximum(n, 1),
    ) as tf.Scalar;
    return {
      cosine: c,
      conflict: tf.div(tf.addN(conflicts), tf.maximum(tf.addN(both), 1)) as tf.Scalar,
    };
  });
}

/**
 * {@link statistics} and {@link ratio} together from one op per tensor (lib/Kernels.ts
 * `mergeStats`: the three dot products, the sign counts and `Σ (g − λ_R g_R)²` in one pass),
 * then a few ops over the `[tensors, 8]` sums: ~2 dispatches per tensor instead of ~26 (a
 * logged step of the default job ran ~700 dispatches for them). Same definitions; sums in
 * another order, so equal to the composite to float32 rounding (tests/Cooperative.test.ts).
 */
export function fusedStatistics(
  gR: Tree.Flat,
  gM: Tree.Flat,
  merged: Tree.Flat,
  lambdaR: number,
): Stats {
  return tf.tidy(() => {
    const paths = [...gR.keys()];
    if (paths.length === 0) {
      return { cosine: tf.scalar(0), conflict: tf.scalar(0), ratio: tf.scalar(0) };
    }
    const sums = tf.stack(
      paths.map((p) => Kernels.mergeStats(gR.get(p)!, gM.get(p)!, merged.get(p)!, lambdaR)),
    ) as tf.Tensor2D;
    const [ab, aa, bb, conflict, both, extra] = tf.unstack(sums, 1);
    const cos = tf.div(ab, tf.add(tf.sqrt(tf.mul(aa, bb)), EPS));
    const present = tf.cast(tf.greater(bb, 0), "float32");
    return {
      cosine: tf.div(tf.sum(tf.mul(cos, present)), tf.maximum(tf.sum(present), 1)) as tf.Scalar,
      conflict: tf.div(tf.sum(conflict), tf.maximum(tf.sum(both), 1)) as tf.Scalar,
      ratio: tf.div(tf.sqrt(tf.sum(extra)), tf.add(tf.sqrt(tf.sum(aa)), EPS)) as tf.Scalar,
    };
  });
}
