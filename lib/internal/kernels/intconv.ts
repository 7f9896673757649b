/**
 * Integer convolution for quantized layers (Eq. 1 of the ODM paper on both operands): a 3×3 or
 * 1×1 (any odd k) conv, stride 1, "same" zero padding, NHWC, computed from the weight codes
 * `k ∈ [0, 2^bw − 1]` (`w = k·s_w + l_w`) and the input activation codes
 * `a = round_half_even((clip(x, l_a, u_a) − l_a)/s_a)` (`q(x) = a·s_a + l_a`,
 * `s = (u − l)/(2^b − 1)`, SPEC §1), accumulating `Σ a·k` exactly in integers.
 *
 * With zero padding the fake-quant conv is `y = b + Σ_{inside taps, i} (a·s_a + l_a)(k·s_w + l_w)`:
 *
 *   `y = b + s_a·(s_w·D + l_w·ΣA) + l_a·(s_w·ΣK + l_w·Cnt)`
 *
 * `D = Σ a·k` and `ΣA = Σ a` over the k×k window (padded codes are 0, so these run over every
 * tap), `ΣK = Σ k` over the taps inside the image and `Cnt` = inside taps × C_in. D and ΣA are
 * exact integers; the scales, `l_a`, `l_w` and the bias are applied once per output.
 *
 * How `D` is computed (chosen by measurement on lavapipe, bench/intconv_ops.ts: per lane and
 * second, f32 `fma` 6.3 G, u32 `mul`+`add` 4.8 G, `countOneBits(a & b)` 1.6 G, `dot4U8Packed`
 * 1.5 G — llvmpipe emulates popcount and the packed dot product, but a 32-bit multiply is
 * nearly as cheap as an fma): codes are packed `n` to a u32 in fields of `s` bits, activations
 * in channel order and weights reversed (`A = Σ_f a_{nj+f}·2^{s·f}`,
 * `K = Σ_f k_{nj+n−1−f}·2^{s·f}`), so the field at bit `s·(n−1)` of the 32-bit product `A·K` is
 * the dot product of the `n` channel pairs (fields at `s·n` and up fall off the word). With
 * `P = (2^bw − 1)(2^ba − 1)` the largest product, {@link layoutOf} takes `n = 4, s = 8` when
 * `4P < 256` (2–3 bits: 4 MACs per multiply) and else `n = 2, s = 16` (4 bits), and up to `T`
 * products are summed before the field is shifted out, with `T` chosen so that the field cannot
 * overflow and the lower fields cannot carry into it.
 *
 * Kernels: {@link packActivationsWgsl} turns `x` into codes (the fake-quant kernel's own
 * expression, so the codes are the float path's levels) in a zero-padded layout plus the
 * per-pixel code sums; {@link convWgsl} register-tiles `TP` pixels × `TO` output channels per
 * invocation like our float kernel (lib/internal/kernels/wgsl.ts). {@link reference} is the
 * same computation in plain JS (the `cpu` twin and the tests' scalar oracle).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ENTRY, floatType, WG } from "./gpu.ts";
import type { Gpu, Storage } from "./gpu.ts";
import { roundHalfEven } from "./fake_quant.ts";
import { operand, REQUIRES } from "./wgsl.ts";

/** How codes are packed into u32 words (see the module comment). */
export interface Layout {
  /** Codes per word. */
  readonly n: 2 | 4;
  /** Bits per field. */
  readonly s: 8 | 16;
  /** Products that may be summed before the dot-product field is extracted. */
  readonly T: number;
}

/**
 * The packing for `wbits`-bit weights and `abits`-bit activations, or undefined when no u32
 * layout holds their products (bits above 5).
 */
