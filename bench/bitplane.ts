/**
 * A probe of the bit-plane alternative to the integer conv's packed-field multiply
 * (lib/internal/kernels/intconv.ts), for W2A2 at the EDSR-baseline body shape (1×128×128×64 → 64,
 * 3×3): activation and weight codes as bit planes, 32 channels a u32 word, so one texel of 4 words
 * holds a pixel's (or an output's) 64 channels × 2 planes, and
 * `Σ a·k = Σ_{i,j} 2^{i+j} countOneBits(aᵢ & kⱼ)` over the 4 plane pairs.
 *
 * It times the bare conv loop only (no activation codes, no scales or bias; random words), with
 * `--no-popcount` variants that drop `countOneBits` (the AND results are summed as they are), next
 * to our FP32 conv with its bias fused (`tf.fused.conv2d`), interleaved in one process, best of 5
 * rounds of 8. An upper bound for a bit-plane W2A2 layer, not a kernel: issue 15's 3× target is
 * judged against it.
 *
 *   deno run -A bench/bitplane.ts [--tiles 8x8,4x8,16x8]
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import * as Backend from "../lib/Backend.ts";
import * as Kernels from "../lib/Kernels.ts";
import { compute, timeDispatches } from "./_raw.ts";

const arg = (name: string, d: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : d;
};
const tiles = arg("--tiles", "8x8,4x8,16x8").split(",").map((t) => {
  const [tp, to] = t.split("x").map(Number);
  if (!(tp >= 1 && to >= 1 && 128 % tp === 0 && 64 % to === 0)) {
    throw new Error(`--tiles: bad tile "${t}" (tp must divide 128, to 64)`);
  }
  return { tp, to };
});

const info = await Backend.initialize({ log: false });
if (info.name !== "webgpu") throw new Error("bench/bitplane.ts needs WebGPU");
Kernels.install(info);
const device = (tf.backend() as unknown as { device: GPUDevice }).device;
const N = 1, H = 128, W = 128, C = 64, O = 64;
const hp = H + 2;

/** The W2A2 bit-plane conv loop for a `tp` pixels × `to` outputs tile. */
function shader(tp: number, to: number, popcount: boolean): string {
  const count = (v: string) => (popcount ? `countOneBits(${v})` : `(${v})`);
  const body: string[] = [];
  for (let q = 0; q < tp + 2; q++) {
    body.push(`    let x${q} = textureLoad(XT, vec2<i32>(ox0 + ${q}, row));`);
  }
  for (let kx = 0; kx < 3; kx++) {
    for (let o = 0; o < to; o++) {
      // Texel words: [group 0 plane 0, group 0 plane 1, group 1 plane 0, group 1 plane 1].
      body.push(
        `    { let w = textureLoad(WT, vec2<i32>(o0 + ${o}, ky * 3 + ${kx})); let ws = w.yxwz;`,
      );
      for (let p = 0; p < tp; p++) {
        const x = `x${p + kx}`;
        body.push(
          `      { let same = ${count(`${x} & w`)}; let cross = ${count(`${x} & ws`)}; ` +
            `d${p}_${o} += same.x + same.z + ((same.y + same.w) << 2u) + ` +
            `((cross.x + cross.y + cross.z + cross.w) << 1u); }`,
        );
      }
      body.push("    }");
    }
  }
  const decl: string[] = [], store: string[] = [];
  for (let p = 0; p < tp; p++) {
    for (let o = 0; o < to; o++) {
      decl.push(`  var d${p}_${o} = 0u;`);
      store.push(`  Y[((n * ${H} + oy) * ${W} + ox0 + ${p}) * ${O} + o0 + ${o}] = d${p}_${o};`);
    }
  }
  return `requires readonly_and_readwrite_storage_textures;
@group(0) @binding(0) var<storage, read_write> Y: array<u32>;
@group(0) @binding(1) var XT: texture_storage_2d<rgba32uint, read>;
@group(0) @binding(2) var WT: texture_storage_2d<rgba32uint, read>;
@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let id = i32(gid.y * nwg.x * 16u + gid.x);
  let blocks = ${N * H * (W / tp)};
  let ob = id / blocks;
  var r = id % blocks;
  let xb = r % ${W / tp};
  r = r / ${W / tp};
  let oy = r % ${H};
  let n = r / ${H};
  let ox0 = xb * ${tp};
  let o0 = ob * ${to};
${decl.join("\n")}
  for (var ky = 0; ky < 3; ky++) {
    let row = n * ${hp} + oy + ky;
${body.join("\n")}
  }
${store.join("\n")}
}`;
}

function words(w: number, h: number): GPUTexture {
  const t = device.createTexture({
    size: [w, h],
    format: "rgba32uint",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
  });
  const data = new Uint32Array(w * h * 4).map((_, i) => Math.imul(i + 1, 2654435761) >>> 0);
  device.queue.writeTexture({ texture: t }, data, { bytesPerRow: w * 16 }, [w, h]);
  return t;
}
const XT = words(W + 2 + 16, N * hp), WT = words(O, 9);
const Y = device.createBuffer({ size: N * H * W * O * 4, usage: GPUBufferUsage.STORAGE });

interface Design {
  readonly name: string;
  readonly time: (reps: number) => Promise<number>;
}
const x = tf.randomUniform([N, H, W, C], -0.5, 2, "float32", 1) as tf.Tensor4D;
const filter = tf.randomUniform([3, 3, C, O], -0.1, 0.1, "float32", 2) as tf.Tensor4D;
const bias = tf.randomUniform([O], -0.1, 0.1, "float32", 3) as tf.Tensor1D;
const designs: Design[] = [{
  name: "FP32 (bias fused)",
  time: async (reps) => {
    const t0 = performance.now();
    let last: tf.Tensor | undefined;
    for (let r = 0; r < reps; r++) {
      last?.dispose();
      last = tf.fused.conv2d({ x, filter, bias, strides: 1, pad: "same" });
    }
    await last!.data();
    last!.dispose();
    return (performance.now() - t0) / reps;
  },
}];
for (const { tp, to } of tiles) {
  for (const popcount of [true, false]) {
    const kernel = compute(device, shader(tp, to, popcount), [
      { buffer: Y },
      XT.createView(),
      WT.createView(),
    ]);
    const workgroups = Math.ceil((N * H * (W / tp) * (O / to)) / 16);
    designs.push({
      name: `bit-plane ${tp}×${to}${popcount ? "" : " --no-popcount"}`,
      time: (reps) => timeDispatches(device, kernel, workgroups, reps),
    });
  }
}

for (const d of designs) await d.time(1); // compile
const best = new Map(designs.map((d) => [d.name, Infinity]));
for (let r = 0; r < 5; r++) {
  for (const d of designs) best.set(d.name, Math.min(best.get(d.name)!, await d.time(8)));
}
const fp = best.get(designs[0].name)!;
console.log(Backend.describe(info));
console.log(`W2A2 bit-plane conv loop vs FP32, ${N}×${H}×${W}×${C} → ${O}, 3×3, best of 5 × 8:`);
for (const d of designs) {
  const ms = best.get(d.name)!;
  console.log(
    `  ${d.name.padEnd(30)} ${ms.toFixed(2).padStart(7)} ms  ×${(fp / ms).toFixed(2)} vs FP32`,
  );
}
tf.dispose([x, filter, bias]);
