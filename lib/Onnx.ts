/**
 * ONNX: the protobuf messages of an ONNX model (`onnx/onnx.proto`, IR version 10), written and
 * read by hand, and a graph builder. lib/Export.ts turns our models into such graphs.
 *
 * Only what a model file needs is encoded: `ModelProto` (IR version, opset imports, producer,
 * graph, metadata), `GraphProto` (nodes, initializers, inputs, outputs), `NodeProto`,
 * `AttributeProto` (float, int, string, tensor, floats, ints), `TensorProto` (dims, data type,
 * name, `raw_data`) and `ValueInfoProto` with a tensor type whose dimensions are numbers or
 * names (`"height"`: dynamic). Field numbers are those of `onnx.proto`; repeated scalars are
 * written unpacked (proto2), and both forms are read.
 *
 * Low-bit tensors: `raw_data` of INT4/UINT4 holds two values per byte, INT2/UINT2 four, the
 * first value in the least significant bits ({@link packBits}), as the ONNX spec lays them out.
 *
 * @module
 */

/** ONNX `TensorProto.DataType` numbers (onnx.proto). */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  UINT4: 21,
  INT4: 22,
  UINT2: 25,
  INT2: 26,
} as const;

/** A data type number. */
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

/** A constant tensor (an initializer, or a `Constant` node's value). */
export interface Tensor {
  readonly name: string;
  readonly dataType: number;
  readonly dims: ReadonlyArray<number>;
  /** The values in ONNX's little-endian `raw_data` layout. */
  readonly raw: Uint8Array;
}

/** A node attribute value. */
export type Attribute =
  | { readonly float: number }
  | { readonly int: number }
  | { readonly string: string }
  | { readonly floats: ReadonlyArray<number> }
  | { readonly ints: ReadonlyArray<number> }
  | { readonly tensor: Tensor };

/** One operator application. */
export interface Node {
  readonly op: string;
  readonly inputs: ReadonlyArray<string>;
  readonly outputs: ReadonlyArray<string>;
  readonly name: string;
  readonly attributes: Readonly<Record<string, Attribute>>;
}

/** A graph input or output: a float tensor whose dimensions are numbers or names. */
export interface ValueInfo {
  readonly name: string;
  readonly dataType: number;
  readonly dims: ReadonlyArray<number | string>;
}

