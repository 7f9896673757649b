/**
 * WGSL generators for the convolution kernels (NHWC, stride 1, odd square kernels, "same").
 *
 * Operands are first packed into a padded layout, in a read-only storage texture (software
 * adapters: texture loads are ~3× cheaper than storage-buffer loads on llvmpipe) or a storage
 * buffer (real GPUs):
 *
 * - activations `[N, H, W, C]` → texel `(px·C4 + c4, n·Hp + py)` holding channels `4·c4 … 4·c4+3`
 *   of pixel `(py − p, px − p)`; `p` zero pixels on every side (and more on the right up to the
 *   tile width), channels zero-padded to the tile, `C4 = Cpad / 4`, `Hp = H + 2p`;
 * - weights `[k, k, I, O]` → texel `(o4, tap·Ipad + i)` holding out-channels `4·o4 … 4·o4+3`;
 *   the transposed variant packs `w[k−1−ky, k−1−kx, o, i]`, turning the input gradient into a
 *   forward convolution of `dy`.
 *
 * Kernels use register tiling, 1-D workgroups of 16, no shared memory and no barriers (what is
 * fast on llvmpipe; PLATFORM.md "WebGPU without a GPU"): the forward kernel computes `TP` pixels ×
 * `TO` out-channels per invocation; the weight gradient computes `TI` in × `TO` out channels of one
 * tap over a slice of the pixels, followed by a reduce over slices.
 *
 * @module
 */
import { ENTRY } from "./gpu.ts";
import type { Storage } from "./gpu.ts";

/** The WGSL directive a shader with read-only storage textures needs. */
export const REQUIRES = "requires readonly_and_readwrite_storage_textures;\n";

/**
 * A read-only operand binding and its loader `fn name(x, y) -> vec4<T>`, of float texels
 * (`rgba32float`) or, for the integer conv's packed codes (lib/internal/kernels/intconv.ts),
 * of u32 ones (`rgba32uint`).
 */
export function operand(
  storage: Storage,
  name: string,
  binding: number,
  rowWidth: string,
  scalar: "f32" | "u32" = "f32",
): string {
  const t = `vec4<${scalar}>`;
  if (storage === "texture") {
    const format = scalar === "f32" ? "rgba32float" : "rgba32uint";
    return `@group(0) @binding(${binding}) var ${name}T: texture_storage_2d<${format}, read>;
fn ${name}(x: i32, y: i32) -> ${t} { return textureLoad(${name}T, vec2<i32>(x, y)); }`;
  }
  return `@group(0) @binding(${binding}) var<storage, read> ${name}B: array<${t}>;
fn ${name}(x: i32, y: i32) -> ${t} { return ${name}B[y * ${rowWidth} + x]; }`;
}

/** A write-only packed destination and its store statement. */
function packedDst(storage: Storage, binding: number): { decl: string; store: string } {
  if (storage === "texture") {
    return {
      decl: `@group(0) @binding(${binding}) var dst: texture_storage_2d<rgba32float, write>;`,
      store: "textureStore(dst, vec2<i32>(tx, ty), v);",
    };
  }
  return {
    decl: `@group(0) @binding(${binding}) var<storage, read_write> dst: array<vec4<f32>>;`,
    store: "dst[id] = v;",
  };
}

const header = (storage: Storage) => (storage === "texture" ? REQUIRES : "");

/** Packs activations `[N,H,W,C]` (flat f32 buffer) into the padded operand layout. */
export function packActivations(storage: Storage, vec4Source: boolean): string {
  const dst = packedDst(storage, 1);
  const load = vec4Source
    ? `v = src[base / 4 + t];`
    : `for (var i = 0; i < 4; i++) { if (c + i < u.c) { v[i] = src[base + c + i]; } }`;
  // One invocation per padded pixel, writing its C4 texels.
  return `${header(storage)}
struct U { n: i32, h: i32, w: i32, c: i32, p: i32, c4: i32, wp: i32, hp: i32, total: i32 };
@group(0) @binding(0) var<storage, read> src: array<${vec4Source ? "vec4<f32>" : "f32"}>;
${dst.decl}
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let ppx = id % u.wp;
  let ty = id / u.wp;
  let px = ppx - u.p;
  let n = ty / u.hp;
  let py = ty % u.hp - u.p;
  let inside = px >= 0 && px < u.w && py >= 0 && py < u.h;
  let base = ((n * u.h + py) * u.w + px) * u.c;
  for (var t = 0; t < u.c4; t++) {
    let tx = ppx * u.c4 + t;
    let c = t * 4;
    var v = vec4<f32>(0.0);
    if (inside && c < u.c) {
      ${load}
    }
    ${dst.store.replace("dst[id]", "dst[ty * u.wp * u.c4 + tx]")}
  }
}`;
}

