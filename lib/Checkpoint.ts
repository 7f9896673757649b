/**
 * Checkpoints: parameters (weights and quantizer parameters), optimizer state, the step and the
 * recipe, in one file written atomically.
 *
 * Format: the 8 bytes `QATSRCK1`, a little-endian u32 header length, a UTF-8 JSON header
 * (`step`, `recipe`, `meta`, and tfjs weight specs for every tensor), then the tensors' bytes
 * as `tf.io.encodeWeights` lays them out. Tensor names are `params/<dotted path>` and
 * `opt/<state key>`. A checkpoint is written to `<file>.tmp`, synced, then renamed over
 * `<file>`, so a run killed at any moment leaves either the previous checkpoint or the new one.
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

const Header = z.object({
  format: z.literal("qat-sr-checkpoint"),
  version: z.literal(1),
  step: z.number().int().nonnegative(),
  recipe: z.unknown(),
  meta: z.record(z.string(), z.unknown()),
  specs: z.array(
    z.object({ name: z.string(), shape: z.array(z.number().int()), dtype: z.string() }).loose(),
  ),
});

/** Serialises a checkpoint to bytes. */
export async function encode(c: Contents): Promise<Uint8Array> {
  const named: Record<string, tf.Tensor> = {};
  for (const [k, t] of c.params) named[`params/${k}`] = t;
  for (const [k, t] of c.opt) named[`opt/${k}`] = t;
  const { data, specs } = await tf.io.encodeWeights(named);
  const header = new TextEncoder().encode(JSON.stringify({
    format: "qat-sr-checkpoint",
    version: 1,
    step: c.step,
    recipe: c.recipe,
    meta: c.meta,
    specs,
  }));
  const out = new Uint8Array(8 + 4 + header.length + data.byteLength);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, 12);
  out.set(new Uint8Array(data), 12 + header.length);
  return out;
}

/** Parses checkpoint bytes; `file` names the source in errors. */
export function decode(bytes: Uint8Array, file: string): Contents {
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
  const parsed = Header.safeParse(raw);
  if (!parsed.success) return fail(`bad header: ${z.prettifyError(parsed.error)}`);
  const body = bytes.slice(12 + len);
  const specs = parsed.data.specs as unknown as tf.io.WeightsManifestEntry[];
  const expected = specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1) * 4, 0);
  if (body.byteLength !== expected) {
    fail(`truncated data: ${body.byteLength} bytes, expected ${expected}`);
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
  return {
    step: parsed.data.step,
    params,
    opt,
    recipe: parsed.data.recipe,
    meta: parsed.data.meta,
  };
}

/** Writes a checkpoint atomically (temp file, fsync, rename). */
export const write = (file: string, c: Contents): Effect.Effect<void, CheckpointError> =>
  Effect.tryPromise({
    try: async () => {
      const bytes = await encode(c);
      const tmp = `${file}.tmp`;
      const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
      try {
        let off = 0;
        while (off < bytes.length) off += await f.write(bytes.subarray(off));
        await f.syncData();
      } finally {
        f.close();
      }
      await Deno.rename(tmp, file);
    },
    catch: (e) => new CheckpointError({ file, reason: (e as Error).message }),
  });

/** Reads a checkpoint. */
export const read = (file: string): Effect.Effect<Contents, CheckpointError> =>
  Effect.tryPromise({
    try: async () => decode(await Deno.readFile(file), file),
    catch: (e) =>
      e instanceof CheckpointError
        ? e
        : new CheckpointError({ file, reason: (e as Error).message }),
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