/** What {@link encodeModel} writes. */
export interface Model {
  readonly irVersion: number;
  readonly opset: number;
  readonly producer: { readonly name: string; readonly version: string };
  readonly graph: {
    readonly name: string;
    readonly nodes: ReadonlyArray<Node>;
    readonly initializers: ReadonlyArray<Tensor>;
    readonly inputs: ReadonlyArray<ValueInfo>;
    readonly outputs: ReadonlyArray<ValueInfo>;
    readonly doc?: string;
  };
  readonly metadata: Readonly<Record<string, string>>;
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format.

/** Bytes of a message under construction: fields appended in order. */
class Message {
  readonly parts: Uint8Array[] = [];
  size = 0;
  private push(b: Uint8Array) {
    this.parts.push(b);
    this.size += b.length;
  }
  private tag(field: number, wire: number) {
    this.push(varint(BigInt(field * 8 + wire)));
  }
  /** A varint field (int32, int64, enum, bool); negative numbers as 64-bit two's complement. */
  int(field: number, v: number): this {
    this.tag(field, 0);
    this.push(varint(BigInt.asUintN(64, BigInt(v))));
    return this;
  }
  /** A 32-bit float field. */
  float(field: number, v: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
    return this;
  }
  bytes(field: number, b: Uint8Array): this {
    this.tag(field, 2);
    this.push(varint(BigInt(b.length)));
    this.push(b);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  message(field: number, m: Message): this {
    this.tag(field, 2);
    this.push(varint(BigInt(m.size)));
    for (const p of m.parts) this.push(p);
    return this;
  }
  /** The whole message as one buffer. */
  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

function varint(v: bigint): Uint8Array {
  const out: number[] = [];
  let x = v;
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) b |= 0x80;
    out.push(b);
  } while (x > 0n);
  return Uint8Array.from(out);
}

const tensorMessage = (t: Tensor): Message => {
  const m = new Message();
  for (const d of t.dims) m.int(1, d);
  m.int(2, t.dataType);
  m.string(8, t.name);
  m.bytes(9, t.raw);
  return m;
};

const ATTRIBUTE_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

const attributeMessage = (name: string, a: Attribute): Message => {
  const m = new Message().string(1, name);
  if ("float" in a) m.float(2, a.float).int(20, ATTRIBUTE_TYPE.float);
  else if ("int" in a) m.int(3, a.int).int(20, ATTRIBUTE_TYPE.int);
  else if ("string" in a) m.string(4, a.string).int(20, ATTRIBUTE_TYPE.string);
  else if ("tensor" in a) m.message(5, tensorMessage(a.tensor)).int(20, ATTRIBUTE_TYPE.tensor);
  else if ("floats" in a) {
    for (const f of a.floats) m.float(7, f);
    m.int(20, ATTRIBUTE_TYPE.floats);
  } else {
    for (const i of a.ints) m.int(8, i);
    m.int(20, ATTRIBUTE_TYPE.ints);
  }
  return m;
};

const nodeMessage = (n: Node): Message => {
  const m = new Message();
  for (const i of n.inputs) m.string(1, i);
  for (const o of n.outputs) m.string(2, o);
  m.string(3, n.name).string(4, n.op);
  for (const [k, a] of Object.entries(n.attributes)) m.message(5, attributeMessage(k, a));
  return m;
};

const valueInfoMessage = (v: ValueInfo): Message => {
  const shape = new Message();
  for (const d of v.dims) {
    shape.message(1, typeof d === "number" ? new Message().int(1, d) : new Message().string(2, d));
  }
  const tensorType = new Message().int(1, v.dataType).message(2, shape);
  return new Message().string(1, v.name).message(2, new Message().message(1, tensorType));
};

/** Serialises a model to the bytes of an `.onnx` file. */
export function encodeModel(model: Model): Uint8Array {
  const g = new Message();
  for (const n of model.graph.nodes) g.message(1, nodeMessage(n));
  g.string(2, model.graph.name);
  for (const t of model.graph.initializers) g.message(5, tensorMessage(t));
  if (model.graph.doc) g.string(10, model.graph.doc);
  for (const v of model.graph.inputs) g.message(11, valueInfoMessage(v));
  for (const v of model.graph.outputs) g.message(12, valueInfoMessage(v));
  const m = new Message()
    .int(1, model.irVersion)
    .string(2, model.producer.name)
    .string(3, model.producer.version)
    .message(7, g)
    .message(8, new Message().string(1, "").int(2, model.opset));
  for (const [k, v] of Object.entries(model.metadata)) {
    m.message(14, new Message().string(1, k).string(2, v));
  }
  return m.finish();
}

// ---------------------------------------------------------------------------------------------
// Reading (for tests and `inspect`): a generic field walker and the few messages we check.

/** A field of a decoded message: varints and fixed values as numbers, the rest as bytes. */
interface Field {
  readonly field: number;
  readonly wire: number;
  readonly int: bigint;
  readonly bytes: Uint8Array;
}

/** The fields of a protobuf message, in order; throws on a malformed buffer. */
function fields(b: Uint8Array, what: string): Field[] {
  const out: Field[] = [];
  let o = 0;
  const readVarint = (): bigint => {
    let v = 0n, shift = 0n;
    for (;;) {
      if (o >= b.length) throw new Error(`${what}: truncated varint at byte ${o}`);
      const c = b[o++];
      v |= BigInt(c & 0x7f) << shift;
      if (!(c & 0x80)) return v;
      shift += 7n;
      if (shift > 70n) throw new Error(`${what}: varint too long at byte ${o}`);
    }
  };
  const empty = new Uint8Array(0);
  while (o < b.length) {
    const key = readVarint();
    const field = Number(key >> 3n), wire = Number(key & 7n);
    if (wire === 0) out.push({ field, wire, int: readVarint(), bytes: empty });
    else if (wire === 2) {
      const n = Number(readVarint());
      if (o + n > b.length) throw new Error(`${what}: field ${field} runs past the end`);
      out.push({ field, wire, int: 0n, bytes: b.subarray(o, o + n) });
      o += n;
    } else if (wire === 5 || wire === 1) {
      const n = wire === 5 ? 4 : 8;
      if (o + n > b.length) throw new Error(`${what}: field ${field} runs past the end`);
      out.push({ field, wire, int: 0n, bytes: b.subarray(o, o + n) });
      o += n;
    } else throw new Error(`${what}: unsupported wire type ${wire} (field ${field})`);
  }
  return out;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** Repeated int64 values of `field`, packed or not. */
function ints(fs: ReadonlyArray<Field>, field: number): number[] {
  const out: number[] = [];
  for (const f of fs) {
    if (f.field !== field) continue;
    if (f.wire === 0) out.push(Number(BigInt.asIntN(64, f.int)));
    else {
      for (const g of fields(f.bytes, "packed ints")) out.push(Number(BigInt.asIntN(64, g.int)));
    }
  }
  return out;
}

/** A summary of a model file: what tests and `deno task export` report. */
export interface Summary {
  readonly irVersion: number;
  readonly opsets: ReadonlyArray<{ readonly domain: string; readonly version: number }>;
  readonly nodes: ReadonlyArray<{ readonly op: string; readonly inputs: ReadonlyArray<string> }>;
  readonly initializers: ReadonlyArray<
    {
      readonly name: string;
      readonly dataType: number;
      readonly dims: ReadonlyArray<number>;
      readonly bytes: number;
    }
  >;
  readonly inputs: ReadonlyArray<ValueInfo>;
  readonly outputs: ReadonlyArray<ValueInfo>;
  readonly metadata: Readonly<Record<string, string>>;
}

const valueInfo = (b: Uint8Array): ValueInfo => {
  const fs = fields(b, "ValueInfoProto");
  const name = text(fs.find((f) => f.field === 1)?.bytes ?? new Uint8Array());
  const type = fs.find((f) => f.field === 2);
  const tensorType = type && fields(type.bytes, "TypeProto").find((f) => f.field === 1);
  const tt = tensorType ? fields(tensorType.bytes, "TypeProto.Tensor") : [];
  const shape = tt.find((f) => f.field === 2);
  const dims = shape
    ? fields(shape.bytes, "TensorShapeProto").filter((f) => f.field === 1).map((d) => {
      const df = fields(d.bytes, "Dimension");
      const v = df.find((f) => f.field === 1);
      return v ? Number(v.int) : text(df.find((f) => f.field === 2)?.bytes ?? new Uint8Array());
    })
    : [];
  return { name, dataType: Number(tt.find((f) => f.field === 1)?.int ?? 0n), dims };
};

/** Reads the structure of an `.onnx` file (not the values); `file` names it in errors. */
export function inspect(bytes: Uint8Array, file = "model"): Summary {
  const fs = fields(bytes, `${file}: ModelProto`);
  const graph = fs.find((f) => f.field === 7);
  if (!graph) throw new Error(`${file}: ModelProto has no graph (field 7)`);
  const g = fields(graph.bytes, `${file}: GraphProto`);
  return {
    irVersion: Number(fs.find((f) => f.field === 1)?.int ?? 0n),
    opsets: fs.filter((f) => f.field === 8).map((f) => {
      const o = fields(f.bytes, "OperatorSetIdProto");
      return {
        domain: text(o.find((x) => x.field === 1)?.bytes ?? new Uint8Array()),
        version: Number(o.find((x) => x.field === 2)?.int ?? 0n),
      };
    }),
    nodes: g.filter((f) => f.field === 1).map((f) => {
      const n = fields(f.bytes, "NodeProto");
      return {
        op: text(n.find((x) => x.field === 4)?.bytes ?? new Uint8Array()),
        inputs: n.filter((x) => x.field === 1).map((x) => text(x.bytes)),
      };
    }),
    initializers: g.filter((f) => f.field === 5).map((f) => {
      const t = fields(f.bytes, "TensorProto");
      return {
        name: text(t.find((x) => x.field === 8)?.bytes ?? new Uint8Array()),
        dataType: Number(t.find((x) => x.field === 2)?.int ?? 0n),
        dims: ints(t, 1),
        bytes: t.find((x) => x.field === 9)?.bytes.length ?? 0,
      };
    }),
    inputs: g.filter((f) => f.field === 11).map((f) => valueInfo(f.bytes)),
    outputs: g.filter((f) => f.field === 12).map((f) => valueInfo(f.bytes)),
    metadata: Object.fromEntries(
      fs.filter((f) => f.field === 14).map((f) => {
        const e = fields(f.bytes, "StringStringEntryProto");
        return [
          text(e.find((x) => x.field === 1)?.bytes ?? new Uint8Array()),
          text(e.find((x) => x.field === 2)?.bytes ?? new Uint8Array()),
        ];
      }),
    ),
  };
}

// ---------------------------------------------------------------------------------------------
// Tensor data.

/**
 * Packs unsigned codes of `bits` bits (1, 2, 4 or 8) little-endian into bytes: value `i` sits
 * at bit `(i·bits) mod 8` of byte `⌊i·bits / 8⌋`, the first value in the least significant
 * bits (ONNX's INT4/UINT4/INT2/UINT2 `raw_data`, and lib/Packed.ts). 3-bit codes are stored
 * in 4 bits by the callers.
 */
export function packBits(codes: ArrayLike<number>, bits: number): Uint8Array {
  if (![1, 2, 4, 8].includes(bits)) throw new RangeError(`packBits: bits must be 1, 2, 4 or 8`);
  const out = new Uint8Array(Math.ceil((codes.length * bits) / 8));
  const mask = (1 << bits) - 1;
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (!(Number.isInteger(c) && c >= 0 && c <= mask)) {
      throw new RangeError(`packBits: code ${c} at ${i} does not fit ${bits} bits`);
    }
    const bit = i * bits;
    out[bit >> 3] |= c << (bit & 7);
  }
  return out;
}

/** The inverse of {@link packBits}: `n` codes of `bits` bits. */
export function unpackBits(bytes: Uint8Array, bits: number, n: number): Uint8Array {
  if (![1, 2, 4, 8].includes(bits)) throw new RangeError(`unpackBits: bits must be 1, 2, 4 or 8`);
  if (bytes.length < Math.ceil((n * bits) / 8)) {
    throw new RangeError(
      `unpackBits: ${bytes.length} bytes hold fewer than ${n} ${bits}-bit codes`,
    );
  }
  const out = new Uint8Array(n);
  const mask = (1 << bits) - 1;
  for (let i = 0; i < n; i++) {
    const bit = i * bits;
    out[i] = (bytes[bit >> 3] >> (bit & 7)) & mask;
  }
  return out;
}

/** A float32 tensor's raw bytes (little-endian, as every supported platform stores them). */
export const floatRaw = (v: Float32Array): Uint8Array =>
  new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));

