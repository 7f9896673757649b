/**
 * Environment variables where the runtime has them: Deno's `Deno.env`, and nothing in a browser
 * page (the bundle of lib/web/app.ts), where every setting read through here takes its default.
 *
 * Modules that a browser bundle reaches read their settings through {@link get} instead of
 * `Deno.env.get`, which would throw a `ReferenceError` there (at import, for a module-level
 * constant).
 *
 * @module
 */

/** The variable's value, or undefined where it is unset or the runtime has no environment. */
export function get(name: string): string | undefined {
  const deno = (globalThis as { Deno?: { env: { get(k: string): string | undefined } } }).Deno;
  return deno?.env.get(name);
}
