/**
 * Parameter trees: nested records of tensors addressed by dotted paths (`body.blocks.3.conv1.weight`).
 *
 * Parameters, gradients, optimizer state and checkpoints all share this one shape, so the
 * dotted path of a leaf is at once its name in a checkpoint, its key in an optimizer state and
 * what a quantization rule matches against.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";

/** A tree of tensors: a tensor, or a record of subtrees. */
export type Tree = tf.Tensor | { readonly [key: string]: Tree };

/** A record node of a tree (what a layer's `init` returns). */
export type Params = { readonly [key: string]: Tree };

/** A flat view: dotted path → tensor, in a stable (insertion) order. */
export type Flat = ReadonlyMap<string, tf.Tensor>;

const isTensor = (t: Tree): t is tf.Tensor =>
  typeof (t as tf.Tensor).dataId === "object" && Array.isArray((t as tf.Tensor).shape);

/** Flattens a tree into dotted paths, depth first in key order. */
export function flatten(tree: Params, prefix = ""): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  const walk = (node: Tree, path: string) => {
    if (isTensor(node)) {
      out.set(path, node);
      return;
    }
    for (const [k, v] of Object.entries(node)) walk(v, path === "" ? k : `${path}.${k}`);
  };
  walk(tree, prefix);
  return out;
}

/** Rebuilds a nested tree from dotted paths (inverse of {@link flatten}). */
export function unflatten(flat: Iterable<readonly [string, tf.Tensor]>): Params {
  const root: Record<string, unknown> = {};
  for (const [path, t] of flat) {
    const keys = path.split(".");
    let node = root;
    for (const k of keys.slice(0, -1)) {
      const next = node[k];
      if (next === undefined) node = node[k] = {};
      else if (isTensor(next as Tree)) throw new Error(`path conflict at "${path}"`);
      else node = next as Record<string, unknown>;
    }
    node[keys[keys.length - 1]] = t;
  }
  return root as Params;
}

/** The subtree under `key`; throws a message naming the key when it is absent. */
export function sub(p: Params, key: string): Params {
  const v = p[key];
  if (v === undefined || isTensor(v)) throw new Error(`parameter subtree "${key}" is missing`);
  return v;
}

/** The tensor leaf under `key`; throws a message naming the key when it is absent. */
export function leaf<T extends tf.Tensor = tf.Tensor>(p: Params, key: string): T {
  const v = p[key];
  if (v === undefined || !isTensor(v)) throw new Error(`parameter "${key}" is missing`);
  return v as T;
}

/** Maps every leaf, keeping the structure. */
export function map(tree: Params, f: (t: tf.Tensor, path: string) => tf.Tensor): Params {
  return unflatten([...flatten(tree)].map(([p, t]) => [p, f(t, p)] as const));
}

/** Total number of scalars in the tree (optionally only leaves whose path passes `keep`). */
export function size(tree: Params, keep: (path: string) => boolean = () => true): number {
  let n = 0;
  for (const [p, t] of flatten(tree)) if (keep(p)) n += t.size;
  return n;
}

/** Disposes every leaf. */
export function dispose(tree: Params): void {
  for (const t of flatten(tree).values()) t.dispose();
}

/** Merges trees; later trees win on equal paths. */
export function merge(...trees: ReadonlyArray<Params>): Params {
  const out = new Map<string, tf.Tensor>();
  for (const t of trees) for (const [p, v] of flatten(t)) out.set(p, v);
  return unflatten(out);
}

/**
 * Glob match for dotted paths: `*` matches one path segment, `**` any number of segments
 * (including none). `body.blocks.*.conv1` matches `body.blocks.12.conv1`.
 */
export function matches(pattern: string, path: string): boolean {
  const p = pattern.split(".");
  const s = path === "" ? [] : path.split(".");
  const go = (i: number, j: number): boolean => {
    if (i === p.length) return j === s.length;
    if (p[i] === "**") return go(i + 1, j) || (j < s.length && go(i, j + 1));
    if (j === s.length) return false;
    return (p[i] === "*" || p[i] === s[j]) && go(i + 1, j + 1);
  };
  return go(0, 0);
}
