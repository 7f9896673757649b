/**
 * Typed layers: pure transformers over parameter trees (equinox-style).
 *
 * A layer is a value with `init(key) → params` and `apply(params, x, ctx) → y`. Channel counts
 * are literal types (`Layer<3, 64>`), so {@link sequential} refuses, at compile time, to wire a
 * 64-channel output into a 32-channel input. Composite layers list their children with names;
 * the names form the dotted parameter paths (`body.blocks.3.conv1.weight`) that quantization
 * rules, optimizers and checkpoints use. Tensors are NHWC.
 *
 * Mode, step and the current path travel in a {@link Ctx} value; a quantized layer reports its
 * input and quantized input through `ctx.tap` so that the mismatch loss (Eq. 2–3) needs no
 * second forward pass.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Rng from "./Rng.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";

/** What a quantized layer reports on each forward: its input `x` and quantized input `q`. */
export interface Tap {
  readonly path: string;
  readonly x: tf.Tensor;
  readonly q: tf.Tensor;
}

/** The context of one forward pass. */
export interface Ctx {
  /** `calibrate` runs the full-precision model and reports the inputs of quantized layers. */
  readonly mode: "train" | "eval" | "calibrate";
  /** The optimisation step (0 outside training). */
  readonly step: number;
  /** Dotted path of the layer being applied ("" at the root). */
  readonly path: string;
  /** Receives the input activations of quantized layers. */
  readonly tap?: (t: Tap) => void;
}

/** A context for a forward pass at the root of a model. */
export const context = (
  mode: Ctx["mode"] = "eval",
  opts: { readonly step?: number; readonly tap?: (t: Tap) => void } = {},
): Ctx => ({ mode, step: opts.step ?? 0, path: "", tap: opts.tap });

/** The context for a child named `name`. */
export const childContext = (ctx: Ctx, name: string): Ctx => ({
  ...ctx,
  path: ctx.path === "" ? name : `${ctx.path}.${name}`,
});

/** A named child of a composite layer. */
export type Child = readonly [name: string, layer: AnyLayer];

/** Static facts about a layer that the cost model and importers read. */
export interface Meta {
  readonly kernel?: number;
  readonly bias?: boolean;
  readonly factor?: number;
  readonly [key: string]: unknown;
}

/** A typed layer from `I` to `O` channels. */
export interface Layer<I extends number = number, O extends number = number> {
  /** What the layer is: `conv2d`, `relu`, `sequential`, `quantized`, … */
  readonly kind: string;
  readonly inChannels: I;
  readonly outChannels: O;
  /** The key this layer takes inside a parent {@link sequential} (see {@link named}). */
  readonly name?: string;
  /** Named children (empty for leaves). Their params live under their names. */
  readonly children: ReadonlyArray<Child>;
  readonly meta: Meta;
  /** Fresh parameters from a key. */
  readonly init: (key: number) => Params;
  /** The forward pass. */
  readonly apply: (params: Params, x: tf.Tensor, ctx: Ctx) => tf.Tensor;
  /** The same layer with its children replaced (same names, same order). */
  readonly rebuild: (children: ReadonlyArray<Child>) => Layer<I, O>;
}

/** A layer of any channel counts. */
// deno-lint-ignore no-explicit-any
export type AnyLayer = Layer<any, any>;

const leafLayer = <I extends number, O extends number>(
  l: Omit<Layer<I, O>, "children" | "rebuild">,
): Layer<I, O> => {
  const self: Layer<I, O> = { ...l, children: [], rebuild: () => self };
  return self;
};

const checkChannels = (n: number, what: string): void => {
  if (!(Number.isInteger(n) && n > 0)) {
    throw new RangeError(`${what} must be a positive integer, got ${n}`);
  }
};

const lastDim = (x: tf.Tensor) => x.shape[x.shape.length - 1];

/** Options of {@link conv2d}. */
export interface ConvOptions<I extends number, O extends number> {
  readonly in: I;
  readonly out: O;
  /** Square kernel size (odd), default 3. */
  readonly kernel?: number;
  /** Add a bias (default true). */
  readonly bias?: boolean;
}

