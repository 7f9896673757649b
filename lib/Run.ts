/**
 * A training run's folder: `checkpoint.bin`, `metrics.jsonl` and `summary.json`, kept in
 * agreement with each other. A run refuses a folder that holds another one unless it resumes it
 * — with the same recipe, up to `train.steps`, `logEvery` and `checkpointEvery` — or replaces
 * it (`force`, which removes the old files first). Metrics are appended a line per logged step;
 * a torn last line (a run killed while appending) is dropped on resume, and every file is
 * written atomically.
 *
 * @module
 */
import { Data as EffectData, Effect } from "effect";
import * as Checkpoint from "./Checkpoint.ts";

/** The output folder cannot be used: it is a file, or cannot be created. */
export class OutputInvalid extends EffectData.TaggedError("OutputInvalid")<{
  readonly dir: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `output folder ${this.dir} ${this.reason}`;
  }
}

/** The output folder holds a run, and the run neither resumes nor replaces it. */
export class RunExists extends EffectData.TaggedError("RunExists")<{
  readonly dir: string;
  /** What is there: `checkpoint at step 200 of 200`, `metrics.jsonl`, `summary.json`. */
  readonly holds: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `${this.dir} already holds a run (${this.holds.join(", ")}): ` +
      "use --resume to continue it or --force to replace it";
  }
}

/** A resumed checkpoint was made by another recipe; each entry names a differing field. */
export class RecipeChanged extends EffectData.TaggedError("RecipeChanged")<{
  readonly file: string;
  /** `recipe.quant.wbits: 4 in the checkpoint, 2 given`, … */
  readonly differences: ReadonlyArray<string>;
}> {
  override get message(): string {
    return `cannot resume ${this.file}: it was made by another recipe:\n` +
      this.differences.map((d) => `  ${d}\n`).join("") +
      `(only ${RESUMABLE.join(", ")} may change when resuming; --force starts over)`;
  }
}

/** A resumed checkpoint is past the recipe's last step. */
export class StepsBelowCheckpoint extends EffectData.TaggedError("StepsBelowCheckpoint")<{
  readonly file: string;
  readonly steps: number;
  readonly checkpointStep: number;
}> {
  override get message(): string {
    return `cannot resume ${this.file}: it is at step ${this.checkpointStep}, beyond ` +
      `train.steps ${this.steps} (give --steps ${this.checkpointStep} or more, or --force to ` +
      "start over)";
  }
}

