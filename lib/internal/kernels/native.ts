/**
 * Native memory that only a JS garbage collection gives back.
 *
 * Every dispatch (tfjs's and ours) creates a `GPUBindGroup`. Under Deno 2.9.6 its native memory
 * (~1.5 KB measured on lavapipe and GL) is freed when V8 collects the JS wrapper, and V8 does
 * not know about that memory: a training loop that allocates little JS garbage (small batches,
 * tensors that stay on the GPU) grew by ~1.6 MB per step of a tiny EDSR, without end, and stayed
 * flat with a collection every 10 steps (issue 12). So we count dispatches and ask V8 for a
 * collection every {@link EVERY} of them (~10 ms with the heaps of this project: < 1% of the
 * dispatches' own cost).
 *
 * `gc` is reached through `node:v8`'s `setFlagsFromString("--expose-gc")`, which Deno supports;
 * where that is missing (a browser) collection is left to V8.
 *
 * @module
 */
import * as Env from "../env.ts";

/** Dispatches between two collections (~12 MB of bind groups). */
export const EVERY = Number(Env.get("QAT_GC_EVERY") ?? 8192);

let gc: (() => void) | undefined;
let enabled: Promise<void> | undefined;
let count = 0;

/** Makes `gc` reachable (once); harmless where it is not. */
export function enable(): Promise<void> {
  enabled ??= (async () => {
    try {
      const v8 = await import("node:v8");
      const vm = await import("node:vm");
      v8.setFlagsFromString("--expose-gc");
      gc = vm.runInNewContext("gc") as () => void;
    } catch {
      gc = undefined;
    }
  })();
  return enabled;
}

/** Notes one dispatch; every {@link EVERY} dispatches runs a collection. */
export function dispatched(): void {
  if (++count < EVERY || !gc) return;
  count = 0;
  gc();
}

/** Whether collections can be asked for in this runtime. */
export function available(): boolean {
  return gc !== undefined;
}