/**
 * A 2-D convolution, stride 1, "same" padding, weight `[k, k, in, out]` and bias `[out]`,
 * initialised as PyTorch does (uniform ±1/√fan_in for both).
 */
export function conv2d<const I extends number, const O extends number>(
  o: ConvOptions<I, O>,
): Layer<I, O> {
  const kernel = o.kernel ?? 3;
  const bias = o.bias ?? true;
  checkChannels(o.in, "conv2d in");
  checkChannels(o.out, "conv2d out");
  if (!(kernel % 2 === 1 && kernel > 0)) {
    throw new RangeError(`conv2d kernel must be odd, got ${kernel}`);
  }
  const fanIn = o.in * kernel * kernel;
  const bound = 1 / Math.sqrt(fanIn);
  return leafLayer({
    kind: "conv2d",
    inChannels: o.in,
    outChannels: o.out,
    meta: { kernel, bias },
    init: (key): Params => {
      const weight = tf.tensor4d(
        Rng.uniform(Rng.fold(key, "weight"), fanIn * o.out, -bound, bound),
        [kernel, kernel, o.in, o.out],
      );
      return bias
        ? { weight, bias: tf.tensor1d(Rng.uniform(Rng.fold(key, "bias"), o.out, -bound, bound)) }
        : { weight };
    },
    apply: (p, x) => {
      if (lastDim(x) !== o.in) {
        throw new Error(`conv2d expects ${o.in} input channels, got shape [${x.shape}]`);
      }
      const y = tf.conv2d(x as tf.Tensor4D, Tree.leaf<tf.Tensor4D>(p, "weight"), 1, "same");
      return bias ? tf.add(y, Tree.leaf(p, "bias")) : y;
    },
  });
}

/** ReLU over `channels` channels (the count is only for typing the wiring). */
export function relu<const C extends number>(channels: C): Layer<C, C> {
  return leafLayer({
    kind: "relu",
    inChannels: channels,
    outChannels: channels,
    meta: {},
    init: () => ({}),
    apply: (_p, x) => tf.relu(x),
  });
}

/**
 * Pixel shuffle (sub-pixel upsampling) by `factor`: `[b, h, w, out·r²] → [b, h·r, w·r, out]`,
 * in tfjs `depthToSpace` (DCR) channel order.
 *
 * NOTE: written as reshape → transpose → reshape because `tf.depthToSpace` has no gradient.
 * PyTorch's `PixelShuffle` uses CRD order; importing PyTorch weights needs a channel permute.
 */
export function pixelShuffle<const I extends number, const O extends number>(
  o: { readonly in: I; readonly out: O; readonly factor: number },
): Layer<I, O> {
  const r = o.factor;
  if (o.in !== o.out * r * r) {
    throw new RangeError(`pixelShuffle: in (${o.in}) must equal out·factor² (${o.out * r * r})`);
  }
  return leafLayer({
    kind: "pixelShuffle",
    inChannels: o.in,
    outChannels: o.out,
    meta: { factor: r },
    init: () => ({}),
    apply: (_p, x) => {
      const [b, h, w] = x.shape;
      return x.reshape([b, h, w, r, r, o.out]).transpose([0, 1, 3, 2, 4, 5]).reshape([
        b,
        h * r,
        w * r,
        o.out,
      ]);
    },
  });
}

/**
 * Adds `sign · rgbRange · mean` to an RGB image (EDSR's MeanShift with std 1). The shift is a
 * constant, not a parameter.
 */
export function meanShift(
  o: {
    readonly mean: readonly [number, number, number];
    readonly sign: 1 | -1;
    readonly rgbRange?: number;
  },
): Layer<3, 3> {
  const shift = o.mean.map((m) => o.sign * (o.rgbRange ?? 255) * m);
  return leafLayer({
    kind: "meanShift",
    inChannels: 3,
    outChannels: 3,
    meta: { mean: o.mean, sign: o.sign },
    init: () => ({}),
    apply: (_p, x) => tf.tidy(() => tf.add(x, tf.tensor1d(shift))),
  });
}