/** An int64 tensor's raw bytes. */
export const int64Raw = (v: ReadonlyArray<number>): Uint8Array =>
  new Uint8Array(BigInt64Array.from(v.map((x) => BigInt(x))).buffer);

// ---------------------------------------------------------------------------------------------
// Graph building.

/** Builds a graph node by node; names are unique and readable (`<prefix>/<op>_<n>`). */
export class Graph {
  readonly nodes: Node[] = [];
  readonly initializers: Tensor[] = [];
  private readonly used = new Set<string>();
  private readonly constants = new Map<string, string>();

  /** A unique name from `base`. */
  fresh(base: string): string {
    const clean = base.replace(/[^A-Za-z0-9_./:-]+/g, "_") || "v";
    let name = clean;
    for (let k = 1; this.used.has(name); k++) name = `${clean}_${k}`;
    this.used.add(name);
    return name;
  }

  /** Adds a node with one output (named from `name`); returns the output name. */
  op(
    op: string,
    inputs: ReadonlyArray<string>,
    name: string,
    attributes: Readonly<Record<string, Attribute>> = {},
  ): string {
    return this.opN(op, inputs, name, 1, attributes)[0];
  }

  /** Adds a node with `n` outputs; returns their names. */
  opN(
    op: string,
    inputs: ReadonlyArray<string>,
    name: string,
    n: number,
    attributes: Readonly<Record<string, Attribute>> = {},
  ): string[] {
    const node = this.fresh(`${name}/${op}`);
    const outputs = Array.from({ length: n }, (_, i) => this.fresh(`${node}:${i}`));
    this.nodes.push({ op, inputs, outputs, name: node, attributes });
    return outputs;
  }

