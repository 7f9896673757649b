/**
 * A small pool of `image_worker.ts` workers: jobs queue in order and go to the first idle
 * worker; workers start on the first jobs that need them (each loads the image modules, ≈1–2 s)
 * and stop at {@link Pool.close}. A worker that dies fails its job and is replaced.
 *
 * @module
 */
import type { Job, Reply } from "./image_worker.ts";

const SCRIPT = new URL("./image_worker.ts", import.meta.url).href;

interface Pending {
  readonly id: number;
  readonly job: Job;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
}

/** A job that failed in a worker: `reason` says why (the file is the caller's to name). */
export class JobFailed extends Error {}

/** A pool of at most `size` workers. */
export class Pool {
  readonly #size: number;
  readonly #idle: Worker[] = [];
  readonly #busy = new Map<Worker, Pending>();
  readonly #queue: Pending[] = [];
  #next = 0;
  #closed = false;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) {
      throw new RangeError(`a worker pool needs at least 1 worker, got ${size}`);
    }
    this.#size = size;
  }

  /** Runs `job` on a worker; rejects with {@link JobFailed} when the job fails there. */
  run<T>(job: Job): Promise<T> {
    if (this.#closed) return Promise.reject(new Error("the worker pool is closed"));
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ id: this.#next++, job, resolve: resolve as (v: unknown) => void, reject });
      this.#dispatch();
    });
  }

  /** Jobs waiting for a worker. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Stops every worker; queued and running jobs are rejected. */
  close(): void {
    this.#closed = true;
    for (const w of [...this.#idle, ...this.#busy.keys()]) w.terminate();
    const gone = new Error("the worker pool was closed");
    for (const p of [...this.#queue, ...this.#busy.values()]) p.reject(gone);
    this.#idle.length = 0;
    this.#busy.clear();
    this.#queue.length = 0;
  }

  #spawn(): Worker {
    const w = new Worker(SCRIPT, { type: "module" });
    w.onmessage = (e: MessageEvent<Reply>) => {
      const p = this.#busy.get(w);
      if (!p || p.id !== e.data.id) return;
      this.#busy.delete(w);
      this.#idle.push(w);
      if (e.data.ok) p.resolve(e.data.result);
      else p.reject(new JobFailed(e.data.reason));
      this.#dispatch();
    };
    w.onerror = (e: ErrorEvent) => {
      // An uncaught error (the script failed to load, out of memory): the worker is gone.
      e.preventDefault();
      const p = this.#busy.get(w);
      this.#busy.delete(w);
      w.terminate();
      p?.reject(new JobFailed(`the image worker failed: ${e.message}`));
      this.#dispatch();
    };
    return w;
  }

  #dispatch(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      const w = this.#idle.pop() ??
        (this.#busy.size < this.#size ? this.#spawn() : undefined);
      if (!w) return;
      const p = this.#queue.shift()!;
      this.#busy.set(w, p);
      w.postMessage({ id: p.id, job: p.job });
    }
  }
}
