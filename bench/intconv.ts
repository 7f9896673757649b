/**
 * The integer conv kernel (lib/internal/kernels/intconv.ts) vs our FP32 conv kernel
 * (lib/internal/kernels/conv.ts, what `tf.conv2d` runs) at the EDSR-baseline body shape,
 * 1×128×128×64 → 64, 3×3, bias, in one process with the backend named. The integer side is the
 * whole quantized layer (activation codes from float input, then the conv); the FP32 side is
 * `conv2d` with the bias in its epilogue (`tf.fused.conv2d`, as `Nn.conv2d`). Each measurement is `--reps` back-to-back layers between two GPU waits, the
 * designs interleaved over `--rounds` rounds; prints the best ms per layer and FP32/int ratios.
 *
 *   deno run -A bench/intconv.ts [--rounds 5] [--reps 8] [--size 128] [--tiles] [--json]
 *
 * `--tiles`: also times other register tiles of the integer kernel (how the default was chosen).
 */
import * as tf from "@tensorflow/tfjs";
import * as Backend from "../lib/Backend.ts";
import * as Engine from "../lib/Engine.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Int from "../lib/internal/kernels/intconv.ts";

const arg = (name: string, d: number) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : d;
};
const rounds = arg("--rounds", 5);
const reps = arg("--reps", 8);
const json = Deno.args.includes("--json");
const log = (s: string) => (json ? console.error(s) : console.log(s));

const info = await Backend.initialize({ log: false });
Kernels.install(info);
log(`backend: ${Backend.describe(info)}; kernels ${Kernels.describe()}`);

const SIZE = arg("--size", 128);
const [N, H, W, C, O, K] = [1, SIZE, SIZE, 64, 64, 3];
function uniform(n: number, seed: number, lo: number, hi: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = lo + (hi - lo) * (s / 2 ** 32);
  }
  return out;
}
const x = tf.tensor4d(uniform(N * H * W * C, 1, -0.5, 2), [N, H, W, C]);
const w = tf.tensor4d(uniform(K * K * C * O, 2, -0.1, 0.1), [K, K, C, O]);
const b = tf.tensor1d(uniform(O, 3, -0.1, 0.1));

const host = (bits: number): Int.HostLayer => ({
  k: K,
  cin: C,
  cout: O,
  codes: Uint8Array.from(uniform(K * K * C * O, 4, 0, 2 ** bits), Math.floor),
  weight: { bits, lower: -0.1, upper: 0.1 },
  input: { bits, lower: 0, upper: 1.5 },
  bias: uniform(O, 3, -0.1, 0.1),
});

interface Design {
  readonly name: string;
  readonly run: () => tf.Tensor;
  readonly dispose?: () => void;
}
// FP32: our float conv with the bias in its epilogue (what `Nn.conv2d` runs), like the int kernel.
const designs: Design[] = [
  { name: "FP32", run: () => tf.fused.conv2d({ x, filter: w, bias: b, strides: 1, pad: "same" }) },
];
// `undefined`: the layout's default tile (Int.tileFor).
const tiles: (Int.Tile | undefined)[] = Deno.args.includes("--tiles")
  ? [{ tp: 8, to: 8 }, { tp: 16, to: 8 }, { tp: 16, to: 4 }, { tp: 32, to: 8 }, { tp: 4, to: 16 }]
  : [undefined];
for (const bits of (Deno.env.get("BITS") ?? "2,4").split(",").map(Number)) {
  for (const t of tiles) {
    const conv = Engine.intConv(host(bits), t);
    const tag = t ? ` tp${t.tp}·to${t.to}` : "";
    designs.push({
      name: `W${bits}A${bits}${tag}`,
      run: () => conv.apply(x),
      dispose: conv.dispose,
    });
  }
}

async function time(d: Design): Promise<number> {
  const t0 = performance.now();
  let last: tf.Tensor | undefined;
  for (let r = 0; r < reps; r++) {
    last?.dispose();
    last = tf.tidy(d.run);
  }
  await last!.data();
  last!.dispose();
  return (performance.now() - t0) / reps;
}

// Warm-up: compile every pipeline.
for (const d of designs) await time(d);
const samples = new Map(designs.map((d) => [d.name, [] as number[]]));
for (let r = 0; r < rounds; r++) {
  for (const d of designs) samples.get(d.name)!.push(await time(d));
}
// Best of the rounds: on a machine shared with other jobs, contention only ever adds time.
const best = (v: number[]) => Math.min(...v);
const fp = best(samples.get("FP32")!);
const rows = designs.map((d) => {
  const ms = best(samples.get(d.name)!);
  return { name: d.name, ms, speedup: fp / ms };
});
log(`conv 3×3 ${N}×${H}×${W}×${C} → ${O}, best of ${rounds} rounds × ${reps} layers:`);
for (const r of rows) {
  log(
    `  ${r.name.padEnd(16)} ${r.ms.toFixed(2).padStart(8)} ms   ×${r.speedup.toFixed(2)} vs FP32`,
  );
}
if (json) console.log(JSON.stringify({ backend: Backend.describe(info), rows }));
for (const d of designs) d.dispose?.();
tf.dispose([x, w, b]);
