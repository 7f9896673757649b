/**
 * Checkpoints: parameters (weights and quantizer parameters), optimizer state, the step and the
 * recipe, in one file written atomically.
 *
 * Format: the 8 bytes `QATSRCK1`, a little-endian u32 header length, a UTF-8 JSON header
 * (`version`, `step`, `recipe`, `meta`, tfjs weight specs for every tensor and, from version 2,
 * `sha256`: the hex SHA-256 of the tensor bytes), then the tensors' bytes as
 * `tf.io.encodeWeights` lays them out. Tensor names are `params/<dotted path>` and
 * `opt/<state key>`. Reading verifies the checksum (version 1 files have none and are still
 * read). A checkpoint is written to `<file>.tmp`, synced, then renamed over `<file>`, without
 * interruption, so a run killed at any moment leaves either the previous checkpoint or the new
 * one; a failed write removes its `<file>.tmp`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Data, Effect } from "effect";
import * as z from "zod";

const MAGIC = "QATSRCK1";

/** What a checkpoint holds. */
export interface Contents {
  readonly step: number;
  readonly params: ReadonlyMap<string, tf.Tensor>;
  readonly opt: ReadonlyMap<string, tf.Tensor>;
  readonly recipe: unknown;
  readonly meta: Readonly<Record<string, unknown>>;
}

/** A checkpoint file is missing, unreadable or not for this model. */
export class CheckpointError extends Data.TaggedError("CheckpointError")<{
  readonly file: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `checkpoint ${this.file}: ${this.reason}`;
  }
}

/** A checkpoint's parameters do not fit the model (paths or shapes differ). */
export class CheckpointMismatch extends Data.TaggedError("CheckpointMismatch")<{
  readonly file: string;
  readonly path: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `checkpoint ${this.file} does not fit the model at "${this.path}": ${this.reason}`;
  }
}

/** The format version {@link encode} writes. */
export const VERSION = 2;

const Specs = z.array(
  z.object({ name: z.string(), shape: z.array(z.number().int()), dtype: z.string() }).loose(),
);
const common = {
  format: z.literal("qat-sr-checkpoint"),
  step: z.number().int().nonnegative(),
  recipe: z.unknown(),
  meta: z.record(z.string(), z.unknown()),
  specs: Specs,
};
const HeaderSchema = z.discriminatedUnion("version", [
  z.object({ ...common, version: z.literal(1) }),
  z.object({ ...common, version: z.literal(2), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
]);

/** A checkpoint's header: everything but the tensors. */
export interface Header {
  readonly version: number;
  readonly step: number;
  readonly recipe: unknown;
  readonly meta: Readonly<Record<string, unknown>>;
}

/** The hex SHA-256 of some bytes. */
const sha256 = async (bytes: BufferSource): Promise<string> =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");

/** Serialises a checkpoint to bytes. */
export async function encode(c: Contents): Promise<Uint8Array> {
  const named: Record<string, tf.Tensor> = {};
  for (const [k, t] of c.params) named[`params/${k}`] = t;
  for (const [k, t] of c.opt) named[`opt/${k}`] = t;
  const { data, specs } = await tf.io.encodeWeights(named);
  const header = new TextEncoder().encode(JSON.stringify({
    format: "qat-sr-checkpoint",
    version: VERSION,
    step: c.step,
    recipe: c.recipe,
    meta: c.meta,
    specs,
    sha256: await sha256(data),
  }));
  const out = new Uint8Array(8 + 4 + header.length + data.byteLength);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, 12);
  out.set(new Uint8Array(data), 12 + header.length);
  return out;
}

/** The header of checkpoint bytes (`bytes` may stop after it) and where the data starts. */
function parseHeader(bytes: Uint8Array, file: string) {
  const fail = (reason: string): never => {
    throw new CheckpointError({ file, reason });
  };
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    fail("not a qat-sr checkpoint (bad magic)");
  }
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  if (12 + len > bytes.length) fail("truncated header");
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + len)));
  } catch (e) {
    fail(`corrupt header: ${(e as Error).message}`);
  }
  const parsed = HeaderSchema.safeParse(raw);
  if (!parsed.success) return fail(`bad header: ${z.prettifyError(parsed.error)}`);
  return { header: parsed.data, dataStart: 12 + len };
}

/**
 * Parses checkpoint bytes; `file` names the source in errors. The tensor bytes are checked
 * against the header's SHA-256 (version 2) before any tensor is made.
 */