export function layoutOf(wbits: number, abits: number): Layout | undefined {
  if (!(wbits >= 1 && wbits <= 8 && abits >= 1 && abits <= 8)) return undefined;
  const P = (2 ** wbits - 1) * (2 ** abits - 1);
  for (const [n, s] of [[4, 8], [2, 16]] as const) {
    const field = 2 ** s;
    // The dot-product field sums n products per multiply: n·P·T < 2^s.
    let T = Math.floor((field - 1) / (n * P));
    // The fields below it hold j + 1 products each (j = 0 … n − 2); their sum over T products
    // must stay below 2^{s(n−1)} so that nothing carries into the dot-product field.
    const lower = (t: number) => {
      let v = 0;
      for (let j = 0; j < n - 1; j++) v += (j + 1) * P * t * 2 ** (s * j);
      return v;
    };
    while (T > 0 && lower(T) >= 2 ** (s * (n - 1))) T--;
    if (T >= 1) return { n, s, T };
  }
  return undefined;
}

/** A conv's static shape: `k×k`, `cin → cout`. */
export interface ConvDims {
  readonly k: number;
  readonly cin: number;
  readonly cout: number;
}

/** An Eq. 1 grid (as lib/Export.ts's `Grid`). */
export interface Grid {
  readonly bits: number;
  readonly lower: number;
  readonly upper: number;
}

/** What one integer conv needs, on the host. */
export interface HostLayer extends ConvDims {
  /** Weight codes in our layout (row-major HWIO, `[k, k, cin, cout]`). */
  readonly codes: Uint8Array;
  readonly weight: Grid;
  readonly input: Grid;
  /** Bias (`cout`), zeros when the conv has none. */
  readonly bias: Float32Array;
}

const f = Math.fround;
const up = (x: number, m: number) => Math.ceil(x / m) * m;

/** The float32 step of a grid, as the fake-quant kernel computes it. */
export const stepOf = (g: Grid): number => f(f(g.upper - g.lower) / (2 ** g.bits - 1));

/** The activation code of `x` (the fake-quant kernel's rounding, float32 step by step). */
export function codeOf(x: number, g: Grid): number {
  const s = stepOf(g);
  const c = Math.min(Math.max(f(x), f(g.lower)), f(g.upper));
  return roundHalfEven(f(f(c - g.lower) / s));
}

/**
 * The scalar reference: `y` for `x` (`[n, h, w, cin]`, NHWC) with exact integer `D`, `ΣA`,
 * `ΣK` and the module comment's formula in float64.
 */
export function reference(
  layer: HostLayer,
  x: Float32Array,
  shape: readonly [number, number, number, number],
): Float32Array {
  const [N, H, W, C] = shape;
  const { k, cin, cout } = layer;
  if (C !== cin) throw new Error(`intconv: expects ${cin} input channels, got [${shape}]`);
  const p = (k - 1) / 2;
  const codes = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) codes[i] = codeOf(x[i], layer.input);
  const sa = stepOf(layer.input), la = layer.input.lower;
  const sw = stepOf(layer.weight), lw = layer.weight.lower;
  const out = new Float32Array(N * H * W * cout);
  const d = new Float64Array(cout), ks = new Float64Array(cout);
  for (let n = 0; n < N; n++) {
    for (let oy = 0; oy < H; oy++) {
      for (let ox = 0; ox < W; ox++) {
        d.fill(0);
        ks.fill(0);
        let sumA = 0, cnt = 0;
        for (let ky = 0; ky < k; ky++) {
          const iy = oy + ky - p;
          if (iy < 0 || iy >= H) continue;
          for (let kx = 0; kx < k; kx++) {
            const ix = ox + kx - p;
            if (ix < 0 || ix >= W) continue;
            cnt += cin;
            const xb = ((n * H + iy) * W + ix) * cin;
            const wb = (ky * k + kx) * cin * cout;
            for (let i = 0; i < cin; i++) {
              const a = codes[xb + i];
              sumA += a;
              for (let o = 0; o < cout; o++) {
                const kk = layer.codes[wb + i * cout + o];
                d[o] += a * kk;
                ks[o] += kk;
              }
            }
          }
        }
        const ob = ((n * H + oy) * W + ox) * cout;
        for (let o = 0; o < cout; o++) {
          out[ob + o] = layer.bias[o] + sa * (sw * d[o] + lw * sumA) + la * (sw * ks[o] + lw * cnt);
        }
      }
    }
  }
  return out;
}

