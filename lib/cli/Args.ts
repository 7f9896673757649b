/**
 * Command-line parsing shared by the tasks: `--flag value`, `--flag=value`, boolean `--flag`,
 * repeatable flags; validated with zod so a bad option fails with a message naming it.
 *
 * @module
 */
import * as z from "zod";

/** Splits argv into a record of flag → string | true | string[] (repeated flags). */
export function split(
  argv: ReadonlyArray<string>,
  booleans: ReadonlyArray<string>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const put = (k: string, v: string | true) => {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument "${a}" (options start with --)`);
    const eq = a.indexOf("=");
    const key = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (eq > 0) put(key, a.slice(eq + 1));
    else if (booleans.includes(key)) put(key, true);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) put(key, argv[++i]);
    else throw new Error(`option --${key} needs a value`);
  }
  return out;
}

/** Parses argv with a zod schema (keys are the flag names); throws a readable error. */
export function parse<S extends z.ZodType>(
  schema: S,
  argv: ReadonlyArray<string>,
  booleans: ReadonlyArray<string> = [],
): z.output<S> {
  const r = schema.safeParse(split(argv, booleans));
  if (!r.success) {
    throw new Error(
      "invalid options:\n" +
        r.error.issues.map((i) => `  ✖ --${i.path.join(".")}: ${i.message}`).join("\n"),
    );
  }
  return r.data;
}

/** A positive integer given as a string. */
export const int = z.coerce.number().int().nonnegative();
