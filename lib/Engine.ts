/**
 * The inference engine: a trained or packed model run with integer kernels for its quantized
 * convolutions (lib/internal/kernels/intconv.ts) and our float kernels for everything else.
 *
 * {@link prepare} takes a model and its parameters (a run folder's checkpoint or a packed file,
 * as lib/Upscale.ts loads them) and replaces every eligible quantized layer by one whose forward
 * computes, from the weight codes and the input activation codes of Eq. 1 (SPEC §1),
 *
 *   `y = b + s_a·(s_w·Σa·k + l_w·Σa) + l_a·(s_w·Σk + l_w·Cnt)`
 *
 * with the sums exact in integers: the fake-quant conv `conv(q(x), q(W)) + b` to float
 * rounding. Eligible: a conv (stride 1, "same", odd k; the 3×3 and 1×1 of our models) whose
 * weight and input quantizers are both static Eq. 1 grids of 1–5 bits (lib/Export.ts's
 * `collect` reads the codes from the fake-quant kernel's own output, so they are the training
 * forward's codes). Every other layer, and every layer on an input too large for the adapter,
 * keeps the float path; {@link Engine.plan} says which layer runs where and why.
 *
 * `kind: "float"` returns the model unchanged (the fake-quant float path); `"auto"` (the default)
 * uses the integer kernels only where they are faster (see {@link Kind}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Export from "./Export.ts";
import * as Nn from "./Nn.ts";
import * as Quant from "./Quant.ts";
import * as Tree from "./Tree.ts";
import type { Params } from "./Tree.ts";
import * as Int from "./internal/kernels/intconv.ts";
import * as Register from "./internal/kernels/register.ts";
import { type CpuBackend } from "./internal/kernels/cpu.ts";

/**
 * Which engine runs the quantized layers: `int` every eligible layer on the integer kernels,
 * `float` none (the fake-quant float path), `auto` the eligible layers whose codes pack 4 to a
 * u32 word (weights and inputs of ≤ 3 bits): on lavapipe those are faster than our FP32 conv,
 * 4-bit layers (2 codes a word) are not (bench/intconv.ts), so they stay on the float path.
 */
export type Kind = "auto" | "int" | "float";

/** The kinds, for option parsers. */
export const KINDS = ["auto", "int", "float"] as const;

/** One line for logs: how many quantized layers run on the integer kernels. */
export function describe(e: Engine): string {
  const int = e.plan.filter((p) => p.engine === "int").length;
  return `${e.kind}: ${int} of ${e.plan.length} quantized layers on the integer kernels`;
}

/** Where one quantized layer runs. */
export interface LayerPlan {
  readonly path: string;
  readonly engine: "int" | "float";
  readonly wbits: number;
  readonly abits: number;
  /** Why a quantized layer stays on the float path. */
  readonly reason?: string;
}

/** A prepared model. */
export interface Engine {
  readonly kind: Kind;
  /** The model to apply (same parameters, same paths). */
  readonly model: Nn.AnyLayer;
  readonly params: Params;
  readonly plan: ReadonlyArray<LayerPlan>;
  /** Frees the integer layers' device resources. */
  readonly dispose: () => void;
}

/** Options of {@link prepare}. */
export interface Options {
  readonly kind?: Kind;
  /** The conv kernel's register tile (default {@link Int.tileFor} the layer's layout). */
  readonly tile?: Int.Tile;
}

const KERNEL = "QatIntConv";

interface Entry {
  readonly host: Int.HostLayer;
  readonly layout: Int.Layout;
  readonly tile: Int.Tile;
  device?: Int.DeviceLayer;
}

const entries = new Map<number, Entry>();
let nextId = 1;

function limits(): Int.Limits {
  const t = Register.state.tuning;
  return { maxTexture: t?.maxTexture ?? 8192, maxBinding: t?.maxBinding ?? 128 * 1024 * 1024 };
}

/** The device copy of an entry's weights, uploaded on first use by the webgpu backend. */
function deviceOf(e: Entry, backend: object): Int.DeviceLayer {
  if (!e.device) {
    const storage = Register.state.tuning?.storage ?? "buffer";
    e.device = Int.upload(Register.gpuOf(backend).device, e.host, e.layout, storage, e.tile);
  }
  return e.device;
}

let registered = false;

/** Registers `QatIntConv` on webgpu (the WGSL kernels) and cpu (the scalar reference). */
function register(): void {
  if (registered) return;
  registered = true;
  const entryOf = (attrs: unknown) => {
    const e = entries.get((attrs as { layer: number }).layer);
    if (!e) throw new Error("QatIntConv: the engine holding this layer was disposed");
    return e;
  };
  tf.registerKernel({
    kernelName: KERNEL,
    backendName: "webgpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x } = inputs as { x: tf.TensorInfo };
      const gpu = Register.gpuOf(backend);
      const out = Int.run(gpu, deviceOf(entryOf(attrs), backend), x, limits());
      gpu.endOp(Register.state.batch);
      return out;
    },
  });
  tf.registerKernel({
    kernelName: KERNEL,
    backendName: "cpu",
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x } = inputs as { x: tf.TensorInfo };
      const b = backend as unknown as CpuBackend;
      const e = entryOf(attrs);
      const y = Int.reference(
        e.host,
        b.readSync(x.dataId) as Float32Array,
        x.shape as [number, number, number, number],
      );
      return b.makeTensorInfo([...x.shape.slice(0, 3), e.host.cout], "float32", y);
    },
  });
}

/** Whether an input of this shape can run on the integer kernel now. */
function runsInt(e: Entry, shape: readonly number[]): boolean {
  if (tf.getBackend() !== "webgpu") return true;
  const d = deviceOf(e, tf.backend());
  return Int.fits(d, shape, limits());
}