/** Register tile of the conv kernel: `tp` pixels along x × `to` output channels (×4). */
export interface Tile {
  readonly tp: number;
  readonly to: number;
}

/**
 * The default tile of a layout, measured on lavapipe (`bench/intconv.ts --tiles`, the whole
 * quantized layer at 1×128×128×64 against our FP32 conv with its bias fused, two runs): 4 codes a
 * word (2–3 bits) 16×8 (W2A2 ×1.26–1.35, against ×0.79–1.10 at 8×8 and ×1.16–1.32 at 32×8); 2
 * codes a word (4 bits, whose chunked extraction keeps a second set of accumulators) 16×4 (W4A4
 * ×0.80, against ×0.61–0.65 at 8×8 and 16×8). In the browser on SwiftShader the W2A2 page model
 * against FP32 at 256² (`bench/page.ts`): ×1.05 with these tiles, ×0.92 with 8×8.
 */
export const tileFor = (l: Layout): Tile => (l.n === 4 ? { tp: 16, to: 8 } : { tp: 16, to: 4 });

/** Words per pixel (a multiple of 4: whole texels) for `cin` channels at `n` codes a word. */
export const wordsOf = (cin: number, l: Layout): number => up(Math.ceil(cin / l.n), 4);

/** The weight operand: texels `(o4, tap·words + word)` of reversed-field words, 4 outputs each. */
export interface PackedWeights {
  /** `width × height` texels of 4 u32. */
  readonly texels: Uint32Array;
  readonly width: number;
  readonly height: number;
  /** `ΣK` per tap and output, then the sum over all taps: `[(taps + 1)·opad]`. */
  readonly ksum: Uint32Array;
  /** Bias padded to `opad`. */
  readonly bias: Float32Array;
  readonly opad: number;
  readonly words: number;
}

/** Packs a layer's weight codes for {@link convWgsl}. */
export function packWeights(layer: HostLayer, l: Layout, tile: Tile): PackedWeights {
  const { k, cin, cout } = layer;
  const taps = k * k;
  const words = wordsOf(cin, l);
  const opad = up(cout, tile.to);
  const width = opad / 4, height = taps * words;
  const texels = new Uint32Array(width * height * 4);
  const ksum = new Uint32Array((taps + 1) * opad);
  for (let tap = 0; tap < taps; tap++) {
    for (let wd = 0; wd < words; wd++) {
      for (let o = 0; o < cout; o++) {
        let v = 0;
        for (let fi = 0; fi < l.n; fi++) {
          const c = wd * l.n + (l.n - 1 - fi);
          if (c < cin) v += layer.codes[(tap * cin + c) * cout + o] * 2 ** (l.s * fi);
        }
        texels[((tap * words + wd) * width + (o >> 2)) * 4 + (o & 3)] = v >>> 0;
      }
    }
    for (let i = 0; i < cin; i++) {
      for (let o = 0; o < cout; o++) {
        ksum[tap * opad + o] += layer.codes[(tap * cin + i) * cout + o];
      }
    }
  }
  for (let tap = 0; tap < taps; tap++) {
    for (let o = 0; o < opad; o++) ksum[taps * opad + o] += ksum[tap * opad + o];
  }
  const bias = new Float32Array(opad);
  bias.set(layer.bias);
  return { texels, width, height, ksum, bias, opad, words };
}

// ---------------------------------------------------------------------------------------------
// WGSL