/** Gives a layer the key it takes inside a parent {@link sequential}. */
export function named<L extends AnyLayer>(name: string, layer: L): L {
  if (!/^[A-Za-z0-9_]+$/.test(name)) {
    throw new Error(`layer name must be [A-Za-z0-9_]+, got "${name}"`);
  }
  return { ...layer, name };
}

function sequentialOf(layers: ReadonlyArray<AnyLayer>): AnyLayer {
  if (layers.length === 0) throw new Error("sequential needs at least one layer");
  const children: Child[] = layers.map((l, i) => [l.name ?? String(i), l] as const);
  const names = new Set(children.map(([n]) => n));
  if (names.size !== children.length) {
    throw new Error(`sequential: duplicate child names [${[...children.map(([n]) => n)]}]`);
  }
  for (let i = 1; i < layers.length; i++) {
    if (layers[i - 1].outChannels !== layers[i].inChannels) {
      throw new Error(
        `sequential: child ${children[i - 1][0]} gives ${layers[i - 1].outChannels} channels but ${
          children[i][0]
        } takes ${layers[i].inChannels}`,
      );
    }
  }
  return fromChildren(children);
}

function fromChildren(children: ReadonlyArray<Child>): AnyLayer {
  return {
    kind: "sequential",
    inChannels: children[0][1].inChannels,
    outChannels: children[children.length - 1][1].outChannels,
    children,
    meta: {},
    init: (key) => {
      const out: Record<string, Params> = {};
      for (const [name, l] of children) {
        const p = l.init(Rng.fold(key, name));
        if (Object.keys(p).length > 0) out[name] = p;
      }
      return out;
    },
    apply: (p, x, ctx) => {
      let y = x;
      for (const [name, l] of children) {
        y = l.apply((p[name] as Params | undefined) ?? {}, y, childContext(ctx, name));
      }
      return y;
    },
    rebuild: (next) => fromChildren(next),
  };
}

/**
 * Layers applied one after another, each child under its {@link named} name or its index.
 * The channel types must chain: `sequential(conv2d({in: 3, out: 64}), conv2d({in: 32, out: 3}))`
 * does not compile.
 */
export function sequential<A extends number, B extends number>(l1: Layer<A, B>): Layer<A, B>;
export function sequential<A extends number, B extends number, C extends number>(
  l1: Layer<A, B>,
  l2: Layer<NoInfer<B>, C>,
): Layer<A, C>;
export function sequential<A extends number, B extends number, C extends number, D extends number>(
  l1: Layer<A, B>,
  l2: Layer<NoInfer<B>, C>,
  l3: Layer<NoInfer<C>, D>,
): Layer<A, D>;
export function sequential<
  A extends number,
  B extends number,
  C extends number,
  D extends number,
  E extends number,
>(
  l1: Layer<A, B>,
  l2: Layer<NoInfer<B>, C>,
  l3: Layer<NoInfer<C>, D>,
  l4: Layer<NoInfer<D>, E>,
): Layer<A, E>;
export function sequential<
  A extends number,
  B extends number,
  C extends number,
  D extends number,
  E extends number,
  F extends number,
>(
  l1: Layer<A, B>,
  l2: Layer<NoInfer<B>, C>,
  l3: Layer<NoInfer<C>, D>,
  l4: Layer<NoInfer<D>, E>,
  l5: Layer<NoInfer<E>, F>,
): Layer<A, F>;
export function sequential<
  A extends number,
  B extends number,
  C extends number,
  D extends number,
  E extends number,
  F extends number,
  G extends number,
>(
  l1: Layer<A, B>,
  l2: Layer<NoInfer<B>, C>,
  l3: Layer<NoInfer<C>, D>,
  l4: Layer<NoInfer<D>, E>,
  l5: Layer<NoInfer<E>, F>,
  l6: Layer<NoInfer<F>, G>,
): Layer<A, G>;
export function sequential(...layers: AnyLayer[]): AnyLayer {
  return sequentialOf(layers);
}

/** `n` layers of the same channel count, made by `make(i)`, children named `0…n−1`. */
export function repeat<C extends number>(n: number, make: (i: number) => Layer<C, C>): Layer<C, C> {
  if (!(Number.isInteger(n) && n > 0)) {
    throw new RangeError(`repeat: n must be a positive integer, got ${n}`);
  }
  return sequentialOf(Array.from({ length: n }, (_, i) => ({ ...make(i), name: String(i) })));
}