/**
 * Packs weights `[taps, I, O]` (or, transposed, `[taps, O, I]` read with the taps reversed) into
 * texels `(o4, tap·Ipad + i)`.
 */
export function packWeights(storage: Storage, transposed: boolean): string {
  const dst = packedDst(storage, 1);
  const index = transposed
    ? "((u.taps - 1 - tap) * u.o + o + j) * u.i + i"
    : "(tap * u.i + i) * u.o + o + j";
  return `${header(storage)}
struct U { taps: i32, i: i32, o: i32, ip: i32, o4p: i32, total: i32 };
@group(0) @binding(0) var<storage, read> src: array<f32>;
${dst.decl}
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let tx = id % u.o4p;
  let ty = id / u.o4p;
  let tap = ty / u.ip;
  let i = ty % u.ip;
  let o = tx * 4;
  var v = vec4<f32>(0.0);
  if (i < u.i) {
    for (var j = 0; j < 4; j++) { if (o + j < u.o) { v[j] = src[${index}]; } }
  }
  ${dst.store}
}`;
}

/** Tile shape of the forward kernel. */
export interface ForwardTile {
  /** Output pixels along x per invocation. */
  readonly tp: number;
  /** Output channels per invocation (multiple of 4). */
  readonly to: number;
  /** Kernel columns unrolled per step (divides k); their input texels are loaded once. */
  readonly unroll: number;
}

/** What the forward kernel applies to its sums before storing them. */
export interface Epilogue {
  /** Adds a per-out-channel bias (binding 4). */
  readonly bias: boolean;
  /** Then clamps at 0. */
  readonly relu: boolean;
}

/** Stores the plain sums. */
export const NO_EPILOGUE: Epilogue = { bias: false, relu: false };

/**
 * Forward convolution from packed operands: `y[n,oy,ox,o] = Σ x[n,oy+ky−p,ox+kx−p,i]·w[ky,kx,i,o]`.
 * Per step of `unroll` kernel columns, the `tp + unroll − 1` input texels are loaded once and
 * reused by every column of the step. `vec4Out` when the output channel count is a multiple of 4.
 */