/**
 * Activations `[N, H, W, C]` → codes in texels `(px·G + g, n·Hp + py)` (G texels of 4 words per
 * padded pixel, `p` zero pixels each side and zero columns up to the tile cover) and `S1`, the
 * code sum of each padded pixel. The code is the fake-quant kernel's
 * `round((clamp(x, l, u) − l) / s)`, `s = (u − l)/levels`, in the same f32 operations (on vec4
 * where C is a multiple of 4, as that kernel does), unrolled for the channel count `cin`.
 */
export function packActivationsWgsl(storage: Storage, l: Layout, cin: number): string {
  const dst = storage === "texture"
    ? `@group(0) @binding(1) var dst: texture_storage_2d<rgba32uint, write>;`
    : `@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;`;
  const store = (t: number, v: string) =>
    storage === "texture"
      ? `  textureStore(dst, vec2<i32>(ppx * u.g + ${t}, ty), ${v});`
      : `  dst[ty * u.wp * u.g + ppx * u.g + ${t}] = ${v};`;
  const vec4 = cin % 4 === 0;
  const lines: string[] = [];
  const code: string[] = []; // WGSL expression of each channel's code
  if (vec4) {
    for (let g = 0; g < cin / 4; g++) {
      lines.push(
        `  let a${g} = select(vec4<u32>(0u), vec4<u32>(round((clamp(src[b4 + ${g}], vl, vh) - vl) / vs)), inside);`,
      );
      lines.push(`  sum += a${g}.x + a${g}.y + a${g}.z + a${g}.w;`);
      for (const c of ["x", "y", "z", "w"]) code.push(`a${g}.${c}`);
    }
  } else {
    for (let c = 0; c < cin; c++) {
      lines.push(
        `  let a${c} = select(0u, u32(round((clamp(src[b + ${c}], u.l, u.hi) - u.l) / s)), inside);`,
      );
      lines.push(`  sum += a${c};`);
      code.push(`a${c}`);
    }
  }
  const words = wordsOf(cin, l);
  const word = (w: number) => {
    const parts: string[] = [];
    for (let f = 0; f < l.n; f++) {
      const c = w * l.n + f;
      if (c < cin) parts.push(f === 0 ? code[c] : `(${code[c]} << ${l.s * f}u)`);
    }
    return parts.length ? parts.join(" | ") : "0u";
  };
  for (let t = 0; t < words / 4; t++) {
    lines.push(store(t, `vec4<u32>(${[0, 1, 2, 3].map((q) => word(4 * t + q)).join(", ")})`));
  }
  return `${storage === "texture" ? REQUIRES : ""}
struct U { n: i32, h: i32, w: i32, c: i32, p: i32, g: i32, wp: i32, hp: i32, total: i32, levels: f32, l: f32, hi: f32 };
@group(0) @binding(0) var<storage, read> src: array<${floatType(vec4)}>;
${dst}
@group(0) @binding(2) var<storage, read_write> S1: array<u32>;
@group(0) @binding(3) var<uniform> u: U;
${ENTRY}
  if (id >= u.total) { return; }
  let ppx = id % u.wp;
  let ty = id / u.wp;
  let px = ppx - u.p;
  let n = ty / u.hp;
  let py = ty % u.hp - u.p;
  let inside = px >= 0 && px < u.w && py >= 0 && py < u.h;
  // Outside the image the loads read pixel 0 and the codes are zeroed.
  let b = select(0, ((n * u.h + py) * u.w + px) * ${cin}, inside);
  let b4 = b / 4;
  let s = (u.hi - u.l) / u.levels;
  let vl = vec4<f32>(u.l);
  let vh = vec4<f32>(u.hi);
  let vs = vec4<f32>(s);
  var sum = 0u;
${lines.join("\n")}
  S1[id] = sum;
}`;
}