export async function decode(bytes: Uint8Array, file: string): Promise<Contents> {
  const fail = (reason: string): never => {
    throw new CheckpointError({ file, reason });
  };
  const { header, dataStart } = parseHeader(bytes, file);
  const body = bytes.slice(dataStart);
  const specs = header.specs as unknown as tf.io.WeightsManifestEntry[];
  const expected = specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1) * 4, 0);
  if (body.byteLength !== expected) {
    fail(`truncated data: ${body.byteLength} bytes, expected ${expected}`);
  }
  if (header.version === 2 && (await sha256(body)) !== header.sha256) {
    fail("data checksum mismatch (the file is corrupt)");
  }
  const named = tf.io.decodeWeights(body.buffer, specs);
  const params = new Map<string, tf.Tensor>();
  const opt = new Map<string, tf.Tensor>();
  for (const s of specs) {
    const t = named[s.name];
    if (s.name.startsWith("params/")) params.set(s.name.slice(7), t);
    else if (s.name.startsWith("opt/")) opt.set(s.name.slice(4), t);
    else t.dispose();
  }
  return { step: header.step, params, opt, recipe: header.recipe, meta: header.meta };
}

/**
 * Writes `bytes` to `file` atomically: to `<file>.tmp`, synced, renamed over `file`. A failed
 * write removes `<file>.tmp` (the previous `file` is untouched).
 */
export async function writeAtomic(file: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${file}.tmp`;
  try {
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await f.write(bytes.subarray(off));
      await f.syncData();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, file);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Writes a checkpoint atomically ({@link writeAtomic}). The write is not interruptible: an
 * interrupted run finishes it first, so the checkpoint on disk is always a whole one.
 */
export const write = (file: string, c: Contents): Effect.Effect<void, CheckpointError> =>
  Effect.tryPromise({
    try: async () => writeAtomic(file, await encode(c)),
    catch: (e) => new CheckpointError({ file, reason: (e as Error).message }),
  }).pipe(Effect.uninterruptible);

const asError = (file: string) => (e: unknown) =>
  e instanceof CheckpointError ? e : new CheckpointError({ file, reason: (e as Error).message });

/** Reads a checkpoint, verifying its checksum. */
export const read = (file: string): Effect.Effect<Contents, CheckpointError> =>
  Effect.tryPromise({
    try: async () => decode(await Deno.readFile(file), file),
    catch: asError(file),
  });

/** Reads only a checkpoint's header (step, recipe, meta): no tensor is made. */
export const readHeader = (file: string): Effect.Effect<Header, CheckpointError> =>
  Effect.tryPromise({
    try: async () => {
      const f = await Deno.open(file, { read: true });
      try {
        const readN = async (n: number) => {
          const buf = new Uint8Array(n);
          let off = 0;
          while (off < n) {
            const got = await f.read(buf.subarray(off));
            if (got === null) break;
            off += got;
          }
          return buf.subarray(0, off);
        };
        const head = await readN(12);
        const len = head.length < 12
          ? 0
          : new DataView(head.buffer, head.byteOffset).getUint32(8, true);
        const rest = await readN(len);
        const all = new Uint8Array(head.length + rest.length);
        all.set(head, 0);
        all.set(rest, head.length);
        const { header: h } = parseHeader(all, file);
        return { version: h.version, step: h.step, recipe: h.recipe, meta: h.meta };
      } finally {
        f.close();
      }
    },
    catch: asError(file),
  });

/** Checks that a checkpoint's parameters have exactly the model's paths and shapes. */
export function check(
  file: string,
  saved: ReadonlyMap<string, tf.Tensor>,
  model: ReadonlyMap<string, tf.Tensor>,
): CheckpointMismatch | undefined {
  for (const [p, t] of model) {
    const s = saved.get(p);
    if (!s) return new CheckpointMismatch({ file, path: p, reason: "missing in the checkpoint" });
    if (s.shape.join("x") !== t.shape.join("x")) {
      return new CheckpointMismatch({
        file,
        path: p,
        reason: `shape [${s.shape}] vs the model's [${t.shape}]`,
      });
    }
  }
  for (const p of saved.keys()) {
    if (!model.has(p)) {
      return new CheckpointMismatch({ file, path: p, reason: "not a parameter of the model" });
    }
  }
  return undefined;
}