export function convForward(
  storage: Storage,
  k: number,
  tile: ForwardTile,
  vec4Out: boolean,
  epilogue: Epilogue = NO_EPILOGUE,
): string {
  const { tp, to, unroll } = tile;
  if (k % unroll !== 0) throw new Error(`unroll ${unroll} does not divide k ${k}`);
  // The epilogue on the accumulated sum: `+ bias` then `max(·, 0)`, in that order (tfjs's
  // FusedConv2D: activation(conv + bias)).
  const epi = (acc: string, at: string) => {
    const biased = epilogue.bias ? `(${acc} + Bias[${at}])` : acc;
    return epilogue.relu ? `max(${biased}, ${vec4Out ? "vec4<f32>(0.0)" : "0.0"})` : biased;
  };
  const to4 = to / 4;
  const comp = ["x", "y", "z", "w"];
  const accs: string[] = [];
  const body: string[] = [];
  const stores: string[] = [];
  for (let p = 0; p < tp; p++) {
    for (let j = 0; j < to4; j++) accs.push(`  var a${p}_${j} = vec4<f32>(0.0);`);
  }
  for (let q = 0; q < tp + unroll - 1; q++) {
    body.push(`        let x${q} = X(xc + ${q} * u.c4, row);`);
  }
  for (let kx = 0; kx < unroll; kx++) {
    body.push("        {");
    for (let a = 0; a < 4; a++) {
      for (let j = 0; j < to4; j++) {
        body.push(`        let w${a}_${j} = Wt(wc + ${j}, wr + ${kx * 4} * u.c4 + ${a});`);
      }
    }
    for (let a = 0; a < 4; a++) {
      for (let p = 0; p < tp; p++) {
        for (let j = 0; j < to4; j++) {
          body.push(
            `        a${p}_${j} = fma(vec4<f32>(x${p + kx}.${comp[a]}), w${a}_${j}, a${p}_${j});`,
          );
        }
      }
    }
    body.push("        }");
  }
  for (let p = 0; p < tp; p++) {
    stores.push(`  if (ox0 + ${p} < u.w) {`);
    stores.push(`    let base = ((n * u.h + oy) * u.w + ox0 + ${p}) * u.o + o0;`);
    for (let j = 0; j < to4; j++) {
      if (vec4Out) {
        const v = epi(`a${p}_${j}`, `o0 / 4 + ${j}`);
        stores.push(`    if (o0 + ${4 * j} < u.o) { Y[base / 4 + ${j}] = ${v}; }`);
      } else {
        for (let c = 0; c < 4; c++) {
          const v = epi(`a${p}_${j}.${comp[c]}`, `o0 + ${4 * j + c}`);
          stores.push(`    if (o0 + ${4 * j + c} < u.o) { Y[base + ${4 * j + c}] = ${v}; }`);
        }
      }
    }
    stores.push("  }");
  }
  const out = vec4Out ? "vec4<f32>" : "f32";
  return `${header(storage)}
struct U { n: i32, h: i32, w: i32, xb: i32, ob: i32, c4: i32, o: i32, hp: i32, xw: i32, ww: i32, total: i32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${out}>;
${operand(storage, "X", 1, "u.xw")}
${operand(storage, "Wt", 2, "u.ww")}
@group(0) @binding(3) var<uniform> u: U;
${epilogue.bias ? `@group(0) @binding(4) var<storage, read> Bias: array<${out}>;` : ""}
${ENTRY}
  if (id >= u.total) { return; }
  let ob = id % u.ob;
  var r = id / u.ob;
  let xb = r % u.xb;
  r = r / u.xb;
  let oy = r % u.h;
  let n = r / u.h;
  let ox0 = xb * ${tp};
  let o0 = ob * ${to};
  let wc = ob * ${to4};
${accs.join("\n")}
  for (var ky = 0; ky < ${k}; ky++) {
    let row = n * u.hp + oy + ky;
    for (var kx = 0; kx < ${k}; kx += ${unroll}) {
      var xc = (ox0 + kx) * u.c4;
      var wr = (ky * ${k} + kx) * 4 * u.c4;
      for (var c = 0; c < u.c4; c++) {
${body.join("\n")}
        xc += 1;
        wr += 4;
      }
    }
  }
${stores.join("\n")}
}`;
}

/** Tile shape of the weight-gradient kernel. */
export interface FilterTile {
  /** Input channels per invocation (multiple of 4). */
  readonly ti: number;
  /** Output channels per invocation (multiple of 4). */
  readonly to: number;
}

/**
 * Partial weight gradients: invocation (slice s, tap, i-block, o-block) sums
 * `x[n,oy+ky−p,ox+kx−p,i]·dy[n,oy,ox,o]` over its slice of the `N·H` rows into
 * `P[((s·taps + tap)·Ipad + i)·Opad/4 + o/4]`.
 */