/**
 * `x + resScale · inner(x)`. Transparent for parameter paths: the inner layer's children are
 * this layer's children.
 */
export function residual<C extends number>(inner: Layer<C, NoInfer<C>>, resScale = 1): Layer<C, C> {
  return {
    kind: "residual",
    inChannels: inner.inChannels,
    outChannels: inner.outChannels,
    name: inner.name,
    children: inner.children,
    meta: { resScale },
    init: inner.init,
    apply: (p, x, ctx) => {
      const y = inner.apply(p, x, ctx);
      return tf.add(x, resScale === 1 ? y : tf.mul(y, resScale));
    },
    rebuild: (children) => residual(inner.rebuild(children), resScale),
  };
}

/** Visits every layer depth first with its dotted path (the root has path ""). */
export function walk(layer: AnyLayer, f: (path: string, layer: AnyLayer) => void, path = ""): void {
  f(path, layer);
  for (const [name, child] of layer.children) {
    walk(child, f, path === "" ? name : `${path}.${name}`);
  }
}

/**
 * Rebuilds a model, replacing each layer for which `f` returns a new one (children are
 * transformed first; a replaced layer's own children are not revisited).
 */
export function transform<L extends AnyLayer>(
  layer: L,
  f: (path: string, layer: AnyLayer) => AnyLayer | undefined,
  path = "",
): L {
  const replaced = f(path, layer);
  if (replaced) return { ...replaced, name: layer.name } as L;
  if (layer.children.length === 0) return layer;
  const children = layer.children.map(([name, child]) =>
    [name, transform(child, f, path === "" ? name : `${path}.${name}`)] as const
  );
  return { ...layer.rebuild(children), name: layer.name } as L;
}

/** Number of scalar parameters a layer initialises. */
export function parameterCount(
  layer: AnyLayer,
  keep: (path: string) => boolean = () => true,
): number {
  const p = layer.init(0);
  const n = Tree.size(p, keep);
  Tree.dispose(p);
  return n;
}

/** Options of {@link denseBlock}. */
export interface DenseOptions<I extends number> {
  /** Input channels (RDN's G0). */
  readonly in: I;
  /** Channels each conv adds (the growth rate, RDN's G). */
  readonly growth: number;
  /** Number of conv → ReLU steps (RDN's C). */
  readonly layers: number;
  /** Square kernel size of the convs (default 3). */
  readonly kernel?: number;
}

function denseOf(inChannels: number, growth: number, children: ReadonlyArray<Child>): AnyLayer {
  children.forEach(([name, l], c) => {
    if (l.inChannels !== inChannels + c * growth || l.outChannels !== growth) {
      throw new Error(
        `denseBlock: step ${name} must map ${inChannels + c * growth} → ${growth} channels, ` +
          `got ${l.inChannels} → ${l.outChannels}`,
      );
    }
  });
  return {
    kind: "denseBlock",
    inChannels,
    outChannels: inChannels + children.length * growth,
    children,
    meta: { growth },
    init: (key) => fromChildren(children).init(key),
    apply: (p, x, ctx) => {
      let features = x;
      for (const [name, l] of children) {
        const y = tf.relu(
          l.apply((p[name] as Params | undefined) ?? {}, features, childContext(ctx, name)),
        );
        features = tf.concat([features, y], features.rank - 1);
      }
      return features;
    },
    rebuild: (next) => denseOf(inChannels, growth, next),
  };
}

/**
 * A dense block (DenseNet; the "contiguous memory" of RDN's residual dense block): `layers`
 * steps of conv → ReLU, where step c reads the concatenation `[x, y₀, …, y_{c−1}]` of the block
 * input and every earlier step's output (`in + c·growth` channels) and adds `growth` channels.
 * The output is the whole concatenation, `in + layers·growth` channels, input first.
 * The convs are the children `0…layers−1`, so their paths read `convs.3.weight`.
 *
 * NOTE: the output channel count is a plain `number` at the type level (no literal arithmetic);
 * `outChannels` holds the value, to size the fusion conv that follows.
 */
