/**
 * The arithmetic behind the integer conv's design (lib/internal/kernels/intconv.ts), measured on
 * the adapter in use with raw WebGPU: throughput per lane of f32 `fma`, u32 multiply-add,
 * `countOneBits(a & b)` (the bit-plane approach), `dot4U8Packed` and `dot4I8Packed` (WGSL's
 * packed 4×8-bit dot products) and a u32 add, each as 8 independent chains in a loop.
 *
 *   deno run -A bench/intconv_ops.ts
 *
 * On lavapipe (LLVM 15, 256-bit lanes, 2 shared cores) one run gave fma 6.26, mul+add 4.80,
 * and+countOneBits 1.56, dot4U8Packed 1.50, dot4I8Packed 1.26, add 4.35 G/s: llvmpipe emulates
 * popcount and the packed dot products, a 32-bit multiply is nearly as cheap as an fma, so the
 * kernel packs 4 (or 2) codes per u32 and uses one multiply for a 4-term (2-term) dot product.
 */
const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
console.log(`adapter: ${adapter.info?.description ?? "?"}`);
const device = await adapter.requestDevice();
const N = 16 * 256;
const ITER = 4096;
const out = device.createBuffer({ size: N * 16, usage: GPUBufferUsage.STORAGE });

async function run(name: string, decl: string, body: string, fin: string, ops: number) {
  const code = `@group(0) @binding(0) var<storage, read_write> O: array<vec4<u32>>;
@compute @workgroup_size(16) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x;
  ${decl}
  for (var it = 0u; it < ${ITER}u; it++) {
    ${body}
  }
  O[id] = ${fin};
}`;
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  if (info.messages.length) {
    console.log(name, info.messages.map((m) => m.message));
    return;
  }
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: out } }],
  });
  const go = async () => {
    const e = device.createCommandEncoder();
    const c = e.beginComputePass();
    c.setPipeline(pipeline);
    c.setBindGroup(0, bindGroup);
    c.dispatchWorkgroups(N / 16);
    c.end();
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await go();
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    const t = performance.now();
    await go();
    best = Math.min(best, performance.now() - t);
  }
  console.log(`${name.padEnd(16)} ${((N * ITER * ops) / best / 1e6).toFixed(2)} G/s per lane`);
}

const idx = [...Array(8).keys()];
const fdecl = idx.map((i) => `var f${i} = f32(id) + ${i}.0;`).join(" ") +
  " let fa = f32(id & 1u) * 0.5 + 0.5; let fb = f32(id) * 0.001;";
const ufin = "vec4<u32>(c0 + c1, c2 + c3, c4 + c5, c6 + c7)";
const udecl = idx.map((i) => `var u${i} = id * ${2654435761 + i * 7}u; var c${i} = 0u;`).join(" ") +
  " let ka = id ^ 0x5bd1e995u;";
await run(
  "fma f32",
  fdecl,
  idx.map((i) => `f${i} = fma(f${i}, fa, fb);`).join(" "),
  "vec4<u32>(bitcast<u32>(f0 + f1), bitcast<u32>(f2 + f3), bitcast<u32>(f4 + f5), bitcast<u32>(f6 + f7))",
  8,
);
const u = (name: string, op: (i: number) => string) =>
  run(name, udecl, idx.map(op).join(" "), ufin, 8);
await u("u32 mul+add", (i) => `c${i} += u${i} * ka; u${i} = u${i} + 1u;`);
await u("and+countOneBits", (i) => `c${i} += countOneBits(u${i} & ka); u${i} = u${i} ^ c${i};`);
await u("dot4U8Packed", (i) => `c${i} += dot4U8Packed(u${i}, ka); u${i} = u${i} + 1u;`);
await u(
  "dot4I8Packed",
  (i) => `c${i} += bitcast<u32>(dot4I8Packed(u${i}, ka)); u${i} = u${i} + 1u;`,
);
await u("u32 add", (i) => `c${i} += u${i} ^ ka; u${i} = u${i} + 1u;`);