export function convFilterPartial(
  storage: Storage,
  k: number,
  tile: FilterTile,
  width: number,
): string {
  const ti4 = tile.ti / 4;
  const to4 = tile.to / 4;
  const comp = ["x", "y", "z", "w"];
  const accs: string[] = [];
  const body: string[] = [];
  const stores: string[] = [];
  for (let a = 0; a < ti4; a++) {
    for (let c = 0; c < 4; c++) {
      for (let j = 0; j < to4; j++) accs.push(`  var a${a}${c}_${j} = vec4<f32>(0.0);`);
    }
  }
  for (let a = 0; a < ti4; a++) body.push(`      let x${a} = X(xc + ${a}, xrow);`);
  for (let j = 0; j < to4; j++) body.push(`      let d${j} = D(dc + ${j}, rr);`);
  for (let a = 0; a < ti4; a++) {
    for (let c = 0; c < 4; c++) {
      for (let j = 0; j < to4; j++) {
        body.push(
          `      a${a}${c}_${j} = fma(vec4<f32>(x${a}.${comp[c]}), d${j}, a${a}${c}_${j});`,
        );
      }
    }
  }
  for (let a = 0; a < ti4; a++) {
    for (let c = 0; c < 4; c++) {
      stores.push(`  {
    let base = ((s * ${k * k} + tap) * u.ip + i0 + ${4 * a + c}) * u.o4p + ob * ${to4};`);
      for (let j = 0; j < to4; j++) stores.push(`    P[base + ${j}] = a${a}${c}_${j};`);
      stores.push("  }");
    }
  }
  return `${header(storage)}
struct U { h: i32, w: i32, c4: i32, d4: i32, ib: i32, ob: i32, hp: i32, xw: i32, dw: i32, rows: i32, per: i32, ip: i32, o4p: i32, total: i32 };
@group(0) @binding(0) var<storage, read_write> P: array<vec4<f32>>;
${operand(storage, "X", 1, "u.xw")}
${operand(storage, "D", 2, "u.dw")}
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let ob = id % u.ob;
  var r = id / u.ob;
  let ib = r % u.ib;
  r = r / u.ib;
  let tap = r % ${k * k};
  let s = r / ${k * k};
  let ky = tap / ${k};
  let kx = tap % ${k};
  let i0 = ib * ${tile.ti};
${accs.join("\n")}
  let r1 = min(s * u.per + u.per, u.rows);
  for (var rr = s * u.per; rr < r1; rr++) {
    let xrow = (rr / u.h) * u.hp + rr % u.h + ky;
    var xc = kx * u.c4 + ib * ${ti4};
    var dc = ob * ${to4};
    for (var ox = 0; ox < ${width}; ox++) {
${body.join("\n")}
      xc += u.c4;
      dc += u.d4;
    }
  }
${stores.join("\n")}
}`;
}

/** Sums the partial weight gradients over slices into the `[k, k, I, O]` output. */
export function convFilterReduce(vec4Out: boolean): string {
  const store = vec4Out
    ? "if (o4 * 4 < u.o) { Y[(tap * u.i + i) * (u.o / 4) + o4] = acc; }"
    : `for (var j = 0; j < 4; j++) { if (o4 * 4 + j < u.o) { Y[(tap * u.i + i) * u.o + o4 * 4 + j] = acc[j]; } }`;
  return `struct U { taps: i32, i: i32, o: i32, ip: i32, o4p: i32, s: i32, total: i32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${vec4Out ? "vec4<f32>" : "f32"}>;
@group(0) @binding(1) var<storage, read> P: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let o4 = id % u.o4p;
  let r = id / u.o4p;
  let i = r % u.i;
  let tap = r / u.i;
  var acc = vec4<f32>(0.0);
  for (var s = 0; s < u.s; s++) { acc += P[((s * u.taps + tap) * u.ip + i) * u.o4p + o4]; }
  ${store}
}`;
}

/**
 * Packs a batch of matrices `[batch, R, C]` (stored transposed, `[batch, C, R]`, when
 * `transposed`) into texels `(c4, g)` for row `g = b·Rpad + r`, holding columns `4·c4 … 4·c4+3`.
 * Rows are folded into panels of `h` rows side by side (`x = ⌊g/h⌋·C4 + c4`, `y = g mod h`), so
 * tall matrices fit a texture.
 */
