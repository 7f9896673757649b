/**
 * Our WebGPU batched matmul (`BatchMatMul`, float32, either operand transposed, a batch of 1 on
 * either side broadcast). Operands are packed like the conv operands (see wgsl.ts) and the
 * kernel is the register-tiled 1×1 convolution loop. Other batch broadcasts stay stock.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Binding, Gpu, Storage } from "./gpu.ts";
import * as Wgsl from "./wgsl.ts";
import type { Tuning } from "./tuning.ts";

/** A batched matmul our kernel handles: `[batch, m, k] · [batch, k, n] → [batch, m, n]`. */
export interface MatMulShape {
  readonly batch: number;
  readonly batchA: number;
  readonly batchB: number;
  readonly m: number;
  readonly n: number;
  readonly k: number;
  readonly transposeA: boolean;
  readonly transposeB: boolean;
  /** The tfjs output shape (broadcast batch dims, then m, n). */
  readonly outShape: number[];
}

/** The shape of a BatchMatMul our kernel supports, or undefined (then the stock kernel runs). */
export function matMulShape(
  a: readonly number[],
  b: readonly number[],
  transposeA: boolean,
  transposeB: boolean,
): MatMulShape | undefined {
  if (a.length < 2 || b.length < 2) return undefined;
  const ra = a.length;
  const rb = b.length;
  const m = transposeA ? a[ra - 1] : a[ra - 2];
  const k = transposeA ? a[ra - 2] : a[ra - 1];
  const kb = transposeB ? b[rb - 1] : b[rb - 2];
  const n = transposeB ? b[rb - 2] : b[rb - 1];
  if (k !== kb || m <= 0 || n <= 0 || k <= 0) return undefined;
  const batchA = tf.util.sizeFromShape(a.slice(0, -2));
  const batchB = tf.util.sizeFromShape(b.slice(0, -2));
  let outer: number[];
  try {
    outer = tf.broadcast_util.assertAndGetBroadcastShape(a.slice(0, -2), b.slice(0, -2));
  } catch {
    return undefined;
  }
  const batch = tf.util.sizeFromShape(outer);
  const sameDims = ra === rb && a.slice(0, -2).every((d, i) => d === b[i]);
  if (!(sameDims || batchA === 1 || batchB === 1) || batch !== Math.max(batchA, batchB)) {
    return undefined;
  }
  if (batch <= 0) return undefined;
  return { batch, batchA, batchB, m, n, k, transposeA, transposeB, outShape: [...outer, m, n] };
}

const up = (x: number, m: number) => Math.ceil(x / m) * m;

interface PackedMatrix {
  readonly resource: GPUTexture | GPUBuffer;
  readonly width: number;
  /** Rows per panel. */
  readonly h: number;
}

/** Layout of a packed matrix batch, or undefined when it fits no storage. */
function layout(
  storage: Storage,
  t: Tuning,
  rowsTotal: number,
  rowAlign: number,
  c4: number,
): { width: number; h: number } | undefined {
  if (storage === "buffer") {
    return rowsTotal * c4 * 16 <= t.maxBinding ? { width: c4, h: rowsTotal } : undefined;
  }
  const h = rowsTotal <= t.maxTexture ? rowsTotal : Math.floor(t.maxTexture / rowAlign) * rowAlign;
  if (h <= 0) return undefined;
  const width = Math.ceil(rowsTotal / h) * c4;
  return width <= t.maxTexture ? { width, h } : undefined;
}

