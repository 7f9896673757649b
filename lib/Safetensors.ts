/**
 * safetensors: the tensor container of the Hugging Face ecosystem, read and written without
 * any dependency, and the host-side tensor value that every importer here produces.
 *
 * Layout (the format's own definition): an unsigned little-endian 64-bit header length `n`,
 * `n` bytes of UTF-8 JSON, then the data. The JSON maps each tensor name to
 * `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the data, which the tensors
 * cover without gaps or overlaps) and may hold `"__metadata__"`, a map of strings. We read
 * F64/F32/F16/BF16 as float32 and the integer types exactly (as float64); we write F32 and U8
 * with the header padded by spaces to a multiple of 8 bytes, as the reference writer does.
 * Every check names the file and the field: `model.safetensors: tensor "conv.weight":
 * data_offsets [0, 40] hold 40 bytes, but F32 [3, 4] needs 48`.
 *
 * @module
 */
import * as z from "zod";

/** Element types by their safetensors names. */
export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;

/** An element type name. */
export type DType = keyof typeof DTYPE_BYTES;

/**
 * A tensor on the host, as read from a file: its stored element type, its shape and its
 * values in row-major order (floating types as float32, integer types as float64, exact up to
 * 2^53).
 */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: ReadonlyArray<number>;
  readonly values: Float32Array | Float64Array;
}

/** A file is not valid safetensors (or not what the reader expects); names file and field. */
export class SafetensorsError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = "SafetensorsError";
  }
}

const Entry = z.object({
  dtype: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
}).strict();

/** The parsed header: tensor entries in file order, and the metadata. */
export interface Header {
  readonly tensors: ReadonlyArray<
    {
      readonly name: string;
      readonly dtype: DType;
      readonly shape: ReadonlyArray<number>;
      readonly begin: number;
      readonly end: number;
    }
  >;
  readonly metadata: Readonly<Record<string, string>>;
  /** Where the data starts in the file. */
  readonly dataStart: number;
}

const numel = (shape: ReadonlyArray<number>) => shape.reduce((a, b) => a * b, 1);

/** Parses and checks the header of safetensors bytes (which may stop after the header). */
export function parseHeader(bytes: Uint8Array, file: string): Header {
  const fail = (reason: string): never => {
    throw new SafetensorsError(file, reason);
  };
  if (bytes.length < 8) fail("shorter than the 8-byte header length");
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) {
    fail(`header length ${n} runs past the end of the file (${bytes.length} bytes)`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(8, 8 + Number(n)),
    ));
  } catch (e) {
    fail(`header is not JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    fail("header is not a JSON object");
  }
  const tensors: Array<Header["tensors"][number]> = [];
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      const m = z.record(z.string(), z.string()).safeParse(v);
      if (!m.success) fail(`__metadata__: ${z.prettifyError(m.error)} (values must be strings)`);
      metadata = m.data!;
      continue;
    }
    const e = Entry.safeParse(v);
    if (!e.success) fail(`tensor "${name}": ${z.prettifyError(e.error)}`);
    const { dtype, shape, data_offsets: [begin, end] } = e.data!;
    if (!(dtype in DTYPE_BYTES)) {
      fail(`tensor "${name}": dtype "${dtype}" is not supported (${Object.keys(DTYPE_BYTES)})`);
    }
    const need = numel(shape) * DTYPE_BYTES[dtype as DType];
    if (end < begin || end - begin !== need) {
      fail(
        `tensor "${name}": data_offsets [${begin}, ${end}] hold ${end - begin} bytes, ` +
          `but ${dtype} [${shape}] needs ${need}`,
      );
    }
    tensors.push({ name, dtype: dtype as DType, shape, begin, end });
  }
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const t of sorted) {
    if (t.begin !== at && t.end > t.begin) {
      fail(
        `tensor "${t.name}": data_offsets start at ${t.begin}, but the previous tensor ends ` +
          `at ${at} (tensors must cover the data without gaps or overlaps)`,
      );
    }
    at = Math.max(at, t.end);
  }
  return { tensors, metadata, dataStart: 8 + Number(n) };
}

/** Converts one IEEE half to a number. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m === 0 ? s * Infinity : NaN;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * The values of `count` elements of type `dtype` stored little-endian at `bytes[offset…]`
 * (floating types as float32, integers as float64).
 */
export function decodeValues(
  bytes: Uint8Array,
  offset: number,
  count: number,
  dtype: DType,
): Float32Array | Float64Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, count * DTYPE_BYTES[dtype]);
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    case "F64": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(8 * i, true);
      return out;
    }
    case "F16": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    case "BF16": {
      const out = new Float32Array(count);
      const word = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < count; i++) {
        word.setUint32(0, view.getUint16(2 * i, true) << 16);
        out[i] = word.getFloat32(0);
      }
      return out;
    }
    default: {
      const out = new Float64Array(count);
      for (let i = 0; i < count; i++) {
        out[i] = dtype === "I64"
          ? Number(view.getBigInt64(8 * i, true))
          : dtype === "I32"
          ? view.getInt32(4 * i, true)
          : dtype === "I16"
          ? view.getInt16(2 * i, true)
          : dtype === "I8"
          ? view.getInt8(i)
          : view.getUint8(i);
      }
      return out;
    }
  }
}

/** Everything in a safetensors file. */
export interface Contents {
  readonly tensors: ReadonlyMap<string, HostTensor>;
  readonly metadata: Readonly<Record<string, string>>;
  /** The raw bytes of each tensor (for formats that keep their own encodings, lib/Packed.ts). */
  readonly raw: ReadonlyMap<string, Uint8Array>;
}

/** Decodes safetensors bytes; `file` names the source in errors. */
export function decode(bytes: Uint8Array, file: string): Contents {
  const h = parseHeader(bytes, file);
  const dataLength = bytes.length - h.dataStart;
  const end = h.tensors.reduce((m, t) => Math.max(m, t.end), 0);
  if (end > dataLength) {
    throw new SafetensorsError(
      file,
      `truncated: the tensors need ${end} bytes of data, the file has ${dataLength}`,
    );
  }
  const tensors = new Map<string, HostTensor>();
  const raw = new Map<string, Uint8Array>();
  for (const t of h.tensors) {
    const values = decodeValues(bytes, h.dataStart + t.begin, numel(t.shape), t.dtype);
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, values });
    raw.set(t.name, bytes.subarray(h.dataStart + t.begin, h.dataStart + t.end));
  }
  return { tensors, metadata: h.metadata, raw };
}

/** Reads a safetensors file. */
export async function read(file: string): Promise<Contents> {
  return decode(await Deno.readFile(file), file);
}

/** A tensor to write: float32 values, or raw bytes of a given dtype (e.g. packed U8 codes). */
export type Writable =
  | { readonly dtype: "F32"; readonly shape: ReadonlyArray<number>; readonly values: Float32Array }
  | { readonly dtype: DType; readonly shape: ReadonlyArray<number>; readonly raw: Uint8Array };

/** Encodes tensors (in the given order) and string metadata as safetensors bytes. */
export function encode(
  tensors: ReadonlyArray<readonly [string, Writable]>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === "__metadata__") {
      throw new Error('safetensors: no tensor may be named "__metadata__"');
    }
    const b = "raw" in t
      ? t.raw
      : new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength);
    const need = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (b.length !== need) {
      throw new Error(
        `safetensors: tensor "${name}" has ${b.length} bytes, ${t.dtype} [${t.shape}] needs ${need}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + b.length] };
    blobs.push(b);
    offset += b.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (new TextEncoder().encode(json).length % 8)) % 8);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let o = 8 + head.length;
  for (const b of blobs) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}