/**
 * The integer conv: invocation `(n, oy, x-block, o-block)` computes `tp` pixels × `to` outputs.
 * Per tap and input texel (4 words), each pixel's word `a` times the 4 outputs' weight words
 * (`vec4<u32>` multiply, wrapping mod 2^32) adds `n` MACs per lane to the raw sum, whose
 * dot-product field (`>> s·(n−1)`) goes into the exact accumulator `D` every `T` products.
 */
export function convWgsl(
  storage: Storage,
  k: number,
  l: Layout,
  tile: Tile,
  vec4Out: boolean,
  uboTexels = 0,
) {
  const { tp } = tile;
  const to4 = tile.to / 4;
  const unroll = k % 3 === 0 ? 3 : 1;
  const shift = l.s * (l.n - 1);
  const comp = ["x", "y", "z", "w"];
  const perTexel = 4; // products per pixel and output per kernel column and texel
  // Where the dot-product field is extracted: after each product (T < 4), after each texel
  // (T < 4·unroll) or after every E input texels of a kernel-column step.
  const mode = l.T < perTexel ? "product" : l.T < perTexel * unroll ? "texel" : "chunk";
  const E = Math.max(1, Math.floor(l.T / (perTexel * unroll)));
  const lines: string[] = [];
  const decl: string[] = [];
  for (let p = 0; p < tp; p++) {
    for (let j = 0; j < to4; j++) {
      decl.push(`  var d${p}_${j} = vec4<u32>(0u);`);
      if (mode === "chunk") decl.push(`  var r${p}_${j} = vec4<u32>(0u);`);
    }
  }
  for (let q = 0; q < tp + unroll - 1; q++) {
    lines.push(`          let x${q} = X(xc + ${q} * u.g, row);`);
  }
  for (let kx = 0; kx < unroll; kx++) {
    lines.push("          {");
    for (let a = 0; a < 4; a++) {
      for (let j = 0; j < to4; j++) {
        lines.push(`          let w${a}_${j} = Wt(wc + ${j}, wr + ${kx * 4} * u.g + ${a});`);
      }
    }
    for (let p = 0; p < tp; p++) {
      for (let j = 0; j < to4; j++) {
        const prods = [0, 1, 2, 3].map((a) => `vec4<u32>(x${p + kx}.${comp[a]}) * w${a}_${j}`);
        if (mode === "product") {
          for (const pr of prods) lines.push(`          d${p}_${j} += (${pr}) >> vec4<u32>(SH);`);
        } else if (mode === "texel") {
          lines.push(`          d${p}_${j} += (${prods.join(" + ")}) >> vec4<u32>(SH);`);
        } else {
          lines.push(`          r${p}_${j} += ${prods.join(" + ")};`);
        }
      }
    }
    lines.push("          }");
  }
  const extract: string[] = [];
  if (mode === "chunk") {
    for (let p = 0; p < tp; p++) {
      for (let j = 0; j < to4; j++) {
        extract.push(`        d${p}_${j} += r${p}_${j} >> vec4<u32>(SH);`);
        extract.push(`        r${p}_${j} = vec4<u32>(0u);`);
      }
    }
  }
  const loop = mode === "chunk"
    ? `for (var c0 = 0; c0 < u.g; c0 += ${E}) {
        let c1 = min(c0 + ${E}, u.g);
        for (var c = c0; c < c1; c++) {
${lines.join("\n")}
          xc += 1;
          wr += 4;
        }
${extract.join("\n")}
      }`
    : `for (var c = 0; c < u.g; c++) {
${lines.join("\n")}
          xc += 1;
          wr += 4;
      }`;
  const stores: string[] = [];
  for (let p = 0; p < tp; p++) {
    stores.push(`  if (valid && ox0 + ${p} < u.w) {
    let ox = ox0 + ${p};
    var sumA = 0u;
    var cnt = 0u;
${[...Array(to4).keys()].map((j) => `    var kout${j} = vec4<u32>(0u);`).join("\n")}
    for (var ky = 0; ky < ${k}; ky++) {
      let iy = oy + ky - ${(k - 1) / 2};
      let prow = (n * u.hp + oy + ky) * u.wp;
      for (var kx = 0; kx < ${k}; kx++) {
        let ix = ox + kx - ${(k - 1) / 2};
        sumA += S1[prow + ox + kx];
        if (iy >= 0 && iy < u.h && ix >= 0 && ix < u.w) {
          cnt += 1u;
        } else {
${
      [...Array(to4).keys()].map((j) =>
        `          kout${j} += K[(ky * ${k} + kx) * u.o4 + o4 + ${j}];`
      ).join("\n")
    }
        }
      }
    }
    let fa = f32(sumA);
    let fc = f32(cnt * u32(u.cin));
    let base = ((n * u.h + oy) * u.w + ox) * u.o + o4 * 4;`);
    for (let j = 0; j < to4; j++) {
      stores.push(`    {
      let sk = vec4<f32>(K[${k * k} * u.o4 + o4 + ${j}] - kout${j});
      let y = B[o4 + ${j}] + sa * (u.sw * vec4<f32>(d${p}_${j}) + u.lw * fa) + u.la * (u.sw * sk + u.lw * fc);`);
      if (vec4Out) {
        stores.push(`      if (o4 * 4 + ${4 * j} < u.o) { Y[base / 4 + ${j}] = y; }`);
      } else {
        for (let c = 0; c < 4; c++) {
          stores.push(
            `      if (o4 * 4 + ${4 * j + c} < u.o) { Y[base + ${4 * j + c}] = y.${comp[c]}; }`,
          );
        }
      }
      stores.push("    }");
    }
    stores.push("  }");
  }
  return `${storage === "texture" ? REQUIRES : ""}
const SH = ${shift}u;
struct U { n: i32, h: i32, w: i32, xb: i32, ob: i32, g: i32, o: i32, hp: i32, wp: i32, xw: i32, ww: i32, total: i32, cin: i32, o4: i32, levels: f32, la: f32, ha: f32, sw: f32, lw: f32 };
@group(0) @binding(0) var<storage, read_write> Y: array<${vec4Out ? "vec4<f32>" : "f32"}>;
${operand(storage, "X", 1, "u.xw", "u32")}
${
    uboTexels > 0
      ? `@group(0) @binding(2) var<uniform> WtB: array<vec4<u32>, ${uboTexels}>;`
      : `@group(0) @binding(2) var<storage, read> WtB: array<vec4<u32>>;`
  }
fn Wt(x: i32, y: i32) -> vec4<u32> { return WtB[y * u.ww + x]; }
@group(0) @binding(3) var<storage, read> S1: array<u32>;
@group(0) @binding(4) var<storage, read> K: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(6) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  // The output-channel block comes from the workgroup id alone: every weight, ΣK and bias
  // index is uniform over the workgroup, which llvmpipe turns into scalar loads (divergent
  // storage loads are per-lane loops there, PLATFORM.md).
  let wg = i32(wid.y * nwg.x + wid.x);
  let ob = wg % u.ob;
  // No early return before the main loop: with every lane active, llvmpipe may load a
  // uniform address once (lanes past the end compute a copy of the last block, never stored).
  let pb0 = (wg / u.ob) * ${WG} + i32(li);
  let valid = pb0 < u.total;
  let pb = min(pb0, u.total - 1);
  var r = pb;
  let xb = r % u.xb;
  r = r / u.xb;
  let oy = r % u.h;
  let n = r / u.h;
  let ox0 = xb * ${tp};
  let o4 = ob * ${to4};
  let wc = o4;
  let sa = (u.ha - u.la) / u.levels;
${decl.join("\n")}
  for (var ky = 0; ky < ${k}; ky++) {
    let row = n * u.hp + oy + ky;
    for (var kx = 0; kx < ${k}; kx += ${unroll}) {
      var xc = (ox0 + kx) * u.g;
      var wr = (ky * ${k} + kx) * 4 * u.g;
      ${loop}
    }
  }
${stores.join("\n")}
}`;
}

