/**
 * PyTorch checkpoints read without Python: what `torch.save(model.state_dict(), f)` writes.
 *
 * Two container formats, both written by `torch.save`:
 *
 * - **zip** (the default since PyTorch 1.6): a zip archive (stored or deflated entries, ZIP64
 *   understood) holding `<name>/data.pkl`, the pickled object, and `<name>/data/<key>`, one raw
 *   little-endian record per storage; `<name>/byteorder`, when present, must say `little`.
 * - **legacy** (`_use_new_zipfile_serialization=False`, and every file from PyTorch 0.4–1.5,
 *   such as EDSR-PyTorch's released `.pt` files): five pickles in a row (a magic number, the
 *   protocol version 1001, system info, the object, the list of storage keys), then each
 *   storage as an 8-byte little-endian element count followed by its bytes.
 *
 * The pickles are read by a small unpickler ({@link unpickle}) that knows the opcodes of
 * protocols 0–4 that such files use and imports nothing: `collections.OrderedDict` becomes a
 * `Map`, `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` a strided view
 * of a storage, `_rebuild_parameter` its tensor, `torch.<Type>Storage` an element type; any
 * other global becomes an inert value (so a checkpoint's epoch counters or argparse options do
 * not stop the read). Views are materialised with their storage offset and strides, and every
 * index is checked against the storage's size.
 *
 * The state dict is found inside the usual wrappers ({@link findStateDict}): `params_ema`,
 * `params` (BasicSR, SwinIR), `state_dict`, `model`, `net`, or the object itself; a
 * `module.` prefix (DataParallel) is dropped.
 *
 * @module
 */
import { decodeValues, DTYPE_BYTES } from "./Safetensors.ts";
import type { DType, HostTensor } from "./Safetensors.ts";

/** A checkpoint could not be read; names the file and what is wrong. */
export class TorchError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = "TorchError";
  }
}

// ---------------------------------------------------------------------------------------------
// Values the unpickler makes.

/** A Python global (`module.name`) that has no meaning here. */
export class Global {
  constructor(readonly module: string, readonly name: string) {}
  toString(): string {
    return `${this.module}.${this.name}`;
  }
}

/** The result of calling or instantiating a {@link Global}: kept, never interpreted. */
export class Opaque {
  state: unknown = undefined;
  constructor(readonly global: Global, readonly args: unknown) {}
}

/** A storage, as a persistent id names it. */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: DType,
    readonly numel: number,
    /** Element offset of a legacy storage view into its root storage. */
    readonly viewOffset = 0,
  ) {}
}

/** A strided view of a storage (`_rebuild_tensor_v2`). */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: ReadonlyArray<number>,
    readonly stride: ReadonlyArray<number>,
  ) {}
}

/** A Python dict (insertion order, keys of any hashable kind we meet: strings, numbers). */
export type PyDict = Map<unknown, unknown>;