  /** Adds an initializer; returns its name. */
  initializer(
    name: string,
    dataType: number,
    dims: ReadonlyArray<number>,
    raw: Uint8Array,
  ): string {
    const n = this.fresh(name);
    this.initializers.push({ name: n, dataType, dims, raw });
    return n;
  }

  /** A float32 constant (shared between uses of equal value and shape). */
  floats(values: ArrayLike<number>, dims: ReadonlyArray<number> = [values.length]): string {
    const v = Float32Array.from(values);
    const key = `f${dims.join("x")}:${Array.from(v).join(",")}`;
    const known = v.length <= 64 ? this.constants.get(key) : undefined;
    if (known) return known;
    const name = this.initializer("const", DataType.FLOAT, dims, floatRaw(v));
    if (v.length <= 64) this.constants.set(key, name);
    return name;
  }

  /** A float32 scalar constant. */
  scalar(v: number): string {
    return this.floats([v], []);
  }

  /** An int64 constant (shared between uses of equal value and shape). */
  int64s(values: ReadonlyArray<number>, dims: ReadonlyArray<number> = [values.length]): string {
    const key = `i${dims.join("x")}:${values.join(",")}`;
    const known = this.constants.get(key);
    if (known) return known;
    const name = this.initializer("const", DataType.INT64, dims, int64Raw(values));
    this.constants.set(key, name);
    return name;
  }

  /** A uint8 (or other 8-bit-or-less type) scalar constant, e.g. a zero point. */
  code(v: number, dataType: number): string {
    const key = `c${dataType}:${v}`;
    const known = this.constants.get(key);
    if (known) return known;
    const name = this.initializer("zero_point", dataType, [], Uint8Array.of(v));
    this.constants.set(key, name);
    return name;
  }
}
