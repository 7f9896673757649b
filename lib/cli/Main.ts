/**
 * How every task runs as a process: the backend layer (with the self-test and the
 * Vulkan → GL → cpu fallback, re-running the command under GL where Vulkan fails), one
 * `error: …` line for a failure, exit code 1 for a failure and 130 for Ctrl-C (SIGINT), which
 * interrupts the program so that its finalizers run (a training run keeps its last checkpoint).
 *
 * @module
 */
import { Cause, Effect, Exit, Fiber } from "effect";
import * as Backend from "../Backend.ts";

/**
 * Runs `program` with the backend provided and exits the process with its outcome: 0 on
 * success (or `exitCode(result)`), 1 on a failure, 130 on an interrupt.
 */
export async function run<A, E>(
  program: Effect.Effect<A, E, Backend.Backend>,
  backend: Backend.Options = {},
  opts: { readonly exitCode?: (result: A) => number } = {},
): Promise<never> {
  const fiber = Effect.runFork(
    program.pipe(Effect.provide(Backend.layer({ respawn: true, ...backend }))),
  );
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) Deno.exit(130); // a second Ctrl-C does not wait for the finalizers
    interrupted = true;
    console.error("\ninterrupted; stopping (Ctrl-C again to stop at once)");
    Effect.runFork(Fiber.interrupt(fiber));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  const exit = await Effect.runPromise(Fiber.await(fiber));
  Deno.removeSignalListener("SIGINT", onSignal);
  if (Exit.isSuccess(exit)) Deno.exit(opts.exitCode?.(exit.value) ?? 0);
  if (interrupted || Cause.hasInterruptsOnly(exit.cause)) {
    console.error("interrupted");
    Deno.exit(130);
  }
  const e = Cause.squash(exit.cause);
  console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
  Deno.exit(1);
}