// ---------------------------------------------------------------------------------------------
// GPU resources and dispatch

/** A layer's weights on the device. */
export interface DeviceLayer {
  readonly host: HostLayer;
  readonly layout: Layout;
  readonly tile: Tile;
  readonly storage: Storage;
  readonly packed: PackedWeights;
  readonly weights: GPUBuffer;
  readonly ksum: GPUBuffer;
  readonly bias: GPUBuffer;
}

const TEX_USAGE = () => GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST;

/** Weights up to this size are bound as a uniform buffer (the WebGPU default binding limit). */
const UBO_BYTES = 65536;

/** Uploads a layer's packed weights (once; {@link release} frees them). */
export function upload(
  device: GPUDevice,
  host: HostLayer,
  layout: Layout,
  storage: Storage,
  tile: Tile = tileFor(layout),
): DeviceLayer {
  const packed = packWeights(host, layout, tile);
  // Weights stay in a storage buffer on every adapter: their indices are workgroup-uniform.
  const ubo = packed.texels.byteLength <= UBO_BYTES;
  const weights = buffer(device, packed.texels, ubo);
  return {
    host,
    layout,
    tile,
    storage,
    packed,
    weights,
    ksum: buffer(device, packed.ksum),
    bias: buffer(device, packed.bias),
  };
}