/**
 * The integer conv of one quantized layer, from its host data (codes, grids, bias). Exposed for
 * tests and benchmarks; {@link prepare} builds these for a whole model.
 */
export function intConv(host: Int.HostLayer, tile?: Int.Tile): {
  readonly apply: (x: tf.Tensor4D) => tf.Tensor4D;
  /** Whether an input of this shape fits the adapter (else run the float path). */
  readonly fits: (shape: readonly number[]) => boolean;
  readonly dispose: () => void;
} {
  const layout = Int.layoutOf(host.weight.bits, host.input.bits);
  if (!layout) {
    throw new Error(`intConv: no integer layout for W${host.weight.bits}A${host.input.bits}`);
  }
  register();
  const id = nextId++;
  const e: Entry = { host, layout, tile: tile ?? Int.tileFor(layout) };
  entries.set(id, e);
  return {
    apply: (x) => tf.engine().runKernel(KERNEL, { x }, { layer: id }) as tf.Tensor4D,
    fits: (shape) => runsInt(e, shape),
    dispose: () => {
      // Pending work goes first: a destroyed resource must not be in an unsubmitted encoder.
      const gpu = tf.getBackend() === "webgpu" ? Register.gpuOf(tf.backend()) : undefined;
      if (e.device) {
        gpu?.flush();
        Int.release(e.device);
      }
      entries.delete(id);
      if (entries.size === 0 && gpu) Int.trim();
    },
  };
}

/** Why a quantized layer cannot run on the integer kernel, or its host data. */
async function hostOf(
  layer: Quant.Quantized,
  p: Params,
): Promise<Int.HostLayer | string> {
  if (layer.inner.kind !== "conv2d") return `a ${layer.inner.kind} layer (only convs run integer)`;
  const wq = layer.spec.weight, aq = layer.spec.input;
  if (!wq || wq.bits >= 32) return "its weights are not quantized";
  if (!aq || aq.bits >= 32) return "its input is not quantized";
  if (!Int.layoutOf(wq.bits, aq.bits)) {
    return `W${wq.bits}A${aq.bits} has no u32 packing (≤ 5 bits)`;
  }
  let c: Export.Collected;
  try {
    // One layer at a time: its parameters at the root, its quantizer at path "".
    c = await Export.collect(layer, p);
  } catch (e) {
    return (e as Error).message;
  }
  const q = c.layers.get("");
  if (!q?.weight || !q.input) return "no static weight and input grids";
  const [k, k2, cin, cout] = q.weight.shape;
  if (k !== k2 || k % 2 !== 1) return `kernel ${k}×${k2} is not odd and square`;
  const P = (2 ** wq.bits - 1) * (2 ** aq.bits - 1);
  // Σa·k reaches k²·cin·P: it must stay exact in the f32 the epilogue converts it to.
  if (k * k * cin * P >= 2 ** 24) return `k²·C_in·P = ${k * k * cin * P} ≥ 2^24`;
  return {
    k,
    cin,
    cout,
    codes: q.weight.codes,
    weight: { bits: q.weight.bits, lower: q.weight.lower, upper: q.weight.upper },
    input: q.input,
    bias: c.values.get("bias") ?? new Float32Array(cout),
  };
}

const subAt = (p: Params, path: string): Params =>
  path === "" ? p : path.split(".").reduce((node, k) => Tree.sub(node, k), p);

/** Prepares a model for inference with the integer kernels (see the module comment). */
export async function prepare(
  m: { readonly model: Nn.AnyLayer; readonly params: Params },
  opts: Options = {},
): Promise<Engine> {
  const kind = opts.kind ?? "auto";
  const quantized = Quant.layers(m.model);
  const bitsOf = (l: Quant.Quantized) => ({
    wbits: l.spec.weight?.bits ?? 32,
    abits: l.spec.input?.bits ?? 32,
  });
  if (kind === "float") {
    return {
      kind,
      model: m.model,
      params: m.params,
      plan: quantized.map(({ path, layer }) => ({
        path,
        engine: "float" as const,
        ...bitsOf(layer),
      })),
      dispose: () => {},
    };
  }
  const plan: LayerPlan[] = [];
  const convs = new Map<string, ReturnType<typeof intConv>>();
  for (const { path, layer } of quantized) {
    const host = await hostOf(layer, subAt(m.params, path));
    if (
      kind === "auto" && typeof host !== "string" &&
      Int.layoutOf(host.weight.bits, host.input.bits)?.n !== 4
    ) {
      plan.push({
        path,
        engine: "float",
        ...bitsOf(layer),
        reason: "auto: 4-bit codes pack 2 to a word, not faster than FP32 (bench/intconv.ts)",
      });
      continue;
    }
    if (typeof host === "string") {
      plan.push({ path, engine: "float", ...bitsOf(layer), reason: host });
      continue;
    }
    convs.set(path, intConv(host, opts.tile));
    plan.push({ path, engine: "int", ...bitsOf(layer) });
  }
  const model = Nn.transform(m.model, (path, layer) => {
    const conv = convs.get(path);
    if (!conv) return undefined;
    return {
      ...layer,
      apply: (p: Params, x: tf.Tensor, ctx: Nn.Ctx) => {
        // Training and calibration need the fake-quant path (gradients, taps).
        if (ctx.mode !== "eval" || ctx.tap) return layer.apply(p, x, ctx);
        if (x.rank !== 4 || !conv.fits(x.shape)) return layer.apply(p, x, ctx);
        return conv.apply(x as tf.Tensor4D);
      },
    };
  });
  return {
    kind,
    model,
    params: m.params,
    plan,
    dispose: () => {
      for (const c of convs.values()) c.dispose();
    },
  };
}
