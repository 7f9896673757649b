/**
 * Gradients of several scalars from ONE recorded forward pass.
 *
 * `tf.valueAndGrads` records a forward pass, backpropagates one scalar and throws the tape
 * away, so the two gradient streams of ODM (g_R of the reconstruction loss and g_M of the
 * mismatch loss, Eq. 6) used to cost two forward passes. Backpropagation is linear in the
 * output, so nothing forbids walking the same tape twice from two different outputs: this
 * module records the forward once with tfjs's engine and runs one backward walk per output
 * over the nodes that lead to it (the mismatch walk never touches the upsampler and tail, whose
 * outputs do not reach L_M).
 *
 * NOTE: it drives tfjs-core's engine through members that are not part of its typed API
 * (`startTape`, `endTape`, `scopedRun`, `state.activeTape`, a tape node's `gradient` and
 * `saved`) — stable across tfjs 4.x, pinned by deno.json. tests/tape.test.ts compares every
 * gradient with `tf.grads` of each output on its own and checks that nothing leaks.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** One recorded kernel: its inputs, outputs and the closure that maps output grads to input grads. */
interface TapeNode {
  readonly id: number;
  readonly kernelName: string;
  readonly inputs: Record<string, tf.Tensor>;
  readonly outputs: tf.Tensor[];
  readonly gradient?: (dys: Array<tf.Tensor | null>) => Record<string, () => tf.Tensor>;
  readonly saved?: tf.Tensor[];
}

/** The engine members used here. */
interface Engine {
  readonly state: { activeTape: TapeNode[] | null; gradientDepth: number };
  startTape(): void;
  endTape(): void;
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  tidy<T extends tf.TensorContainer>(name: string, f: () => T): T;
}

/**
 * The nodes on a path from one of `xs` to `y`, in recording order; each with its inputs cut
 * down to those that depend on `xs` (only those need a gradient).
 */
function between(tape: ReadonlyArray<TapeNode>, xs: ReadonlyArray<tf.Tensor>, y: tf.Tensor) {
  const fromX = new Set(xs.map((x) => x.id));
  const nodeFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      nodeFromX.add(node.id);
      for (const o of node.outputs) fromX.add(o.id);
    }
  }
  const toY = new Set([y.id]);
  const nodeToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => toY.has(o.id))) {
      nodeToY.add(node.id);
      for (const t of Object.values(node.inputs)) toY.add(t.id);
    }
  }
  return tape
    .filter((n) => nodeFromX.has(n.id) && nodeToY.has(n.id))
    .map((n) => ({
      ...n,
      inputs: Object.fromEntries(Object.entries(n.inputs).filter(([, t]) => fromX.has(t.id))),
    }));
}

/** ∂y/∂x for every x (zeros where y does not depend on x), by one backward walk. */
function backward(
  nodes: ReadonlyArray<TapeNode>,
  xs: ReadonlyArray<tf.Tensor>,
  y: tf.Scalar,
): tf.Tensor[] {
  return tf.tidy(() => {
    const grad = new Map<number, tf.Tensor>([[y.id, tf.onesLike(y)]]);
    for (let i = nodes.length - 1; i >= 0; i--) {
      const node = nodes[i];
      if (!node.gradient) throw new Error(`no gradient registered for ${node.kernelName}`);
      const partials = node.gradient(node.outputs.map((o) => grad.get(o.id) ?? null));
      for (const [name, x] of Object.entries(node.inputs)) {
        const f = partials[name];
        if (!f) throw new Error(`${node.kernelName} gives no gradient for its input ${name}`);
        const dx = tf.tidy(f);
        if (dx.shape.join(",") !== x.shape.join(",")) {
          throw new Error(
            `${node.kernelName}: gradient of ${name} has shape [${dx.shape}], input [${x.shape}]`,
          );
        }
        const prev = grad.get(x.id);
        grad.set(x.id, prev ? tf.add(prev, dx) : dx);
      }
    }
    return xs.map((x) => grad.get(x.id) ?? tf.zerosLike(x));
  });
}

/**
 * Runs `f(...xs)` once under a gradient tape and returns its scalar outputs and, for each
 * output index listed in `wrt` (default: all), the gradient of that output with respect to
 * every x (zeros for an x it does not depend on). The values and gradients belong to the
 * caller's scope; everything else the pass made is freed.
 */
export function valuesAndGrads(
  f: (...xs: tf.Tensor[]) => tf.Scalar[],
  xs: ReadonlyArray<tf.Tensor>,
  wrt?: ReadonlyArray<number>,
): { readonly values: tf.Scalar[]; readonly grads: Array<tf.Tensor[] | undefined> } {
  const engine = tf.engine() as unknown as Engine;
  if (engine.state.gradientDepth !== 0) {
    throw new Error("valuesAndGrads cannot run inside another gradient computation");
  }
  const values = engine.scopedRun(
    () => engine.startTape(),
    () => engine.endTape(),
    () => engine.tidy("forward", () => f(...xs)),
  );
  const tape = engine.state.activeTape ?? [];
  try {
    const which = new Set(wrt ?? values.map((_, i) => i));
    const grads = values.map((y, i) =>
      which.has(i) ? backward(between(tape, xs, y), xs, y) : undefined
    );
    return { values, grads };
  } finally {
    for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    engine.state.activeTape = null;
  }
}
