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
import * as Kernels from "./Kernels.ts";
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
  /**
   * Receives the input of layers wrapped by {@link observeAt} (distillation features) and
   * tensors that layers or quantizers report by path (DDTB's gate logits at `….aq.gate`).
   */
  readonly observe?: (path: string, x: tf.Tensor) => void;
  /**
   * Receives new values of buffers (batch-norm running statistics) computed in a training
   * forward pass, by full parameter path; the training step stores them in the next state.
   */
  readonly buffer?: (path: string, value: tf.Tensor) => void;
}

/** A context for a forward pass at the root of a model. */
export const context = (
  mode: Ctx["mode"] = "eval",
  opts: {
    readonly step?: number;
    readonly tap?: (t: Tap) => void;
    readonly observe?: (path: string, x: tf.Tensor) => void;
    readonly buffer?: (path: string, value: tf.Tensor) => void;
  } = {},
): Ctx => ({
  mode,
  step: opts.step ?? 0,
  path: "",
  tap: opts.tap,
  observe: opts.observe,
  buffer: opts.buffer,
});

/** The context for a child named `name`. */
export const childContext = (ctx: Ctx, name: string): Ctx => ({
  ...ctx,
  path: ctx.path === "" ? name : `${ctx.path}.${name}`,
});

/** A named child of a composite layer. */
export type Child = readonly [name: string, layer: AnyLayer];

