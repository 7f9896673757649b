/**
 * Optimizers as gradient transformations (the optax shape): a transform is two pure functions,
 * `init(params) → state` and `update(grads, state, params, step) → [updates, state]`, and
 * transforms compose with {@link chain} and {@link partition}.
 *
 * Parameters, gradients, updates and optimizer state are all flat maps from dotted paths to
 * tensors ({@link Tree.Flat}), so any optimizer state can be checkpointed the same way.
 * `update` allocates new tensors and never disposes its inputs; the training step runs it
 * inside one `tf.tidy`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Kernels from "./Kernels.ts";
import type * as Tree from "./Tree.ts";

/** Optimizer state: named tensors (checkpointable). */
export type State = ReadonlyMap<string, tf.Tensor>;

/** A gradient transformation. */
export interface Transform {
  readonly init: (params: Tree.Flat) => State;
  /** `step` counts from 0; the result's updates are added to the parameters. */
  readonly update: (
    grads: Tree.Flat,
    state: State,
    params: Tree.Flat,
    step: number,
  ) => readonly [Tree.Flat, State];
}

/** A learning rate as a function of the step (from 0). */
export type Schedule = (step: number) => number;

/** A constant learning rate. */
export const constant = (lr: number): Schedule => () => lr;

/** `lr · factor^floor(step / every)`: the step-halving schedule of SPEC §7 with factor 0.5. */
export const stepDecay = (lr: number, every: number, factor = 0.5): Schedule => (step) =>
  lr * factor ** Math.floor(step / every);

/** Options of {@link adam} (PyTorch's defaults). */
export interface AdamOptions {
  readonly lr: number | Schedule;
  readonly b1?: number;
  readonly b2?: number;
  readonly eps?: number;
}

/**
 * Adam (Kingma & Ba) exactly as PyTorch computes it: `m̂ = m/(1−β1^t)`,
 * `v̂ = v/(1−β2^t)`, update `−lr · m̂ / (√v̂ + ε)`, t = step + 1.
 */
export function adam(o: AdamOptions): Transform {
  const b1 = o.b1 ?? 0.9, b2 = o.b2 ?? 0.999, eps = o.eps ?? 1e-8;
  const lr = typeof o.lr === "number" ? constant(o.lr) : o.lr;
  return {
    init: (params) => {
      const s = new Map<string, tf.Tensor>();
      for (const [p, t] of params) {
        s.set(`m.${p}`, tf.zerosLike(t));
        s.set(`v.${p}`, tf.zerosLike(t));
      }
      return s;
    },
    update: (grads, state, _params, step) => {
      const t = step + 1;
      const a = lr(step) / (1 - b1 ** t);
      const c = 1 / (1 - b2 ** t);
      const updates = new Map<string, tf.Tensor>();
      const next = new Map<string, tf.Tensor>();
      for (const [p, g] of grads) {
        const m0 = state.get(`m.${p}`), v0 = state.get(`v.${p}`);
        if (!m0 || !v0) throw new Error(`adam: no state for parameter "${p}"`);
        // One fused kernel per tensor (lib/Kernels.ts), same arithmetic as the composite
        // m = m0·β1 + g·(1−β1); v = v0·β2 + g²·(1−β2); Δ = m / (√(v·c) + ε) · (−a).
        const [u, m, v] = Kernels.adamUpdate(g, m0, v0, { b1, b2, eps, a, c });
        updates.set(p, u);
        next.set(`m.${p}`, m);
        next.set(`v.${p}`, v);
      }
      return [updates, next];
    },
  };
}

/** Plain SGD: update `−lr · g`. */
export function sgd(lr: number | Schedule): Transform {
  const f = typeof lr === "number" ? constant(lr) : lr;
  return {
    init: () => new Map(),
    update: (
      grads,
      state,
      _p,
      step,
    ) => [new Map([...grads].map(([p, g]) => [p, tf.mul(g, -f(step))])), state],
  };
}

const select = (m: Tree.Flat, keep: (path: string) => boolean): Map<string, tf.Tensor> =>
  new Map([...m].filter(([p]) => keep(p)));

/**
 * Parameter groups: each parameter goes to the transform named by `label(path)`, with its own
 * state (prefixed by the group name). SPEC §7: `{ weights: adam(1e-4), quant: adam(1e-3) }`.
 */
export function partition(
  transforms: Readonly<Record<string, Transform>>,
  label: (path: string) => string,
): Transform {
  const groups = Object.keys(transforms);
  const check = (p: string) => {
    const g = label(p);
    if (!(g in transforms)) {
      throw new Error(`partition: parameter "${p}" has label "${g}", not one of ${groups}`);
    }
    return g;
  };
  const prefix = (g: string, s: State) => new Map([...s].map(([k, v]) => [`${g}.${k}`, v]));
  const unprefix = (g: string, s: State) =>
    new Map(
      [...s].filter(([k]) => k.startsWith(`${g}.`)).map(([k, v]) => [k.slice(g.length + 1), v]),
    );
  return {
    init: (params) => {
      const out = new Map<string, tf.Tensor>();
      for (const g of groups) {
        for (const [k, v] of prefix(g, transforms[g].init(select(params, (p) => check(p) === g)))) {
          out.set(k, v);
        }
      }
      return out;
    },
    update: (grads, state, params, step) => {
      const updates = new Map<string, tf.Tensor>();
      const next = new Map<string, tf.Tensor>();
      for (const g of groups) {
        const keep = (p: string) => check(p) === g;
        const [u, s] = transforms[g].update(
          select(grads, keep),
          unprefix(g, state),
          select(params, keep),
          step,
        );
        for (const [k, v] of u) updates.set(k, v);
        for (const [k, v] of prefix(g, s)) next.set(k, v);
      }
      return [updates, next];
    },
  };
}

/** Transforms applied in order, each to the previous one's updates; states are prefixed `0.`, `1.`, … */
export function chain(...ts: ReadonlyArray<Transform>): Transform {
  const part = (i: number, s: State) =>
    new Map(
      [...s].filter(([k]) => k.startsWith(`${i}.`)).map((
        [k, v],
      ) => [k.slice(String(i).length + 1), v]),
    );
  return {
    init: (params) => {
      const out = new Map<string, tf.Tensor>();
      ts.forEach((t, i) => {
        for (const [k, v] of t.init(params)) out.set(`${i}.${k}`, v);
      });
      return out;
    },
    update: (grads, state, params, step) => {
      let g: Tree.Flat = grads;
      const next = new Map<string, tf.Tensor>();
      ts.forEach((t, i) => {
        const [u, s] = t.update(g, part(i, state), params, step);
        g = u;
        for (const [k, v] of s) next.set(`${i}.${k}`, v);
      });
      return [g, next];
    },
  };
}

/** Scales updates by a constant (e.g. gradient ascent with −1). */
export const scale = (factor: number): Transform => ({
  init: () => new Map(),
  update: (grads, state) => [new Map([...grads].map(([p, g]) => [p, tf.mul(g, factor)])), state],
});

/**
 * `params + updates` as new tensors (a parameter without an update is cloned), so the caller
 * can dispose the old parameters whatever the updates covered.
 */
export function apply(params: Tree.Flat, updates: Tree.Flat): Map<string, tf.Tensor> {
  return new Map([...params].map(([p, t]) => {
    const u = updates.get(p);
    return [p, u ? tf.add(t, u) : tf.clone(t)] as const;
  }));
}