export function packMatrix(storage: Storage, transposed: boolean): string {
  const dst = packedDst(storage, 1);
  const index = transposed ? "c * u.r + r" : "r * u.c + c";
  return `${header(storage)}
struct U { r: i32, c: i32, rp: i32, c4: i32, h: i32, w: i32, total: i32 };
@group(0) @binding(0) var<storage, read> src: array<f32>;
${dst.decl}
@group(0) @binding(2) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let c4 = id % u.c4;
  let g = id / u.c4;
  let b = g / u.rp;
  let r = g % u.rp;
  var v = vec4<f32>(0.0);
  if (r < u.r) {
    let base = b * u.r * u.c;
    for (var j = 0; j < 4; j++) {
      let c = c4 * 4 + j;
      if (c < u.c) { v[j] = src[base + ${index}]; }
    }
  }
  let tx = (g / u.h) * u.c4 + c4;
  let ty = g % u.h;
  ${dst.store.replace("dst[id]", "dst[ty * u.w + tx]")}
}`;
}

/** Tile shape of the matmul kernel. */
export interface MatMulTile {
  /** Rows of C per invocation. */
  readonly tm: number;
  /** Columns of C per invocation (multiple of 4). */
  readonly tn: number;
}

/**
 * `C[b] = A[b]·B[b]` from packed operands (see {@link packMatrix}): A with rows `m`, columns `k`;
 * B with rows `k`, columns `n`. A batch of 1 on either side is broadcast.
 */
export function matMul(storage: Storage, tile: MatMulTile, vec4Out: boolean): string {
  const { tm, tn } = tile;
  const tn4 = tn / 4;
  const comp = ["x", "y", "z", "w"];
  const accs: string[] = [];
  const body: string[] = [];
  const stores: string[] = [];
  for (let p = 0; p < tm; p++) {
    for (let j = 0; j < tn4; j++) accs.push(`  var a${p}_${j} = vec4<f32>(0.0);`);
  }
  for (let p = 0; p < tm; p++) body.push(`    let x${p} = A(ax + k4, ay + ${p});`);
  for (let c = 0; c < 4; c++) {
    for (let j = 0; j < tn4; j++) body.push(`    let w${c}_${j} = B(bx + ${j}, by + ${c});`);
  }
  for (let c = 0; c < 4; c++) {
    for (let p = 0; p < tm; p++) {
      for (let j = 0; j < tn4; j++) {
        body.push(`    a${p}_${j} = fma(vec4<f32>(x${p}.${comp[c]}), w${c}_${j}, a${p}_${j});`);
      }
    }
  }
  for (let p = 0; p < tm; p++) {
    stores.push(`  if (m0 + ${p} < u.m) {`);
    stores.push(`    let base = (b * u.m + m0 + ${p}) * u.n + n0;`);
    for (let j = 0; j < tn4; j++) {
      if (vec4Out) {
        stores.push(`    if (n0 + ${4 * j} < u.n) { C[base / 4 + ${j}] = a${p}_${j}; }`);
      } else {
        for (let c = 0; c < 4; c++) {
          stores.push(
            `    if (n0 + ${4 * j + c} < u.n) { C[base + ${4 * j + c}] = a${p}_${j}.${comp[c]}; }`,
          );
        }
      }
    }
    stores.push("  }");
  }
  return `${header(storage)}
struct U { m: i32, n: i32, k4: i32, mp: i32, kp: i32, mb: i32, nb: i32, ba: i32, bb: i32, ha: i32, hb: i32, aw: i32, bw: i32, n4p: i32, total: i32 };
@group(0) @binding(0) var<storage, read_write> C: array<${vec4Out ? "vec4<f32>" : "f32"}>;
${operand(storage, "A", 1, "u.aw")}
${operand(storage, "B", 2, "u.bw")}
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let nb = id % u.nb;
  let r = id / u.nb;
  let mb = r % u.mb;
  let b = r / u.mb;
  let m0 = mb * ${tm};
  let n0 = nb * ${tn};
  let ga = select(b, 0, u.ba == 1) * u.mp + m0;
  let ax = (ga / u.ha) * u.k4;
  let ay = ga % u.ha;
  let gb = select(b, 0, u.bb == 1) * u.kp;
  let bx = (gb / u.hb) * u.n4p + nb * ${tn4};
  var by = gb % u.hb;
${accs.join("\n")}
  for (var k4 = 0; k4 < u.k4; k4++) {
${body.join("\n")}
    by += 4;
  }
${stores.join("\n")}
}`;
}