/** Static facts about a layer that the cost model, importers and tiling (lib/Tile.ts) read. */
export interface Meta {
  readonly kernel?: number;
  readonly bias?: boolean;
  readonly factor?: number;
  /**
   * For a layer of your own that mixes pixels: how far (in its input pixels) an output pixel
   * reaches, so that tiled inference overlaps enough. Built-in kinds need none.
   */
  readonly reach?: number;
  /** Tile origins must be multiples of this (e.g. an attention window). */
  readonly align?: number;
  /** The layer uses whole-image statistics: tiles cannot reproduce its output. */
  readonly global?: boolean;
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
      const weight = Tree.leaf<tf.Tensor4D>(p, "weight");
      if (!bias) return tf.conv2d(x as tf.Tensor4D, weight, 1, "same");
      // conv + bias as one op (FusedConv2D): on webgpu the bias is added in our conv kernel's
      // epilogue (lib/internal/kernels/register.ts); the gradients are conv2d's and the bias's
      // sum over N, H, W, as for the separate add.
      return tf.fused.conv2d({
        x: x as tf.Tensor4D,
        filter: weight,
        strides: 1,
        pad: "same",
        bias: Tree.leaf(p, "bias"),
      });
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

/**
 * The parameters of named children, each initialised from `Rng.fold(key, name)` and kept
 * under its name (children without parameters leave no entry).
 */
export function initChildren(children: ReadonlyArray<Child>, key: number): Params {
  const out: Record<string, Params> = {};
  for (const [name, l] of children) {
    const p = l.init(Rng.fold(key, name));
    if (Object.keys(p).length > 0) out[name] = p;
  }
  return out;
}

function fromChildren(children: ReadonlyArray<Child>): AnyLayer {
  return {
    kind: "sequential",
    inChannels: children[0][1].inChannels,
    outChannels: children[children.length - 1][1].outChannels,
    children,
    meta: {},
    init: (key) => initChildren(children, key),
    apply: (p, x, ctx) => {
      // Inference (no taps, no observers): free each child's intermediates as soon as it
      // returns, and the previous output once the next one exists, so the peak memory of a
      // forward pass is a few feature maps instead of all of them (lib/Tile.ts sizes tiles by it).
      const free = ctx.mode === "eval" && !ctx.tap && !ctx.observe;
      let y = x;
      for (const [name, l] of children) {
        const prev = y;
        const run = () =>
          l.apply((p[name] as Params | undefined) ?? {}, prev, childContext(ctx, name));
        y = free ? tf.tidy(run) : run();
        if (free && prev !== x && prev !== y) prev.dispose();
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
 * An identity layer that marks a place in the data flow (the skip path of a residual block,
 * a block's input): a quantization scheme can wrap it with an activation quantizer
 * (`Quant.wrap` with `input` only), which then quantizes the tensor in the data path itself,
 * as PAMS and DDTB place theirs. Unwrapped it costs nothing and has no parameters.
 */
export function point<const C extends number>(channels: C): Layer<C, C> {
  checkChannels(channels, "point channels");
  return leafLayer({
    kind: "point",
    inChannels: channels,
    outChannels: channels,
    meta: {},
    init: () => ({}),
    apply: (_p, x) => x,
  });
}

/** The marked places of a {@link residual}: its input, its skip path and its body output. */
export interface ResidualPoints {
  /** Applied to the block input; both paths read its output (RDN's RDB input, PAMS `act1`). */
  readonly input?: AnyLayer;
  /** Applied on the skip path only (EDSR's block shortcut, PAMS `quant_act1`). */
  readonly skip?: AnyLayer;
  /** Applied to the scaled body output before the add (PAMS `quant_act3`). */
  readonly out?: AnyLayer;
}

const POINT_NAMES = ["input", "skip", "out"] as const;

/**
 * `skip(y) + out(resScale · inner(y))` with `y = input(x)` (the points default to identity, so
 * plainly `x + resScale · inner(x)`). Transparent for parameter paths: the inner layer's
 * children are this layer's children, followed by the points named `input`, `skip`, `out`.
 */
export function residual<C extends number>(
  inner: Layer<C, NoInfer<C>>,
  resScale = 1,
  points: ResidualPoints = {},
): Layer<C, C> {
  const own = POINT_NAMES.flatMap((n) => (points[n] ? [[n, points[n]!] as const] : []));
  const at = (name: (typeof POINT_NAMES)[number], p: Params, x: tf.Tensor, ctx: Ctx) => {
    const l = points[name];
    return l ? l.apply((p[name] as Params | undefined) ?? {}, x, childContext(ctx, name)) : x;
  };
  return {
    kind: "residual",
    inChannels: inner.inChannels,
    outChannels: inner.outChannels,
    name: inner.name,
    children: [...inner.children, ...own],
    meta: { resScale },
    init: (key) => ({ ...inner.init(key), ...initChildren(own, key) }),
    apply: (p, x, ctx) => {
      const y = at("input", p, x, ctx);
      const body = inner.apply(p, y, ctx);
      const scaled = resScale === 1 ? body : tf.mul(body, resScale);
      return tf.add(at("skip", p, y, ctx), at("out", p, scaled, ctx));
    },
    rebuild: (children) => {
      const n = inner.children.length;
      const next = Object.fromEntries(children.slice(n)) as ResidualPoints;
      return residual(inner.rebuild(children.slice(0, n)), resScale, next);
    },
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

/**
 * The model with the layer at `path` reporting its input through `ctx.observe` (e.g. the body
 * output that enters the upsampler, for distillation). Parameters, kinds and costs are
 * unchanged: the wrapper only adds the report.
 */
export function observeAt<L extends AnyLayer>(model: L, path: string): L {
  let found = false;
  const observed = (layer: AnyLayer): AnyLayer => ({
    ...layer,
    apply: (p, x, ctx) => {
      ctx.observe?.(ctx.path, x);
      return layer.apply(p, x, ctx);
    },
    rebuild: (children) => observed(layer.rebuild(children)),
  });
  const out = transform(model, (q, layer) => {
    if (q !== path) return undefined;
    found = true;
    return observed(layer);
  });
  if (!found) throw new Error(`observeAt: the model has no layer at "${path}"`);
  return out;
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
  /** Mark the input of every step after the first with a {@link point} `in<c>` (default false). */
  readonly points?: boolean;
}

/** The name of the point before dense step `c` (step 0 has none: the block input is its own). */
const densePoint = (c: number) => `in${c}`;

function denseOf(inChannels: number, growth: number, children: ReadonlyArray<Child>): AnyLayer {
  const steps = children.filter(([name]) => !name.startsWith("in"));
  const points = new Map(children.filter(([name]) => name.startsWith("in")));
  steps.forEach(([name, l], c) => {
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
    outChannels: inChannels + steps.length * growth,
    children,
    meta: { growth },
    init: (key) => initChildren(children, key),
    apply: (p, x, ctx) => {
      let features = x;
      for (const [c, [name, l]] of steps.entries()) {
        // The point before step c replaces the features that step c and all later steps read
        // (PAMS/DDTB quantize the concatenation there: `x = self.act(x)` for i > 0).
        const mark = points.get(densePoint(c));
        if (mark) {
          const n = densePoint(c);
          features = mark.apply((p[n] as Params | undefined) ?? {}, features, childContext(ctx, n));
        }
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
  const children: Child[] = Array.from({ length: o.layers }, (_, c) => {
    const conv: Child = [
      String(c),
      conv2d({ in: o.in + c * o.growth, out: o.growth, kernel: o.kernel }),
    ];
    const mark: Child = [densePoint(c), point(o.in + c * o.growth)];
    return c > 0 && o.points ? [mark, conv] : [conv];
  }).flat();
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
    init: (key) => initChildren(children, key),
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
 * NOTE: an exact gather (lib/Kernels.ts `upsampleNearest`: one op, its gradient the sum over
 * each r×r square) rather than `resizeNearestNeighbor`, whose source index is a float product
 * that could round down at integer factors.
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
      const c = x.shape[3];
      if (x.rank !== 4 || c !== o.channels) {
        throw new Error(`upsampleNearest expects [b, h, w, ${o.channels}], got [${x.shape}]`);
      }
      if (r === 1) return x.clone();
      // One op and a one-op gradient (the tile composite was 32 dispatches a step at ×4).
      return Kernels.upsampleNearest(x as tf.Tensor4D, r);
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Layers of the other networks of the paper: SRResNet (batch norm, PReLU) and SwinIR-S
// (linear, layer norm, GELU, shifted-window attention, Swin blocks, RSTB).
// ---------------------------------------------------------------------------------------------

// NOTE: an import below the first statements is still hoisted (ES modules); it sits here so
// that the code above stays unchanged.
import * as Ste from "./Ste.ts";

/** Applies the child `name` of a {@link composite} to `x`, with its parameters and path. */
export type Run = (name: string, x: tf.Tensor) => tf.Tensor;

/** Options of {@link composite}. */
export interface CompositeOptions<I extends number, O extends number> {
  readonly kind: string;
  readonly in: I;
  readonly out: O;
  /** Named children; their parameters live under their names. */
  readonly children: ReadonlyArray<Child>;
  readonly meta?: Meta;
  /** Parameters of the layer itself, beside its children's (e.g. a bias table). */
  readonly params?: (key: number) => Params;
  /** The forward pass; `run(name, x)` applies a child (the current one, quantized or not). */
  readonly forward: (run: Run, p: Params, x: tf.Tensor, ctx: Ctx) => tf.Tensor;
}

/**
 * A composite layer with a forward pass of its own over named children (a global skip, a
 * block with two residual branches, …). Rebuilding it (quantization) keeps the forward pass
 * and swaps the children; the child paths are `name.…` as for {@link sequential}.
 */
export function composite<const I extends number, const O extends number>(
  o: CompositeOptions<I, O>,
): Layer<I, O> {
  const byName = new Map<string, AnyLayer>(o.children.map(([n, l]) => [n, l]));
  if (byName.size !== o.children.length) {
    throw new Error(`${o.kind}: duplicate child names [${o.children.map(([n]) => n)}]`);
  }
  return {
    kind: o.kind,
    inChannels: o.in,
    outChannels: o.out,
    children: o.children,
    meta: o.meta ?? {},
    init: (key) => {
      const out = initChildren(o.children, key);
      return o.params ? { ...out, ...o.params(key) } : out;
    },
    apply: (p, x, ctx) =>
      o.forward(
        (name, t) => {
          const l = byName.get(name);
          if (!l) throw new Error(`${o.kind}: no child "${name}"`);
          return l.apply((p[name] as Params | undefined) ?? {}, t, childContext(ctx, name));
        },
        p,
        x,
        ctx,
      ),
    rebuild: (next) => composite({ ...o, children: next }),
  };
}

/** `n` normals with standard deviation `std`, truncated to ±2 (timm's `trunc_normal_`). */
const truncNormal = (key: number, n: number, std: number): Float32Array =>
  Rng.normal(key, n, 0, std).map((v) => Math.min(2, Math.max(-2, v)));

/** Options of {@link linear}. */
export interface LinearOptions<I extends number, O extends number> {
  readonly in: I;
  readonly out: O;
  /** Add a bias (default true). */
  readonly bias?: boolean;
  /**
   * Initialise the weight from a normal with this standard deviation (truncated at ±2, timm's
   * `trunc_normal_`) and the bias with zeros, as Swin/SwinIR do; default PyTorch's
   * `nn.Linear` init (uniform ±1/√in for both).
   */
  readonly std?: number;
}

/**
 * A fully connected layer on the last dimension of an input of any rank:
 * `y = x · W + b`, weight `[in, out]` (PyTorch stores `[out, in]`: transpose on import).
 * Quantization wraps it like a conv (kind `linear`, parameter `weight`).
 */
export function linear<const I extends number, const O extends number>(
  o: LinearOptions<I, O>,
): Layer<I, O> {
  const bias = o.bias ?? true;
  checkChannels(o.in, "linear in");
  checkChannels(o.out, "linear out");
  const bound = 1 / Math.sqrt(o.in);
  return leafLayer({
    kind: "linear",
    inChannels: o.in,
    outChannels: o.out,
    meta: { bias },
    init: (key): Params => {
      const n = o.in * o.out;
      const w = o.std === undefined
        ? Rng.uniform(Rng.fold(key, "weight"), n, -bound, bound)
        : truncNormal(Rng.fold(key, "weight"), n, o.std);
      const weight = tf.tensor2d(w, [o.in, o.out]);
      if (!bias) return { weight };
      const b = o.std === undefined
        ? Rng.uniform(Rng.fold(key, "bias"), o.out, -bound, bound)
        : new Float32Array(o.out);
      return { weight, bias: tf.tensor1d(b) };
    },
    apply: (p, x) => {
      if (lastDim(x) !== o.in) {
        throw new Error(`linear expects ${o.in} input features, got shape [${x.shape}]`);
      }
      const lead = x.shape.slice(0, -1);
      const y = tf.matMul(
        x.reshape([-1, o.in]) as tf.Tensor2D,
        Tree.leaf<tf.Tensor2D>(p, "weight"),
      );
      return (bias ? tf.add(y, Tree.leaf(p, "bias")) : y).reshape([...lead, o.out]);
    },
  });
}

/**
 * Layer normalisation over the last dimension (PyTorch `nn.LayerNorm(channels)`):
 * `(x − mean) / √(var + eps) · weight + bias`, biased variance, weight 1 and bias 0 at init.
 *
 * NOTE: written with mean/sub/square rather than `tf.moments`, whose SquaredDifference
 * gradient does not reduce the broadcast mean (tfjs 4.22); tests/swinir.test.ts checks the
 * gradients against finite differences.
 */
export function layerNorm<const C extends number>(
  o: { readonly channels: C; readonly eps?: number },
): Layer<C, C> {
  const eps = o.eps ?? 1e-5;
  checkChannels(o.channels, "layerNorm channels");
  return leafLayer({
    kind: "layerNorm",
    inChannels: o.channels,
    outChannels: o.channels,
    meta: { eps },
    init: () => ({ weight: tf.ones([o.channels]), bias: tf.zeros([o.channels]) }),
    apply: (p, x) => {
      if (lastDim(x) !== o.channels) {
        throw new Error(`layerNorm expects ${o.channels} channels, got shape [${x.shape}]`);
      }
      const axis = x.rank - 1;
      const d = tf.sub(x, tf.mean(x, axis, true));
      const inv = tf.rsqrt(tf.add(tf.mean(tf.square(d), axis, true), eps));
      return tf.add(tf.mul(tf.mul(d, inv), Tree.leaf(p, "weight")), Tree.leaf(p, "bias"));
    },
  });
}

/** The parameter names of batch-norm running statistics (buffers, not trained). */
export const BUFFER_NAMES = ["running_mean", "running_var"] as const;

/** True for a parameter path that is a buffer (batch-norm running statistics), not a weight. */
export const isBuffer = (path: string): boolean => /(^|\.)(running_mean|running_var)$/.test(path);

/** Options of {@link batchNorm}. */
export interface BatchNormOptions<C extends number> {
  readonly channels: C;
  /** Added to the variance (default 1e-5, PyTorch). */
  readonly eps?: number;
  /** PyTorch's running-statistics momentum (default 0.1); recorded for importers, see below. */
  readonly momentum?: number;
  /**
   * `batch` (default, PyTorch `train()`): batch statistics when `ctx.mode` is `train`, the
   * running statistics otherwise. `running` (PyTorch `eval()` on the BN, "frozen BN"): the
   * running statistics always.
   */
  readonly statistics?: "batch" | "running";
}

/**
 * Batch normalisation over NHWC channels (PyTorch `nn.BatchNorm2d`): parameters `weight` (1),
 * `bias` (0) and the buffers `running_mean` (0), `running_var` (1) in the same tree, so that
 * checkpoints and importers carry them.
 *
 * The buffers are constants: they enter the forward pass through a stop-gradient, so the
 * training step gives them an exact zero gradient and Adam leaves them unchanged (a zero
 * gradient gives a zero update), and nothing updates them: our training step is pure and
 * returns no layer state, so `momentum` is not applied. Hence for QAT from a pretrained FP
 * model the BN is either folded into the preceding conv ({@link foldBatchNorm}) or kept with
 * `statistics: "running"` (frozen: train and eval compute the same function). With
 * `statistics: "batch"`, training normalises by batch statistics (biased variance) while
 * evaluation uses the stale running ones. {@link isBuffer} tells buffers from parameters
 * (PyTorch counts only `weight` and `bias` as parameters).
 */
export function batchNorm<const C extends number>(o: BatchNormOptions<C>): Layer<C, C> {
  const eps = o.eps ?? 1e-5;
  const momentum = o.momentum ?? 0.1;
  const statistics = o.statistics ?? "batch";
  checkChannels(o.channels, "batchNorm channels");
  return leafLayer({
    kind: "batchNorm",
    inChannels: o.channels,
    outChannels: o.channels,
    meta: { eps, momentum, statistics },
    init: () => ({
      weight: tf.ones([o.channels]),
      bias: tf.zeros([o.channels]),
      running_mean: tf.zeros([o.channels]),
      running_var: tf.ones([o.channels]),
    }),
    apply: (p, x, ctx) => {
      if (lastDim(x) !== o.channels) {
        throw new Error(`batchNorm expects ${o.channels} channels, got shape [${x.shape}]`);
      }
      const w = Tree.leaf(p, "weight");
      const b = Tree.leaf(p, "bias");
      if (statistics === "batch" && ctx.mode === "train") {
        const axes = Array.from({ length: x.rank - 1 }, (_, i) => i);
        const mean = tf.mean(x, axes);
        const d = tf.sub(x, mean);
        const variance = tf.mean(tf.square(d), axes);
        const inv = tf.rsqrt(tf.add(variance, eps));
        if (ctx.buffer) {
          // PyTorch's update: `r ← (1 − m)·r + m·batch`, the variance unbiased (n/(n − 1)).
          const n = x.size / o.channels;
          const unbiased = tf.mul(Ste.stopGradient(variance), n / Math.max(1, n - 1));
          const at = (k: string) => (ctx.path === "" ? k : `${ctx.path}.${k}`);
          const blend = (k: string, v: tf.Tensor) =>
            ctx.buffer!(at(k), tf.add(tf.mul(Tree.leaf(p, k), 1 - momentum), tf.mul(v, momentum)));
          blend("running_mean", Ste.stopGradient(mean));
          blend("running_var", unbiased);
        }
        return tf.add(tf.mul(d, tf.mul(inv, w)), b);
      }
      const mean = Ste.stopGradient(Tree.leaf(p, "running_mean"));
      const inv = tf.rsqrt(tf.add(Ste.stopGradient(Tree.leaf(p, "running_var")), eps));
      return tf.add(tf.mul(tf.sub(x, mean), tf.mul(inv, w)), b);
    },
  });
}

/**
 * PReLU (PyTorch `nn.PReLU`): `max(0, x) + a · min(0, x)`, one slope per channel, or one slope
 * for all channels with `shared` (PyTorch's default `num_parameters=1`); slopes start at 0.25.
 */
export function prelu<const C extends number>(
  o: { readonly channels: C; readonly shared?: boolean; readonly init?: number },
): Layer<C, C> {
  checkChannels(o.channels, "prelu channels");
  const n = o.shared ? 1 : o.channels;
  return leafLayer({
    kind: "prelu",
    inChannels: o.channels,
    outChannels: o.channels,
    meta: { shared: o.shared ?? false },
    init: () => ({ weight: tf.fill([n], o.init ?? 0.25) }),
    apply: (p, x) => {
      if (lastDim(x) !== o.channels) {
        throw new Error(`prelu expects ${o.channels} channels, got shape [${x.shape}]`);
      }
      // relu(x) − a·relu(−x): broadcast gradients of mul reduce over the batch and pixels.
      return tf.sub(tf.relu(x), tf.mul(Tree.leaf(p, "weight"), tf.relu(tf.neg(x))));
    },
  });
}

/** GELU, exact form `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch `nn.GELU()`). */
export function gelu<const C extends number>(channels: C): Layer<C, C> {
  return leafLayer({
    kind: "gelu",
    inChannels: channels,
    outChannels: channels,
    meta: {},
    init: () => ({}),
    apply: (_p, x) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)),
  });
}

/** `torch.roll(x, shift, axis)`: `y[i] = x[(i − shift) mod n]` along `axis`. */
export function roll(x: tf.Tensor, shift: number, axis: number): tf.Tensor {
  const n = x.shape[axis];
  const k = ((shift % n) + n) % n;
  if (k === 0) return x;
  const begin = x.shape.map(() => 0);
  const head = tf.slice(
    x,
    begin.map((b, i) => (i === axis ? n - k : b)),
    x.shape.map((s, i) => i === axis ? k : s),
  );
  const tail = tf.slice(x, begin, x.shape.map((s, i) => (i === axis ? n - k : s)));
  return tf.concat([head, tail], axis);
}

/**
 * Swin's `window_partition`: `[b, h, w, c] → [b·(h/ws)·(w/ws), ws·ws, c]`, windows in row-major
 * order per image, tokens in row-major order per window.
 */
export function windowPartition(x: tf.Tensor, window: number): tf.Tensor {
  const [b, h, w, c] = x.shape;
  if (x.rank !== 4 || h % window !== 0 || w % window !== 0) {
    throw new Error(
      `windowPartition: [b, h, w, c] with h, w multiples of ${window}, got [${x.shape}]`,
    );
  }
  return x.reshape([b, h / window, window, w / window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    .reshape([b * (h / window) * (w / window), window * window, c]);
}

/** Swin's `window_reverse`, the inverse of {@link windowPartition}: `→ [b, h, w, c]`. */
export function windowReverse(windows: tf.Tensor, window: number, h: number, w: number): tf.Tensor {
  const c = windows.shape[windows.rank - 1];
  const b = windows.shape[0] / ((h / window) * (w / window));
  return windows.reshape([b, h / window, w / window, window, window, c]).transpose([
    0,
    1,
    3,
    2,
    4,
    5,
  ]).reshape([b, h, w, c]);
}

/**
 * Swin's `relative_position_index`: for tokens `a`, `b` of a ws×ws window (row-major), the row
 * of the bias table, `(Δrow + ws − 1)·(2ws − 1) + (Δcol + ws − 1)` with `Δ = a − b`.
 */
export function relativePositionIndex(window: number): Int32Array {
  const n = window * window;
  const out = new Int32Array(n * n);
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      const dr = Math.floor(a / window) - Math.floor(b / window);
      const dc = (a % window) - (b % window);
      out[a * n + b] = (dr + window - 1) * (2 * window - 1) + (dc + window - 1);
    }
  }
  return out;
}

/**
 * SwinIR's `calculate_mask` for a shifted `h × w` map: `[nW, ws², ws²]`, 0 where two tokens of
 * a window come from the same region of the unshifted map and −100 where they do not.
 */
export function shiftedWindowMask(
  h: number,
  w: number,
  window: number,
  shift: number,
): Float32Array {
  const region = (i: number, n: number) => (i < n - window ? 0 : i < n - shift ? 1 : 2);
  const nh = h / window, nw = w / window, n = window * window;
  const out = new Float32Array(nh * nw * n * n);
  for (let wi = 0; wi < nh; wi++) {
    for (let wj = 0; wj < nw; wj++) {
      const base = (wi * nw + wj) * n * n;
      const label = (t: number) =>
        region(wi * window + Math.floor(t / window), h) * 3 + region(wj * window + (t % window), w);
      for (let a = 0; a < n; a++) {
        for (let b = 0; b < n; b++) out[base + a * n + b] = label(a) === label(b) ? 0 : -100;
      }
    }
  }
  return out;
}

/** Options of {@link windowAttention}. */
export interface WindowAttentionOptions<C extends number> {
  readonly channels: C;
  readonly heads: number;
  /** Window side ws (SwinIR-S: 8). */
  readonly window: number;
  /** Cyclic shift (0: W-MSA; ws/2: SW-MSA with the attention mask). */
  readonly shift?: number;
  /** Scale of q·k (default head_dim^−0.5). */
  readonly qkScale?: number;
}

/**
 * (Shifted) window multi-head self-attention over an NHWC map whose sides are multiples of the
 * window: Swin's `roll(−shift)` → `window_partition` → `WindowAttention` (qkv linear, scaled
 * q·kᵀ + relative position bias (+ the shift mask), softmax, ·v, proj linear) →
 * `window_reverse` → `roll(+shift)`. Children `qkv` (C → 3C) and `proj` (C → C), both
 * quantizable; own parameter `relative_position_bias_table` `[(2ws − 1)², heads]` (trunc
 * normal, std 0.02). The attention matmuls themselves are not layers (not quantized).
 */
export function windowAttention<const C extends number>(
  o: WindowAttentionOptions<C>,
): Layer<C, C> {
  const { channels: c, heads, window: ws } = o;
  const shift = o.shift ?? 0;
  checkChannels(c, "windowAttention channels");
  if (!(Number.isInteger(heads) && heads > 0 && c % heads === 0)) {
    throw new RangeError(`windowAttention: heads (${heads}) must divide channels (${c})`);
  }
  if (!(Number.isInteger(shift) && shift >= 0 && shift < ws)) {
    throw new RangeError(`windowAttention: shift must be in [0, ${ws}), got ${shift}`);
  }
  const hd = c / heads;
  const scale = o.qkScale ?? hd ** -0.5;
  const n = ws * ws;
  const index = relativePositionIndex(ws);
  const masks = new Map<string, Float32Array>();
  const maskOf = (h: number, w: number) => {
    const k = `${h}x${w}`;
    let m = masks.get(k);
    if (!m) masks.set(k, m = shiftedWindowMask(h, w, ws, shift));
    return m;
  };
  return composite({
    kind: "windowAttention",
    in: c,
    out: c,
    children: [
      ["qkv", linear({ in: c, out: 3 * c, std: 0.02 })],
      ["proj", linear({ in: c, out: c, std: 0.02 })],
    ],
    meta: { heads, window: ws, shift, qkScale: scale },
    params: (key) => ({
      relative_position_bias_table: tf.tensor2d(
        truncNormal(Rng.fold(key, "relative_position_bias_table"), (2 * ws - 1) ** 2 * heads, 0.02),
        [(2 * ws - 1) ** 2, heads],
      ),
    }),
    // NOTE: no tf.tidy here: a quantized qkv/proj reports its input through ctx.tap, and the
    // training step reads those tensors after the forward pass (the caller's tidy frees them).
    forward: (run, p, x) => {
      const [b, h, w] = x.shape;
      if (x.rank !== 4 || lastDim(x) !== c || h % ws !== 0 || w % ws !== 0) {
        throw new Error(
          `windowAttention expects [b, h, w, ${c}] with h, w multiples of ${ws}, got [${x.shape}]`,
        );
      }
      const nW = (h / ws) * (w / ws);
      const bw = b * nW;
      const shifted = shift > 0 ? roll(roll(x, -shift, 1), -shift, 2) : x;
      const qkv = run("qkv", windowPartition(shifted, ws)) // [bw, n, 3c]
        .reshape([bw, n, 3, heads, hd]).transpose([2, 0, 3, 1, 4]).reshape([
          3,
          bw * heads,
          n,
          hd,
        ]);
      const [q, k, v] = tf.split(qkv, 3, 0).map((t) => t.reshape([bw * heads, n, hd]));
      let attn = tf.matMul(tf.mul(q, scale), k, false, true).reshape([bw, heads, n, n]);
      const table = Tree.leaf(p, "relative_position_bias_table");
      const bias = tf.gather(table, tf.tensor1d(index, "int32")).reshape([n, n, heads])
        .transpose([2, 0, 1]);
      attn = tf.add(attn, bias);
      if (shift > 0) {
        const mask = tf.tensor(maskOf(h, w), [1, nW, 1, n, n]);
        attn = tf.add(attn.reshape([b, nW, heads, n, n]), mask);
      }
      const probs = tf.softmax(attn.reshape([bw * heads, n, n]));
      const out = tf.matMul(probs, v).reshape([bw, heads, n, hd]).transpose([0, 2, 1, 3])
        .reshape([bw, n, c]);
      const merged = windowReverse(run("proj", out), ws, h, w);
      return shift > 0 ? roll(roll(merged, shift, 1), shift, 2) : merged;
    },
  });
}

/** Swin's `Mlp`: `fc1` (C → hidden), GELU, `fc2` (hidden → C), trunc-normal init. */
export function mlp<const C extends number>(
  o: { readonly channels: C; readonly hidden: number },
): Layer<C, C> {
  return sequential(
    named("fc1", linear({ in: o.channels, out: o.hidden, std: 0.02 })),
    named("act", gelu(o.hidden)),
    named("fc2", linear({ in: o.hidden, out: o.channels, std: 0.02 })),
  );
}

/** Options of {@link swinBlock}. */
export interface SwinBlockOptions<C extends number> {
  readonly channels: C;
  readonly heads: number;
  readonly window: number;
  /** 0 (W-MSA) or ws/2 (SW-MSA). */
  readonly shift?: number;
  /** MLP hidden size over channels (Swin 4, SwinIR-S 2). */
  readonly mlpRatio?: number;
}

/**
 * A Swin transformer block (SwinIR's `SwinTransformerBlock`) on an NHWC map:
 * `y = x + attn(norm1(x))`, `out = y + mlp(norm2(y))`. Children `norm1`, `attn`, `norm2`, `mlp`.
 */
export function swinBlock<const C extends number>(o: SwinBlockOptions<C>): Layer<C, C> {
  const c = o.channels;
  const hidden = Math.floor(c * (o.mlpRatio ?? 4));
  return composite({
    kind: "swinBlock",
    in: c,
    out: c,
    children: [
      ["norm1", layerNorm({ channels: c })],
      ["attn", windowAttention({ channels: c, heads: o.heads, window: o.window, shift: o.shift })],
      ["norm2", layerNorm({ channels: c })],
      ["mlp", mlp({ channels: c, hidden })],
    ],
    meta: { heads: o.heads, window: o.window, shift: o.shift ?? 0, mlpRatio: o.mlpRatio ?? 4 },
    forward: (run, _p, x) => {
      const y = tf.add(x, run("attn", run("norm1", x)));
      return tf.add(y, run("mlp", run("norm2", y)));
    },
  });
}

/** Options of {@link rstb}. */
export interface RstbOptions<C extends number> {
  readonly channels: C;
  /** Swin blocks in the group (SwinIR-S: 6). */
  readonly depth: number;
  readonly heads: number;
  readonly window: number;
  readonly mlpRatio?: number;
}

/**
 * SwinIR's residual Swin transformer block: `x + conv(blocks(x))` with `depth` Swin blocks,
 * shifted by ws/2 on odd blocks, and a 3×3 conv ("1conv"). Paths follow SwinIR's state dict:
 * `residual_group.blocks.{j}.attn.qkv`, …, `conv`. SwinIR's patch embed / unembed inside the
 * RSTB are reshapes between tokens and maps, which NHWC makes identities.
 */
export function rstb<const C extends number>(o: RstbOptions<C>): Layer<C, C> {
  const shift = Math.floor(o.window / 2);
  const blocks = repeat<C>(o.depth, (j) =>
    swinBlock({
      channels: o.channels,
      heads: o.heads,
      window: o.window,
      shift: j % 2 === 0 ? 0 : shift,
      mlpRatio: o.mlpRatio,
    }));
  return residual(
    sequential(
      named("residual_group", sequential(named("blocks", blocks))),
      named("conv", conv2d({ in: o.channels, out: o.channels })),
    ),
  );
}

/**
 * Folds every batch norm that directly follows a conv in a {@link sequential} (or the inner
 * sequential of a {@link residual}) into that conv, for QAT of a pretrained FP model whose BN
 * is folded (the running statistics are used, as in evaluation):
 * `W' = W · γ/√(σ² + ε)` per output channel, `b' = (b − μ) · γ/√(σ² + ε) + β`. The conv gains
 * a bias, the BN disappears (its parameters too). Fold before quantizing. Returns the new model
 * and a new parameter tree of new tensors (`params` is left as it is, for the caller to dispose).
 */
export function foldBatchNorm<L extends AnyLayer>(
  model: L,
  params: Params,
): { readonly model: L; readonly params: Params } {
  const out = new Map([...Tree.flatten(params)].map(([p, t]) => [p, t.clone()] as const));
  const key = (path: string, name: string) => (path === "" ? name : `${path}.${name}`);
  const visit = (layer: AnyLayer, path: string): AnyLayer => {
    if (layer.children.length === 0) return layer;
    let children: Child[] = layer.children.map(([name, child]) =>
      [name, visit(child, key(path, name))] as const
    );
    if (layer.kind === "sequential" || layer.kind === "residual") {
      const kept: Child[] = [];
      for (let i = 0; i < children.length; i++) {
        const [name, child] = children[i];
        const next = children[i + 1];
        if (child.kind === "conv2d" && next && next[1].kind === "batchNorm") {
          const convPath = key(path, name), bnPath = key(path, next[0]);
          const get = (p: string) => {
            const t = out.get(p);
            if (!t) throw new Error(`foldBatchNorm: parameter "${p}" is missing`);
            return t;
          };
          const eps = next[1].meta.eps as number;
          const [w, b] = tf.tidy(() => {
            const s = tf.mul(
              get(`${bnPath}.weight`),
              tf.rsqrt(tf.add(get(`${bnPath}.running_var`), eps)),
            );
            const bias0 = out.get(`${convPath}.bias`) ?? tf.zerosLike(s);
            return [
              tf.mul(get(`${convPath}.weight`), s),
              tf.add(
                tf.mul(tf.sub(bias0, get(`${bnPath}.running_mean`)), s),
                get(`${bnPath}.bias`),
              ),
            ];
          });
          for (const k of ["weight", "bias"]) out.get(`${convPath}.${k}`)?.dispose();
          for (const k of ["weight", "bias", ...BUFFER_NAMES]) {
            out.get(`${bnPath}.${k}`)?.dispose();
            out.delete(`${bnPath}.${k}`);
          }
          out.set(`${convPath}.weight`, w);
          out.set(`${convPath}.bias`, b);
          const kernel = child.meta.kernel as number;
          kept.push([name, {
            ...conv2d({ in: child.inChannels, out: child.outChannels, kernel }),
            name: child.name,
          }]);
          i++;
        } else kept.push([name, child]);
      }
      children = kept;
    }
    return { ...layer.rebuild(children), name: layer.name };
  };
  const folded = visit(model, "") as L;
  return { model: folded, params: Tree.unflatten(out) };
}
