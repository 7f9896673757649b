/**
 * The `@std/assert` surface the project uses, on top of `node:assert/strict`.
 *
 * JSR (where `@std/assert` lives) is unreachable from the project's machines, so deno.json maps
 * the bare name `@std/assert` to this module. Where JSR is reachable, flip that entry to
 * `jsr:@std/assert@^1`: the names and signatures here are the same, so no test changes.
 */
import nodeAssert from "node:assert/strict";

/** Thrown by every assertion here, like `@std/assert`'s `AssertionError`. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

const fail = (msg: string | undefined, fallback: string): never => {
  throw new AssertionError(msg ?? fallback);
};

/** Asserts that `expr` is truthy. */
export function assert(expr: unknown, msg?: string): asserts expr {
  if (!expr) fail(msg, "Expected expression to be truthy");
}

/** Asserts deep equality (structural, strict). */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  try {
    nodeAssert.deepStrictEqual(actual, expected);
  } catch (e) {
    fail(msg ? `${msg}\n${(e as Error).message}` : undefined, (e as Error).message);
  }
}

/** Asserts deep inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  try {
    nodeAssert.notDeepStrictEqual(actual, expected);
  } catch (e) {
    fail(msg, (e as Error).message);
  }
}

/** Asserts `actual === expected`. */
export function assertStrictEquals<T>(
  actual: unknown,
  expected: T,
  msg?: string,
): asserts actual is T {
  if (!Object.is(actual, expected)) {
    fail(msg, `Expected ${String(actual)} to be ${String(expected)}`);
  }
}

/** Asserts `|actual − expected| ≤ tolerance` (default 1e-7, like `@std/assert`). */
export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance = 1e-7,
  msg?: string,
): void {
  if (Object.is(actual, expected)) return;
  const delta = Math.abs(expected - actual);
  if (!(delta <= tolerance)) {
    fail(
      msg,
      `Expected actual: "${actual}" to be close to "${expected}": delta "${delta}" is greater than "${tolerance}"`,
    );
  }
}

/** Asserts `actual > expected`. */
export function assertGreater<T>(actual: T, expected: T, msg?: string): void {
  if (!(actual > expected)) fail(msg, `Expect ${String(actual)} > ${String(expected)}`);
}

/** Asserts `actual < expected`. */
export function assertLess<T>(actual: T, expected: T, msg?: string): void {
  if (!(actual < expected)) fail(msg, `Expect ${String(actual)} < ${String(expected)}`);
}

/** Asserts `actual` includes `expected` (strings) . */
export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  if (!actual.includes(expected)) {
    fail(msg, `Expected actual: "${actual}" to contain: "${expected}"`);
  }
}

/** Asserts that `actual` matches the regular expression. */
export function assertMatch(actual: string, expected: RegExp, msg?: string): void {
  if (!expected.test(actual)) fail(msg, `Expected actual: "${actual}" to match: "${expected}"`);
}

/** Asserts that `actual` is an instance of `expectedType`. */
export function assertInstanceOf<T extends abstract new (...args: never[]) => unknown>(
  actual: unknown,
  expectedType: T,
  msg?: string,
): asserts actual is InstanceType<T> {
  if (!(actual instanceof expectedType)) {
    fail(msg, `Expected object to be an instance of "${expectedType.name}"`);
  }
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

function checkError<E extends Error>(
  e: unknown,
  ErrorClass?: ErrorClass<E>,
  msgIncludes?: string,
): E {
  if (ErrorClass && !(e instanceof ErrorClass)) {
    fail(
      undefined,
      `Expected error to be instance of "${ErrorClass.name}", but was "${String(e)}"`,
    );
  }
  if (msgIncludes !== undefined && !String((e as Error)?.message).includes(msgIncludes)) {
    fail(
      undefined,
      `Expected error message to include "${msgIncludes}", but got "${(e as Error)?.message}"`,
    );
  }
  return e as E;
}

/** Asserts that `fn` throws (optionally an instance of `ErrorClass` whose message includes `msgIncludes`). */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  ErrorClass?: ErrorClass<E>,
  msgIncludes?: string,
): E {
  try {
    fn();
  } catch (e) {
    return checkError(e, ErrorClass, msgIncludes);
  }
  return fail(undefined, "Expected function to throw.");
}

/** Asserts that the promise returned by `fn` rejects. */
export async function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  ErrorClass?: ErrorClass<E>,
  msgIncludes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, ErrorClass, msgIncludes);
  }
  return fail(undefined, "Expected function to reject.");
}