/** A line of `metrics.jsonl` other than the last is not a metrics record. */
export class MetricsCorrupt extends EffectData.TaggedError("MetricsCorrupt")<{
  readonly file: string;
  readonly line: number;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.file} line ${this.line}: ${this.reason}`;
  }
}

/** A run file (metrics, summary) could not be read or written. */
export class RunFileError extends EffectData.TaggedError("RunFileError")<{
  readonly file: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `${this.file}: ${this.reason}`;
  }
}

/** The files of a run in its folder. */
export const RUN_FILES = ["checkpoint.bin", "metrics.jsonl", "summary.json"] as const;

/** The recipe fields a resumed run may change (that is how a run is extended). */
export const RESUMABLE = ["train.steps", "train.logEvery", "train.checkpointEvery"];

export const exists = (path: string) =>
  Effect.promise(() => Deno.lstat(path).then(() => true, () => false));

export const fileError = (file: string) => (e: unknown) =>
  new RunFileError({ file, reason: (e as Error).message });

/** Writes a text file atomically (`Checkpoint.writeAtomic`), not interruptibly. */
export const writeText = (file: string, text: string) =>
  Effect.tryPromise({
    try: () => Checkpoint.writeAtomic(file, new TextEncoder().encode(text)),
    catch: fileError(file),
  }).pipe(Effect.uninterruptible);

export const appendLine = (file: string, line: string) =>
  Effect.tryPromise({
    try: () => Deno.writeTextFile(file, line + "\n", { append: true }),
    catch: fileError(file),
  }).pipe(Effect.uninterruptible);

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The fields where a checkpoint's recipe (`saved`) and the given one differ, both in
 * `Recipe.toJSON` form, as `recipe.quant.wbits: 4 in the checkpoint, 2 given`. The fields a
 * resumed run may change (`train.steps`, `train.logEvery`, `train.checkpointEvery`) are not
 * compared, nor `decisions` when the given recipe leaves them to be made from data, nor where the
 * method's recipe module lives.
 */
export function recipeDifferences(saved: unknown, given: unknown): string[] {
  if (!isRecord(saved)) return ["recipe: the checkpoint holds none"];
  const out: string[] = [];
  const show = (v: unknown) => (v === undefined ? "absent" : JSON.stringify(v));
  const walk = (a: unknown, b: unknown, path: string) => {
    if (RESUMABLE.includes(path.slice("recipe.".length))) return;
    // Decisions made from data (DDTB's gates) are the checkpoint's when the given recipe
    // leaves them to be made; where the method's module lives is not part of the recipe.
    if (path === "recipe.decisions" && b === undefined) return;
    if (path === "recipe.method.module") return;
    if (isRecord(a) && isRecord(b)) {
      for (const k of new Set([...Object.keys(b), ...Object.keys(a)])) {
        walk(a[k], b[k], `${path}.${k}`);
      }
    } else if (JSON.stringify(a) !== JSON.stringify(b)) {
      out.push(`${path}: ${show(a)} in the checkpoint, ${show(b)} given`);
    }
  };
  walk(saved, given, "recipe");
  return out;
}

/** Options of {@link prepareOut}. */
export interface OutOptions {
  /** Resuming: a run in the folder is continued (its checkpoint must fit `recipe`). */
  readonly resume: boolean;
  /** Replacing: the files of a run in the folder are removed. */
  readonly force?: boolean;
  /** The recipe (`Recipe.toJSON` form) a resumed checkpoint must have been made by. */
  readonly recipe?: unknown;
  readonly log?: (line: string) => void;
}

/**
 * Makes a run's output folder ready, before any data or model is loaded: it must be a folder
 * or creatable ({@link OutputInvalid}); a run already in it (any of `checkpoint.bin`,
 * `metrics.jsonl`, `summary.json`) is refused ({@link RunExists}) unless resuming or `force`
 * (which removes those files). Resuming checks the checkpoint's header: made by `recipe` up to
 * the resumable fields ({@link RecipeChanged}), not past `recipe.train.steps`
 * ({@link StepsBelowCheckpoint}).
 */
export const prepareOut = (dir: string, o: OutOptions) =>
  Effect.gen(function* () {
    const log = o.log ?? ((l: string) => console.log(l));
    yield* Effect.tryPromise({
      try: async () => {
        const st = await Deno.stat(dir).catch(() => undefined);
        if (st && !st.isDirectory) {
          throw new OutputInvalid({ dir, reason: "is a file, not a folder" });
        }
        if (!st) await Deno.mkdir(dir, { recursive: true });
      },
      catch: (e) =>
        e instanceof OutputInvalid
          ? e
          : new OutputInvalid({ dir, reason: `cannot be created: ${(e as Error).message}` }),
    });
    const present: string[] = [];
    for (const f of RUN_FILES) if (yield* exists(`${dir}/${f}`)) present.push(f);
    if (present.length === 0) return;
    const ckptFile = `${dir}/checkpoint.bin`;
    if (o.force) {
      yield* Effect.tryPromise({
        try: async () => {
          for (const f of present) await Deno.remove(`${dir}/${f}`);
          for (const f of RUN_FILES) await Deno.remove(`${dir}/${f}.tmp`).catch(() => {});
        },
        catch: (e) =>
          new OutputInvalid({ dir, reason: `cannot be cleared: ${(e as Error).message}` }),
      });
      log(`--force: removed the previous run's ${present.join(", ")} from ${dir}`);
      return;
    }
    if (!o.resume) {
      const holds: string[] = [];
      for (const f of present) {
        if (f !== "checkpoint.bin") holds.push(f);
        else {
          const h = yield* Effect.result(Checkpoint.readHeader(ckptFile));
          if (h._tag === "Failure") holds.push(`checkpoint.bin (unreadable: ${h.failure.reason})`);
          else {
            const r = h.success.recipe;
            const total = isRecord(r) && isRecord(r.train) ? r.train.steps : undefined;
            holds.push(
              `checkpoint at step ${h.success.step}` +
                (typeof total === "number" ? ` of ${total}` : ""),
            );
          }
        }
      }
      return yield* Effect.fail(new RunExists({ dir, holds }));
    }
    if (!present.includes("checkpoint.bin") || o.recipe === undefined) return;
    const h = yield* Checkpoint.readHeader(ckptFile);
    const differences = recipeDifferences(h.recipe, o.recipe);
    if (differences.length > 0) {
      return yield* Effect.fail(new RecipeChanged({ file: ckptFile, differences }));
    }
    const steps = isRecord(o.recipe) && isRecord(o.recipe.train) ? o.recipe.train.steps : undefined;
    if (typeof steps === "number" && steps < h.step) {
      return yield* Effect.fail(
        new StepsBelowCheckpoint({ file: ckptFile, steps, checkpointStep: h.step }),
      );
    }
  });

/**
 * Keeps only the metrics lines of steps ≤ `step` (a resumed run writes the rest again),
 * rewriting the file atomically. A torn (unparsable) last line — a run killed while appending
 * — is dropped with one log line; an unparsable line before it is a {@link MetricsCorrupt}
 * naming the file and line.
 */
export const truncateMetrics = (
  file: string,
  step: number,
  log: (line: string) => void = (l) => console.log(l),
): Effect.Effect<void, MetricsCorrupt | RunFileError> =>
  Effect.gen(function* () {
    const text = yield* Effect.tryPromise({
      try: () =>
        Deno.readTextFile(file).catch((e) => {
          if (e instanceof Deno.errors.NotFound) return undefined;
          throw e;
        }),
      catch: fileError(file),
    });
    if (text === undefined) return;
    const lines = text.split("\n");
    const last = lines.findLastIndex((l) => l.trim() !== "");
    const kept: string[] = [];
    for (const [i, l] of lines.entries()) {
      if (l.trim() === "") continue;
      let reason: string | undefined;
      let at: unknown;
      try {
        const rec: unknown = JSON.parse(l);
        at = isRecord(rec) ? rec.step : undefined;
        if (typeof at !== "number") reason = `not a metrics record (no numeric "step")`;
      } catch (e) {
        reason = `not JSON (${(e as Error).message})`;
      }
      if (reason === undefined) {
        if ((at as number) <= step) kept.push(l);
      } else if (i === last) {
        log(`${file}: dropped a torn last line (line ${i + 1}: ${reason})`);
      } else return yield* Effect.fail(new MetricsCorrupt({ file, line: i + 1, reason }));
    }
    yield* writeText(file, kept.map((l) => l + "\n").join(""));
  });
