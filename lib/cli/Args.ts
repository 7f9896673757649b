/**
 * Command-line parsing shared by the tasks: `--flag value`, `--flag=value`, boolean `--flag`,
 * repeatable flags; validated with zod so a bad option fails with a message naming it.
 *
 * An unknown flag is reported as such whether or not a value follows
 * (`unknown option --bogus (options: --recipe, --steps, …)`), and a flag given twice that is
 * not repeatable says so (`option --steps given twice`). A flag is repeatable when its schema
 * accepts an array (eval's `--data a --data b`).
 *
 * @module
 */
import * as z from "zod";

/** What {@link split} knows about the flags beyond which are boolean. */
export interface SplitOptions {
  /** Every flag name; others are refused as unknown (default: any name is taken). */
  readonly known?: ReadonlyArray<string>;
  /**
   * Flags that may be given more than once (their values become an array). Default: every
   * flag, when `known` is not given either; none otherwise.
   */
  readonly repeatable?: ReadonlyArray<string>;
}

const list = (names: ReadonlyArray<string>) => names.map((k) => `--${k}`).join(", ");

/** Splits argv into a record of flag → string | true | string[] (repeated flags). */
export function split(
  argv: ReadonlyArray<string>,
  booleans: ReadonlyArray<string>,
  opts: SplitOptions = {},
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const repeatable = (k: string) =>
    opts.repeatable ? opts.repeatable.includes(k) : opts.known === undefined;
  const put = (k: string, v: string | true) => {
    const prev = out[k];
    if (prev !== undefined && !repeatable(k)) throw new Error(`option --${k} given twice`);
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument "${a}" (options start with --)`);
    const eq = a.indexOf("=");
    const key = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (opts.known && !opts.known.includes(key)) {
      throw new Error(`unknown option --${key} (options: ${list(opts.known)})`);
    }
    if (eq > 0) {
      if (booleans.includes(key)) throw new Error(`option --${key} takes no value`);
      put(key, a.slice(eq + 1));
    } else if (booleans.includes(key)) put(key, true);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) put(key, argv[++i]);
    else throw new Error(`option --${key} needs a value`);
  }
  return out;
}

/**
 * Splits argv into positional arguments (anywhere) and the flags with their values, for
 * {@link parse}; a flag not in `booleans` takes the next argument as its value.
 */
export function positionals(
  argv: ReadonlyArray<string>,
  booleans: ReadonlyArray<string>,
): { args: string[]; flags: string[] } {
  const args: string[] = [];
  const flags: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) args.push(a);
    else {
      flags.push(a);
      const takesValue = !a.includes("=") && !booleans.includes(a.slice(2));
      if (takesValue && i + 1 < argv.length && !argv[i + 1].startsWith("--")) flags.push(argv[++i]);
    }
  }
  return { args, flags };
}

/** The parts of a zod schema's definition that tell whether it accepts an array. */
interface Def {
  readonly type: string;
  readonly innerType?: z.ZodType;
  readonly in?: z.ZodType;
  readonly options?: ReadonlyArray<z.ZodType>;
}

/** Whether a schema accepts an array (through optional, default, pipe/transform and unions). */
export function acceptsArray(schema: z.ZodType): boolean {
  const def = (schema as unknown as { def: Def }).def;
  switch (def.type) {
    case "array":
      return true;
    case "union":
      return (def.options ?? []).some(acceptsArray);
    case "pipe":
      return def.in !== undefined && acceptsArray(def.in);
    default:
      return def.innerType !== undefined && acceptsArray(def.innerType);
  }
}

/**
 * Parses argv with a zod schema (keys are the flag names); throws a readable error. For an
 * object schema its keys are the known flags and those whose schema accepts an array are
 * repeatable.
 */
export function parse<S extends z.ZodType>(
  schema: S,
  argv: ReadonlyArray<string>,
  booleans: ReadonlyArray<string> = [],
): z.output<S> {
  const shape = schema instanceof z.ZodObject
    ? (schema.shape as Record<string, z.ZodType>)
    : undefined;
  const known = shape && Object.keys(shape);
  const repeatable = shape && Object.keys(shape).filter((k) => acceptsArray(shape[k]));
  const r = schema.safeParse(split(argv, booleans, { known, repeatable }));
  if (!r.success) {
    throw new Error(
      "invalid options:\n" +
        r.error.issues.map((i) =>
          i.code === "unrecognized_keys"
            ? `  ✖ unknown option ${list(i.keys)}`
            : `  ✖ --${i.path.join(".")}: ${i.message}`
        ).join("\n"),
    );
  }
  return r.data;
}

/** A positive integer given as a string. */
export const int = z.coerce.number().int().nonnegative();