function buffer(device: GPUDevice, data: Uint32Array | Float32Array, uniform = false): GPUBuffer {
  const b = device.createBuffer({
    size: Math.max(16, up(data.byteLength, 16)),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST |
      (uniform ? GPUBufferUsage.UNIFORM : 0),
  });
  device.queue.writeBuffer(b, 0, data);
  return b;
}

/** Frees a layer's device resources. */
export function release(l: DeviceLayer): void {
  l.weights.destroy();
  l.ksum.destroy();
  l.bias.destroy();
}

const freeTextures = new Map<string, GPUTexture[]>();
const freeBuffers = new Map<number, GPUBuffer[]>();

function scratchTexture(device: GPUDevice, width: number, height: number): GPUTexture {
  const key = `${width}x${height}`;
  return freeTextures.get(key)?.pop() ?? device.createTexture({
    size: [width, height],
    format: "rgba32uint",
    usage: TEX_USAGE(),
    label: `qat-intconv-act:${key}`,
  });
}

function scratchBuffer(device: GPUDevice, bytes: number): GPUBuffer {
  const size = Math.max(256, up(bytes, 256));
  return freeBuffers.get(size)?.pop() ??
    device.createBuffer({ size, usage: GPUBufferUsage.STORAGE });
}

function giveBack(r: GPUTexture | GPUBuffer): void {
  if (r instanceof GPUTexture) {
    const key = `${r.width}x${r.height}`;
    freeTextures.set(key, [...(freeTextures.get(key) ?? []), r]);
  } else {
    freeBuffers.set(r.size, [...(freeBuffers.get(r.size) ?? []), r]);
  }
}

/** Destroys the pooled scratch textures and buffers. */
export function trim(): void {
  for (const l of freeTextures.values()) for (const t of l) t.destroy();
  for (const l of freeBuffers.values()) for (const b of l) b.destroy();
  freeTextures.clear();
  freeBuffers.clear();
}

const bindingOf = (r: GPUTexture | GPUBuffer) =>
  r instanceof GPUTexture ? { texture: r } : { buffer: r };

/** Adapter limits the operands must fit. */
export interface Limits {
  readonly maxTexture: number;
  readonly maxBinding: number;
}

