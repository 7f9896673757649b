/**
 * How close our FP32 conv forward kernel (lib/internal/kernels/wgsl.ts `convForward`) is to
 * what the adapter's compiler makes of its arithmetic: the EDSR-baseline conv (8×48×48×64 → 64,
 * 3×3, read-only storage textures) as built, and two variants of the same shader that keep its
 * `fma` stream and drop operand loads:
 *
 * - `one weight texel`: the weight loads read a fixed texel (what the kernel would cost if weight
 *   loads were free broadcasts);
 * - `no operand loads`: per channel step one activation and one weight texel are loaded, the
 *   others are swizzles of them (the `fma` count and the register tile are unchanged).
 *
 * Designs are timed interleaved in one process (median of 5 rounds of 4 dispatches), per
 * register tile (`--tiles 8x8,4x4,2x4`, pixels × out-channels). The outputs of the variants are
 * meaningless; only their time is. Issue 18's 75 GFLOP/s target is judged against these.
 *
 *   deno run -A bench/conv_ceiling.ts [--tiles 8x8,4x4] [--rounds 5]
 *
 * @module
 */
import * as Wgsl from "../lib/internal/kernels/wgsl.ts";
import { compute, timeDispatches } from "./_raw.ts";

const arg = (name: string, d: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : d;
};
const tiles = arg("--tiles", "8x8,4x4,2x4").split(",").map((t) => {
  const [tp, to] = t.split("x").map(Number);
  if (!(tp >= 1 && to >= 4 && to % 4 === 0)) throw new Error(`--tiles: bad tile "${t}"`);
  return { tp, to };
});
const rounds = Number(arg("--rounds", "5"));

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: { maxTextureDimension2D: adapter.limits.maxTextureDimension2D },
});
const N = 8, H = 48, W = 48, C = 64, O = 64, K = 3, P = 1;
const c4 = C / 4, hp = H + 2 * P, xw = (W + 2 * P + 16) * c4;
const flops = 2 * N * H * W * O * C * K * K;

const SWIZZLE = ["xyzw", "yzwx", "zwxy", "wxyz"];
const WEIGHT = /let w(\d+)_(\d+) = Wt\(wc \+ (\d+), wr \+ (\d+) \* u\.c4 \+ (\d+)\);/g;
const ACTIVATION = /let x(\d+) = X\(xc \+ (\d+) \* u\.c4, row\);/g;

/** The kernel's shader and its two variants for one tile. */
function variants(tp: number, to: number): Array<[string, string]> {
  const built = Wgsl.convForward("texture", K, { tp, to, unroll: 3 }, true);
  const oneTexel = built.replace(WEIGHT, (_m, a, j, c) => `let w${a}_${j} = Wt(${c}, ${a});`);
  // One weight texel per kernel column; the others are its swizzles (negated for odd j).
  const oneWeight = built.replace(
    WEIGHT,
    (_m, a, j, _c, kx) =>
      (a === "0" && j === "0" ? `let wv${kx} = Wt(wc, wr + ${kx} * u.c4);\n        ` : "") +
      `let w${a}_${j} = ${+j % 2 ? "-" : ""}wv${kx}.${SWIZZLE[+a]};`,
  );
  const noLoads = oneWeight.replace(
    ACTIVATION,
    (m, q) => (q === "0" ? m : `let x${q} = x0.${SWIZZLE[+q % 4]} * ${+q + 1}.0;`),
  );
  if (oneTexel === built || noLoads === oneWeight) throw new Error("the kernel's loads moved");
  return [["as built", built], ["one weight texel", oneTexel], ["no operand loads", noLoads]];
}

function texture(w: number, h: number): GPUTexture {
  const t = device.createTexture({
    size: [w, h],
    format: "rgba32float",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
  });
  const data = new Float32Array(w * h * 4).map((_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  device.queue.writeTexture({ texture: t }, data, { bytesPerRow: w * 16 }, [w, h]);
  return t;
}
const X = texture(xw, N * hp), Wt = texture(O / 4, K * K * C);
const Y = device.createBuffer({ size: N * H * W * O * 4, usage: GPUBufferUsage.STORAGE });

interface Design {
  readonly name: string;
  readonly kernel: ReturnType<typeof compute>;
  readonly workgroups: number;
}
const designs: Design[] = [];
for (const { tp, to } of tiles) {
  for (const [v, code] of variants(tp, to)) {
    const xb = Math.ceil(W / tp), ob = O / to, total = N * H * xb * ob;
    const u = device.createBuffer({
      size: 64,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(u, 0, new Int32Array([N, H, W, xb, ob, c4, O, hp, xw, O / 4, total]));
    const kernel = compute(device, code, [{ buffer: Y }, X.createView(), Wt.createView(), {
      buffer: u,
    }]);
    designs.push({ name: `${tp}×${to} ${v}`, kernel, workgroups: Math.ceil(total / 16) });
  }
}

const time = (d: Design, reps: number) => timeDispatches(device, d.kernel, d.workgroups, reps);

for (const d of designs) await time(d, 1); // compile
const samples = new Map(designs.map((d) => [d.name, [] as number[]]));
for (let r = 0; r < rounds; r++) {
  for (const d of designs) samples.get(d.name)!.push(await time(d, 4));
}
console.log(`adapter: ${adapter.info?.description ?? "?"}`);
console.log(`conv forward ${N}×${H}×${W}×${C} → ${O}, 3×3, median of ${rounds} rounds:`);
for (const d of designs) {
  const v = samples.get(d.name)!.sort((a, b) => a - b);
  const ms = v[v.length >> 1];
  console.log(
    `  ${d.name.padEnd(26)} ${ms.toFixed(1).padStart(6)} ms ${
      (flops / ms / 1e6).toFixed(1)
    } GFLOP/s`,
  );
}