const STORAGE_TYPES: Readonly<Record<string, DType>> = {
  FloatStorage: "F32",
  DoubleStorage: "F64",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

/** The storage element type a persistent id's type names. */
class StorageType {
  constructor(readonly dtype: DType) {}
}

type Callable = (args: ReadonlyArray<unknown>) => unknown;

const asInt = (v: unknown, what: string): number => {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint") return Number(v);
  throw new Error(`${what}: expected an integer, got ${String(v)}`);
};

const asInts = (v: unknown, what: string): number[] => {
  if (!Array.isArray(v)) throw new Error(`${what}: expected a tuple of integers`);
  return v.map((x, i) => asInt(x, `${what}[${i}]`));
};

/** The globals the unpickler gives a meaning; everything else is a {@link Global}. */
function findClass(module: string, name: string): unknown {
  const full = `${module}.${name}`;
  if (full === "collections.OrderedDict" || full === "builtins.dict") {
    const dict: Callable = (args) =>
      new Map(Array.isArray(args[0]) ? (args[0] as [unknown, unknown][]) : []);
    return dict;
  }
  if (full === "torch._utils._rebuild_tensor_v2" || full === "torch._utils._rebuild_tensor") {
    const rebuild: Callable = (args) => {
      const storage = args[0];
      if (!(storage instanceof StorageRef)) throw new Error(`${full}: no storage`);
      return new TensorRef(
        storage,
        asInt(args[1], "storage offset"),
        asInts(args[2], "size"),
        asInts(args[3], "stride"),
      );
    };
    return rebuild;
  }
  if (
    full === "torch._utils._rebuild_parameter" ||
    full === "torch._utils._rebuild_parameter_with_state"
  ) {
    const parameter: Callable = (args) => args[0];
    return parameter;
  }
  if (module === "torch" && name in STORAGE_TYPES) return new StorageType(STORAGE_TYPES[name]);
  return new Global(module, name);
}

// ---------------------------------------------------------------------------------------------
// The unpickler.

/** What {@link unpickle} returns: the object and the offset just past its STOP opcode. */
export interface Unpickled {
  readonly value: unknown;
  readonly end: number;
}

/**
 * Reads one pickle from `bytes[start…]` (protocols 0–4, the opcodes `torch.save` and plain
 * Python containers use). `persistentLoad` resolves persistent ids (`BINPERSID`).
 */
export function unpickle(
  bytes: Uint8Array,
  start = 0,
  persistentLoad: (pid: unknown) => unknown = (pid) => pid,
): Unpickled {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let o = start;
  const need = (n: number) => {
    if (o + n > bytes.length) throw new Error(`pickle truncated at byte ${o}`);
  };
  const u8 = () => (need(1), bytes[o++]);
  const u16 = () => (need(2), o += 2, view.getUint16(o - 2, true));
  const u32 = () => (need(4), o += 4, view.getUint32(o - 4, true));
  const i32 = () => (need(4), o += 4, view.getInt32(o - 4, true));
  const u64 = () => (need(8), o += 8, Number(view.getBigUint64(o - 8, true)));
  const take = (n: number) => (need(n), o += n, bytes.subarray(o - n, o));
  const line = () => {
    const end = bytes.indexOf(0x0a, o);
    if (end < 0) throw new Error(`pickle: unterminated line at byte ${o}`);
    const s = new TextDecoder("latin1").decode(bytes.subarray(o, end));
    o = end + 1;
    return s;
  };
  const utf8 = (b: Uint8Array) => new TextDecoder().decode(b);
  const pop = () => {
    if (stack.length === 0) throw new Error(`pickle: stack underflow at byte ${o}`);
    return stack.pop();
  };
  const popMark = () => {
    const m = marks.pop();
    if (m === undefined) throw new Error(`pickle: no mark at byte ${o}`);
    return stack.splice(m);
  };
  const top = () => stack[stack.length - 1];
  const long = (b: Uint8Array): number | bigint => {
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b.length > 0 && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  };
  const call = (f: unknown, args: unknown): unknown => {
    const list = Array.isArray(args) ? args : [];
    if (typeof f === "function") return (f as Callable)(list);
    if (f instanceof Global) return new Opaque(f, args);
    if (f instanceof StorageType) return new Opaque(new Global("torch", "Storage"), args);
    throw new Error(`pickle: cannot call ${String(f)} at byte ${o}`);
  };
  const setItems = (d: unknown, items: unknown[]) => {
    if (d instanceof Map) {
      for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
    } else if (!(d instanceof Opaque)) {
      throw new Error(`pickle: SETITEM on a non-dict at byte ${o}`);
    }
  };
  for (;;) {
    const at = o;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        u8();
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: o };
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x74: // TUPLE
        stack.push(popMark());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x61: { // APPEND
        const v = pop();
        (top() as unknown[]).push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        (top() as unknown[]).push(...items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: { // DICT
        const items = popMark();
        const d = new Map();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top() as Set<unknown>;
        for (const i of items) s.add(i);
        break;
      }
      case 0x91: // FROZENSET
        stack.push(new Set(popMark()));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(take(u8())));
        break;
      case 0x8b: // LONG4
        stack.push(long(take(u32())));
        break;
      case 0x49: { // INT
        const s = line();
        stack.push(s === "01" ? true : s === "00" ? false : Number.parseInt(s, 10));
        break;
      }
      case 0x4c: // LONG
        stack.push(Number.parseInt(line().replace(/L$/, ""), 10));
        break;
      case 0x47: // BINFLOAT
        need(8);
        o += 8;
        stack.push(view.getFloat64(o - 8, false));
        break;
      case 0x46: // FLOAT
        stack.push(Number.parseFloat(line()));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(take(u64())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape; ASCII in practice)
        stack.push(line());
        break;
      case 0x54: // BINSTRING (Python 2 str)
        stack.push(new TextDecoder("latin1").decode(take(i32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(new TextDecoder("latin1").decode(take(u8())));
        break;
      case 0x53: // STRING
        stack.push(line().replace(/^(['"])(.*)\1$/, "$2"));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT
        memo.set(Number.parseInt(line(), 10), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number.parseInt(line(), 10);
        if (!memo.has(k)) throw new Error(`pickle: memo ${k} is not set (byte ${at})`);
        stack.push(memo.get(k));
        break;
      }
      case 0x63: { // GLOBAL
        const module = line();
        stack.push(findClass(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        stack.push(findClass(String(module), String(name)));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop(), f = pop();
        stack.push(call(f, args));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop(), cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        pop();
        const args = pop(), cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        stack.push(call(items[0], items.slice(1)));
        break;
      }
      case 0x69: { // INST
        const module = line();
        const cls = findClass(module, line());
        stack.push(call(cls, popMark()));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof Opaque) obj.state = state;
        else if (obj instanceof Map && state instanceof Map) {
          for (const [k, v] of state) obj.set(k, v);
        }
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentLoad(pop()));
        break;
      case 0x50: // PERSID
        stack.push(persistentLoad(line()));
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      default:
        throw new Error(`pickle: unsupported opcode 0x${op.toString(16)} at byte ${at}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Zip archives.

/** One entry of a zip archive. */
interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly compressed: number;
  readonly size: number;
  readonly localOffset: number;
}

/** The entries of a zip archive, from its central directory (ZIP64 understood). */
function zipEntries(b: Uint8Array, file: string): ZipEntry[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const fail = (reason: string): never => {
    throw new TorchError(file, `zip archive: ${reason}`);
  };
  let eocd = -1;
  for (let i = b.length - 22; i >= Math.max(0, b.length - 22 - 65535); i--) {
    if (v.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail("no end of central directory record (truncated file?)");
  let count = v.getUint16(eocd + 10, true);
  let cdOffset = v.getUint32(eocd + 16, true);
  if (count === 0xffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || v.getUint32(loc, true) !== 0x07064b50) fail("ZIP64 locator missing");
    const z64 = Number(v.getBigUint64(loc + 8, true));
    if (z64 + 56 > b.length || v.getUint32(z64, true) !== 0x06064b50) {
      fail("ZIP64 end of central directory missing");
    }
    count = Number(v.getBigUint64(z64 + 32, true));
    cdOffset = Number(v.getBigUint64(z64 + 48, true));
  }
  const out: ZipEntry[] = [];
  let p = cdOffset;
  for (let k = 0; k < count; k++) {
    if (p + 46 > b.length || v.getUint32(p, true) !== 0x02014b50) {
      fail(`central directory entry ${k} is damaged`);
    }
    const method = v.getUint16(p + 10, true);
    let compressed = v.getUint32(p + 20, true);
    let size = v.getUint32(p + 24, true);
    const nameLen = v.getUint16(p + 28, true);
    const extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true);
    let localOffset = v.getUint32(p + 42, true);
    const name = new TextDecoder().decode(b.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extended information: the 64-bit values of the fields that read 0xFFFFFFFF.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = v.getUint16(e, true), len = v.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        const next = () => {
          const x = Number(v.getBigUint64(q, true));
          q += 8;
          return x;
        };
        if (size === 0xffffffff) size = next();
        if (compressed === 0xffffffff) compressed = next();
        if (localOffset === 0xffffffff) localOffset = next();
      }
      e += 4 + len;
    }
    out.push({ name, method, compressed, size, localOffset });
    p = extraEnd + commentLen;
  }
  return out;
}

/** The bytes of one zip entry (stored, or deflated). */
async function zipData(b: Uint8Array, e: ZipEntry, file: string): Promise<Uint8Array> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (e.localOffset + 30 > b.length || v.getUint32(e.localOffset, true) !== 0x04034b50) {
    throw new TorchError(file, `zip archive: local header of "${e.name}" is damaged`);
  }
  const start = e.localOffset + 30 + v.getUint16(e.localOffset + 26, true) +
    v.getUint16(e.localOffset + 28, true);
  if (start + e.compressed > b.length) {
    throw new TorchError(file, `zip archive: "${e.name}" runs past the end (truncated file?)`);
  }
  const raw = b.subarray(start, start + e.compressed);
  if (e.method === 0) return raw;
  if (e.method !== 8) {
    throw new TorchError(file, `zip archive: "${e.name}" uses compression method ${e.method}`);
  }
  const stream = new Blob([raw.slice()]).stream().pipeThrough(
    new DecompressionStream("deflate-raw"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// ---------------------------------------------------------------------------------------------
// Reading checkpoints.

/** A decoded checkpoint: the whole unpickled object, with tensors materialised. */
export interface Checkpoint {
  /** The unpickled object; tensors are {@link HostTensor}s, dicts `Map`s, tuples arrays. */
  readonly object: unknown;
  /** Which container format the file used. */
  readonly format: "zip" | "legacy";
}

const persistentId = (file: string) => (pid: unknown): StorageRef => {
  if (!Array.isArray(pid) || pid[0] !== "storage") {
    throw new TorchError(file, `unsupported persistent id ${JSON.stringify(String(pid))}`);
  }
  const [, type, key, , numel, view] = pid;
  if (!(type instanceof StorageType)) {
    throw new TorchError(file, `storage ${String(key)} has an unsupported type ${String(type)}`);
  }
  if (Array.isArray(view) && view.length === 3) {
    // Legacy view: (view key, element offset into the root storage, view size).
    return new StorageRef(
      String(key),
      type.dtype,
      asInt(numel, "storage size"),
      asInt(view[1], "view offset"),
    );
  }
  return new StorageRef(String(key), type.dtype, asInt(numel, "storage size"));
};

/** Replaces every {@link TensorRef} of a value by its tensor, read from `storages`. */
function materialise(
  value: unknown,
  storages: (key: string) => Uint8Array,
  file: string,
  path = "",
): unknown {
  if (value instanceof TensorRef) {
    const { storage: s, offset, shape, stride } = value;
    const elem = DTYPE_BYTES[s.dtype];
    const bytes = storages(s.key);
    const base = s.viewOffset + offset;
    const numel = shape.reduce((a, b) => a * b, 1);
    let last = base;
    for (let d = 0; d < shape.length; d++) if (shape[d] > 0) last += (shape[d] - 1) * stride[d];
    if (numel > 0 && (base < 0 || (last + 1) * elem > bytes.length)) {
      throw new TorchError(
        file,
        `tensor "${path}": view [${shape}] (offset ${offset}, strides [${stride}]) reaches ` +
          `element ${last} of a storage of ${bytes.length / elem}`,
      );
    }
    const all = decodeValues(bytes, 0, bytes.length / elem, s.dtype);
    const contiguous = stride.every((st, d) =>
      st === shape.slice(d + 1).reduce((a, b) => a * b, 1)
    );
    let values: Float32Array | Float64Array;
    if (contiguous) values = all.slice(base, base + numel);
    else {
      values = all instanceof Float32Array ? new Float32Array(numel) : new Float64Array(numel);
      const idx = new Array(shape.length).fill(0);
      for (let i = 0; i < numel; i++) {
        let at = base;
        for (let d = 0; d < shape.length; d++) at += idx[d] * stride[d];
        values[i] = all[at];
        for (let d = shape.length - 1; d >= 0; d--) {
          if (++idx[d] < shape[d]) break;
          idx[d] = 0;
        }
      }
    }
    return { dtype: s.dtype, shape: [...shape], values } satisfies HostTensor;
  }
  if (value instanceof Map) {
    return new Map(
      [...value].map((
        [k, v],
      ) => [k, materialise(v, storages, file, path ? `${path}.${k}` : String(k))]),
    );
  }
  if (Array.isArray(value)) {
    return value.map((v, i) => materialise(v, storages, file, `${path}[${i}]`));
  }
  return value;
}

/** The legacy (pre-zip) container: five pickles, then the storages. */
function readLegacy(bytes: Uint8Array, file: string): Checkpoint {
  const magic = unpickle(bytes, 0);
  if (String(magic.value) !== "119547037146038801333356") {
    throw new TorchError(file, "not a PyTorch file (bad legacy magic number)");
  }
  const proto = unpickle(bytes, magic.end);
  if (proto.value !== 1001) {
    throw new TorchError(file, `unsupported legacy protocol version ${String(proto.value)}`);
  }
  const info = unpickle(bytes, proto.end);
  if (info.value instanceof Map && info.value.get("little_endian") === false) {
    throw new TorchError(file, "big-endian checkpoints are not supported");
  }
  const refs = new Map<string, StorageRef>();
  const load = persistentId(file);
  const main = unpickle(bytes, info.end, (pid) => {
    const r = load(pid);
    if (!refs.has(r.key)) refs.set(r.key, r);
    return r;
  });
  const keys = unpickle(bytes, main.end);
  if (!Array.isArray(keys.value)) throw new TorchError(file, "legacy storage key list missing");
  const data = new Map<string, Uint8Array>();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let o = keys.end;
  for (const k of keys.value) {
    const key = String(k);
    const ref = refs.get(key);
    if (!ref) throw new TorchError(file, `storage ${key} is listed but never used`);
    if (o + 8 > bytes.length) {
      throw new TorchError(file, `storage ${key} is missing (truncated file?)`);
    }
    const n = Number(view.getBigInt64(o, true));
    const len = n * DTYPE_BYTES[ref.dtype];
    if (o + 8 + len > bytes.length) {
      throw new TorchError(file, `storage ${key}: ${len} bytes run past the end (truncated file?)`);
    }
    data.set(key, bytes.subarray(o + 8, o + 8 + len));
    o += 8 + len;
  }
  const storages = (key: string) => {
    const d = data.get(key);
    if (!d) throw new TorchError(file, `storage ${key} has no data`);
    return d;
  };
  return { object: materialise(main.value, storages, file), format: "legacy" };
}

/** The zip container. */
async function readZip(bytes: Uint8Array, file: string): Promise<Checkpoint> {
  const entries = zipEntries(bytes, file);
  const pkl = entries.find((e) => /(^|\/)data\.pkl$/.test(e.name));
  if (!pkl) throw new TorchError(file, "zip archive has no data.pkl: not a torch.save file");
  const prefix = pkl.name.slice(0, -"data.pkl".length);
  const byName = new Map(entries.map((e) => [e.name, e]));
  const order = byName.get(`${prefix}byteorder`);
  if (order) {
    const s = new TextDecoder().decode(await zipData(bytes, order, file)).trim();
    if (s !== "little") throw new TorchError(file, `byteorder "${s}" is not supported`);
  }
  const refs = new Map<string, StorageRef>();
  const load = persistentId(file);
  let object: unknown;
  try {
    object = unpickle(await zipData(bytes, pkl, file), 0, (pid) => {
      const r = load(pid);
      refs.set(r.key, r);
      return r;
    }).value;
  } catch (e) {
    if (e instanceof TorchError) throw e;
    throw new TorchError(file, `${pkl.name}: ${(e as Error).message}`);
  }
  const data = new Map<string, Uint8Array>();
  for (const [key, ref] of refs) {
    const e = byName.get(`${prefix}data/${key}`);
    if (!e) throw new TorchError(file, `storage record ${prefix}data/${key} is missing`);
    const d = await zipData(bytes, e, file);
    if (d.length < ref.numel * DTYPE_BYTES[ref.dtype]) {
      throw new TorchError(
        file,
        `storage record ${prefix}data/${key} has ${d.length} bytes, ${ref.numel} ${ref.dtype} ` +
          `elements need ${ref.numel * DTYPE_BYTES[ref.dtype]}`,
      );
    }
    data.set(key, d);
  }
  return { object: materialise(object, (k) => data.get(k)!, file), format: "zip" };
}

/** Decodes the bytes of a `torch.save` file (zip or legacy); `file` names it in errors. */
export async function decode(bytes: Uint8Array, file: string): Promise<Checkpoint> {
  if (
    bytes.length >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 3 && bytes[3] === 4
  ) {
    return await readZip(bytes, file);
  }
  if (bytes.length > 262 && new TextDecoder().decode(bytes.subarray(257, 262)) === "ustar") {
    throw new TorchError(
      file,
      "the tar format of PyTorch < 0.4 is not supported: re-save the file",
    );
  }
  if (bytes.length >= 2 && bytes[0] === 0x80 && bytes[1] >= 2) {
    try {
      return readLegacy(bytes, file);
    } catch (e) {
      if (e instanceof TorchError) throw e;
      throw new TorchError(file, (e as Error).message);
    }
  }
  throw new TorchError(file, "not a PyTorch checkpoint (neither a zip archive nor a pickle)");
}

/** Reads a `torch.save` file. */
export async function read(file: string): Promise<Checkpoint> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new TorchError(file, `cannot read (${(e as Error).message})`);
  }
  return decode(bytes, file);
}

const isTensor = (v: unknown): v is HostTensor =>
  typeof v === "object" && v !== null && "values" in v && "shape" in v && "dtype" in v;

/** The wrapper keys {@link findStateDict} looks under, in order. */
export const WRAPPER_KEYS = ["params_ema", "params", "state_dict", "model", "net"] as const;

/**
 * The state dict inside a checkpoint object: the object itself when it maps names to
 * tensors, else the first of {@link WRAPPER_KEYS} (or `key`) that does. Non-tensor entries
 * (a BN's `num_batches_tracked` is a tensor and stays) are dropped; a `module.` prefix on
 * every key is removed. Returns the tensors and the wrapper key used ("" for none).
 */
export function findStateDict(
  object: unknown,
  file: string,
  key?: string,
): { readonly tensors: Map<string, HostTensor>; readonly key: string } {
  const tensorsOf = (v: unknown) =>
    v instanceof Map ? [...v].filter(([, t]) => isTensor(t)) as Array<[unknown, HostTensor]> : [];
  const pick = (v: unknown, k: string) => {
    const entries = tensorsOf(v);
    const names = entries.map(([n]) => String(n));
    const strip = names.length > 0 && names.every((n) => n.startsWith("module."));
    return {
      tensors: new Map(entries.map(([n, t]) => [strip ? String(n).slice(7) : String(n), t])),
      key: k,
    };
  };
  if (!(object instanceof Map)) {
    throw new TorchError(file, "the checkpoint is not a dict of tensors (nor a wrapper of one)");
  }
  if (key !== undefined) {
    if (!object.has(key)) {
      throw new TorchError(
        file,
        `no "${key}" in the checkpoint (keys: ${[...object.keys()].map(String).join(", ")})`,
      );
    }
    const r = pick(object.get(key), key);
    if (r.tensors.size === 0) throw new TorchError(file, `"${key}" holds no tensors`);
    return r;
  }
  for (const k of WRAPPER_KEYS) {
    if (object.has(k) && tensorsOf(object.get(k)).length > 0) return pick(object.get(k), k);
  }
  const own = pick(object, "");
  if (own.tensors.size > 0) return own;
  throw new TorchError(
    file,
    `no state dict found: the top-level keys are ${[...object.keys()].map(String).join(", ")} ` +
      `(looked for tensors there and under ${WRAPPER_KEYS.join(", ")})`,
  );
}