/** Whether an input of this shape fits the adapter's texture and binding limits. */
export function fits(layer: DeviceLayer, shape: readonly number[], limits: Limits): boolean {
  const [N, H, W] = shape;
  const { k, cin, cout } = layer.host;
  const g = layer.packed.words / 4;
  const p = (k - 1) / 2;
  const xw = (up(W, layer.tile.tp) + 2 * p) * g, xh = N * (H + 2 * p);
  if (layer.storage === "texture" && (xw > limits.maxTexture || xh > limits.maxTexture)) {
    return false;
  }
  return xw * xh * 16 <= limits.maxBinding &&
    N * H * W * Math.max(cin, cout) * 4 <= limits.maxBinding;
}

/**
 * Records the two dispatches (codes, then the conv) for `x` (`[n, h, w, cin]`) into tfjs's
 * encoder; returns the output tensor info. The input must {@link fits}.
 */
export function run(
  gpu: Gpu,
  layer: DeviceLayer,
  x: tf.TensorInfo,
  limits: Limits,
): tf.TensorInfo {
  const [N, H, W, C] = x.shape as [number, number, number, number];
  const { k, cin, cout } = layer.host;
  if (C !== cin) throw new Error(`intconv: expects ${cin} input channels, got [${x.shape}]`);
  const { tp } = layer.tile;
  const p = (k - 1) / 2;
  const g = layer.packed.words / 4;
  const cover = up(W, tp);
  const wp = cover + 2 * p;
  const hp = H + 2 * p;
  const xw = wp * g, xh = N * hp;
  const storage = layer.storage;
  if (!fits(layer, x.shape, limits)) {
    throw new Error(`intconv: [${x.shape}] exceeds the adapter's limits (check fits() first)`);
  }
  const device = gpu.device;
  const codes = storage === "texture"
    ? scratchTexture(device, xw, xh)
    : scratchBuffer(device, xw * xh * 16);
  const s1 = scratchBuffer(device, wp * hp * N * 4);
  const total = wp * hp * N;
  const a = layer.host.input;
  const pack = gpu.pipeline(
    `qat-intconv-pack-${storage}-n${layer.layout.n}-c${cin}`,
    () => packActivationsWgsl(storage, layer.layout, cin),
  );
  gpu.dispatch(pack, [
    { buffer: gpu.bufferOf(x) },
    bindingOf(codes),
    { buffer: s1 },
    {
      buffer: gpu.uniforms([N, H, W, C, p, g, wp, hp, total], [2 ** a.bits - 1, a.lower, a.upper]),
    },
  ], total);
  const out = gpu.output([N, H, W, cout]);
  const vec4Out = cout % 4 === 0;
  const { n, s, T } = layer.layout;
  const ubo = (layer.weights.usage & GPUBufferUsage.UNIFORM) !== 0
    ? layer.packed.texels.length / 4
    : 0;
  const conv = gpu.pipeline(
    `qat-intconv-${storage}-k${k}-n${n}s${s}T${T}-tp${tp}-to${layer.tile.to}-${vec4Out}-u${ubo}`,
    () => convWgsl(storage, k, layer.layout, layer.tile, vec4Out, ubo),
  );
  const xb = cover / tp;
  const ob = layer.packed.opad / layer.tile.to;
  const blocks = N * H * xb;
  const invocations = Math.ceil(blocks / WG) * WG * ob;
  const w = layer.host.weight;
  gpu.dispatch(conv, [
    { buffer: out.buffer },
    bindingOf(codes),
    { buffer: layer.weights },
    { buffer: s1 },
    { buffer: layer.ksum },
    { buffer: layer.bias },
    {
      buffer: gpu.uniforms(
        [
          N,
          H,
          W,
          xb,
          ob,
          g,
          cout,
          hp,
          wp,
          xw,
          layer.packed.width,
          invocations,
          cin,
          layer.packed
            .opad / 4,
        ],
        [2 ** a.bits - 1, a.lower, a.upper, stepOf(w), w.lower],
      ),
    },
  ], invocations);
  giveBack(codes);
  giveBack(s1);
  return out.info;
}