function pack(
  gpu: Gpu,
  storage: Storage,
  src: GPUBuffer,
  d: { batch: number; r: number; c: number; rp: number; c4: number },
  transposed: boolean,
  l: { width: number; h: number },
): PackedMatrix {
  const height = storage === "texture" ? Math.min(l.h, d.batch * d.rp) : d.batch * d.rp;
  const rowBytes = d.c * 4;
  if (
    storage === "texture" && !transposed && d.c4 * 4 === d.c && rowBytes % 256 === 0 &&
    height === d.batch * d.rp
  ) {
    // Copies run far faster than a packing shader; the zero padding rows of a texture tagged
    // with its exact layout are never written.
    const tag = `mat:${d.batch},${d.r},${d.c},${d.rp}`;
    const texture = gpu.texture(l.width, height, tag);
    if (d.rp === d.r) gpu.copyToTexture(src, 0, rowBytes, texture, [0, 0], [d.c4, d.batch * d.r]);
    else {
      for (let b = 0; b < d.batch; b++) {
        gpu.copyToTexture(src, b * d.r * rowBytes, rowBytes, texture, [0, b * d.rp], [d.c4, d.r]);
      }
    }
    return { resource: texture, width: l.width, h: l.h };
  }
  const resource = storage === "texture"
    ? gpu.texture(l.width, height)
    : gpu.scratch(l.width * height * 16);
  const total = d.batch * d.rp * d.c4;
  const pipe = gpu.pipeline(
    `qat-pack-mat-${storage}-${transposed}`,
    () => Wgsl.packMatrix(storage, transposed),
  );
  const u = gpu.uniforms([d.r, d.c, d.rp, d.c4, l.h, l.width, total]);
  const dst: Binding = resource instanceof GPUTexture
    ? { texture: resource }
    : { buffer: resource };
  gpu.dispatch(pipe, [{ buffer: src }, dst, { buffer: u }], total);
  return { resource, width: l.width, h: l.h };
}

/** The matmul tile for `n` output columns. */
export function matMulTile(t: Tuning, n: number): Wgsl.MatMulTile {
  const tn = Math.min(t.forwardMaxTileO, up(n, 4));
  return { tm: Math.max(1, Math.floor((t.matMulAccumulators * 4) / tn)), tn };
}

/** `C = op(A)·op(B)` for a {@link MatMulShape}, or undefined when the limits rule it out. */
export function matMul(
  gpu: Gpu,
  t: Tuning,
  s: MatMulShape,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
): tf.TensorInfo | undefined {
  const tile = matMulTile(t, s.n);
  const k4 = Math.ceil(s.k / 4);
  const kp = k4 * 4;
  const mp = up(s.m, tile.tm);
  const np = up(s.n, tile.tn);
  const bytes = [s.batchA * s.m * s.k, s.batchB * s.k * s.n, s.batch * s.m * s.n];
  if (bytes.some((e) => e * 4 > t.maxBinding)) return undefined;
  let storage: Storage = t.storage;
  let la = layout(storage, t, s.batchA * mp, tile.tm, k4);
  let lb = layout(storage, t, s.batchB * kp, kp, np / 4);
  if (!la || !lb) {
    storage = "buffer";
    la = layout(storage, t, s.batchA * mp, tile.tm, k4);
    lb = layout(storage, t, s.batchB * kp, kp, np / 4);
    if (!la || !lb) return undefined;
  }
  const pa = pack(
    gpu,
    storage,
    gpu.bufferOf(a),
    { batch: s.batchA, r: s.m, c: s.k, rp: mp, c4: k4 },
    s.transposeA,
    la,
  );
  const pb = pack(
    gpu,
    storage,
    gpu.bufferOf(b),
    { batch: s.batchB, r: s.k, c: s.n, rp: kp, c4: np / 4 },
    s.transposeB,
    lb,
  );
  const out = gpu.output(s.outShape);
  const vec4Out = s.n % 4 === 0;
  const pipe = gpu.pipeline(
    `qat-matmul-${storage}-tm${tile.tm}-tn${tile.tn}-${vec4Out}`,
    () => Wgsl.matMul(storage, tile, vec4Out),
  );
  const mb = mp / tile.tm;
  const nb = np / tile.tn;
  const total = s.batch * mb * nb;
  const u = gpu.uniforms([
    s.m,
    s.n,
    k4,
    mp,
    kp,
    mb,
    nb,
    s.batchA,
    s.batchB,
    pa.h,
    pb.h,
    pa.width,
    pb.width,
    np / 4,
    total,
  ]);
  const bind = (p: PackedMatrix): Binding =>
    p.resource instanceof GPUTexture ? { texture: p.resource } : { buffer: p.resource };
  gpu.dispatch(pipe, [{ buffer: out.buffer }, bind(pa), bind(pb), { buffer: u }], total);
  gpu.release(pa.resource, pb.resource);
  return out.info;
}