export function denseBlock<const I extends number>(o: DenseOptions<I>): Layer<I, number> {
  checkChannels(o.in, "denseBlock in");
  checkChannels(o.growth, "denseBlock growth");
  if (!(Number.isInteger(o.layers) && o.layers > 0)) {
    throw new RangeError(`denseBlock: layers must be a positive integer, got ${o.layers}`);
  }
  const children: Child[] = Array.from(
    { length: o.layers },
    (_, c) =>
      [String(c), conv2d({ in: o.in + c * o.growth, out: o.growth, kernel: o.kernel })] as const,
  );
  return denseOf(o.in, o.growth, children) as Layer<I, number>;
}

function concatOutputsOf(children: ReadonlyArray<Child>): AnyLayer {
  const first = children[0][1];
  for (const [name, l] of children) {
    if (l.inChannels !== first.inChannels || l.outChannels !== first.inChannels) {
      throw new Error(
        `concatOutputs: child ${name} must map ${first.inChannels} → ${first.inChannels} ` +
          `channels, got ${l.inChannels} → ${l.outChannels}`,
      );
    }
  }
  return {
    kind: "concatOutputs",
    inChannels: first.inChannels,
    outChannels: first.inChannels * children.length,
    children,
    meta: {},
    init: (key) => fromChildren(children).init(key),
    apply: (p, x, ctx) => {
      const outs: tf.Tensor[] = [];
      let y = x;
      for (const [name, l] of children) {
        y = l.apply((p[name] as Params | undefined) ?? {}, y, childContext(ctx, name));
        outs.push(y);
      }
      return outs.length === 1 ? outs[0] : tf.concat(outs, x.rank - 1);
    },
    rebuild: (next) => concatOutputsOf(next),
  };
}

/**
 * `n` layers of `C` channels applied one after another, keeping every output: the result is
 * the channel concatenation `[y₁, …, yₙ]` (`n·C` channels), as RDN feeds all its residual dense
 * blocks' outputs to global feature fusion. Children named `0…n−1`, like {@link repeat}.
 */
export function concatOutputs<C extends number>(
  n: number,
  make: (i: number) => Layer<C, C>,
): Layer<C, number> {
  if (!(Number.isInteger(n) && n > 0)) {
    throw new RangeError(`concatOutputs: n must be a positive integer, got ${n}`);
  }
  return concatOutputsOf(
    Array.from({ length: n }, (_, i) => [String(i), make(i)] as const),
  ) as Layer<C, number>;
}

/**
 * Nearest-neighbour upsampling by an integer `factor`: `[b, h, w, c] → [b, h·r, w·r, c]`, each
 * pixel repeated in an r×r square (Keras `UpSampling2D`, interpolation "nearest").
 *
 * NOTE: written as reshape → tile → reshape (exact, and tile has a gradient up to rank 4:
 * the sum over each r×r square) rather than `resizeNearestNeighbor`, whose source index is a
 * float product that could round down at integer factors.
 */
export function upsampleNearest<const C extends number>(
  o: { readonly channels: C; readonly factor: number },
): Layer<C, C> {
  const r = o.factor;
  checkChannels(o.channels, "upsampleNearest channels");
  if (!(Number.isInteger(r) && r > 0)) {
    throw new RangeError(`upsampleNearest: factor must be a positive integer, got ${r}`);
  }
  return leafLayer({
    kind: "upsampleNearest",
    inChannels: o.channels,
    outChannels: o.channels,
    meta: { factor: r },
    init: () => ({}),
    apply: (_p, x) => {
      const [b, h, w, c] = x.shape;
      if (x.rank !== 4 || c !== o.channels) {
        throw new Error(`upsampleNearest expects [b, h, w, ${o.channels}], got [${x.shape}]`);
      }
      if (r === 1) return x.clone();
      // [b·h, 1, w, c] → tile rows r times and each pixel's channels r times → [b, h·r, w·r, c].
      return x.reshape([b * h, 1, w, c]).tile([1, r, 1, r]).reshape([b, h * r, w * r, c]);
    },
  });
}
