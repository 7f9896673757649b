/**
 * The durable execution of a sweep's cells (lib/Sweep.ts) on Effect's own engine: each cell is
 * one workflow execution (`effect/workflow` `Workflow`) whose body hands the cell to a durable
 * queue (`DurableQueue.process`) and waits for its result; workers take cells from the queue by
 * their slot count (`DurableQueue.worker(queue, handler, { concurrency: slots })`), each cell in
 * a child process that trains it (`sweep-worker --cell`). Workflows and replies live in SQL
 * (`effect/cluster` `SqlMessageStorage`), queue items in SQL (`PersistedQueue.layerStoreSql`).
 * No scheduler of our own: placement, leases, redelivery and idempotency are Effect's.
 *
 * - One machine, no service ({@link embedded}): SQLite in the output folder (our `node:sqlite`
 *   `SqlClient`, lib/internal/sqlite.ts), `SingleRunner.layer()` + `ClusterWorkflowEngine.layer`,
 *   guarded by a lock file (`SingleRunner` gives no exclusion between processes on one store).
 * - Many machines ({@link postgres}): PostgreSQL through `@effect/sql-pg`; every worker is a
 *   cluster runner (`NodeClusterSocket.layer({ storage: "sql" })` from `@effect/platform-node`)
 *   that hosts workflows and takes queue items; the submitting command is a client only.
 *
 * What survives what:
 * - A finished cell is never run again: re-submitting an idempotency key returns the stored
 *   result, and the key holds the cell's config hash (recipe, folder, SSIM: `Sweep.CellSpec`).
 * - A worker killed mid-cell: its queue item's lease (`lease`) runs out and another worker (or
 *   the same one, restarted) takes it; only completed activities are memoised, so the cell's
 *   run resumes from its own checkpoint (`Train.run` with `resume`: bit-identical).
 * - A cell that failed (an `error:` from its run) is stored as failed; the next submission
 *   tries it again as attempt n+1 (from its checkpoint), the failure named in the log.
 *
 * @module
 */
import {
  Cause,
  Data as EffectData,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Ref,
  Result,
  Schema,
} from "effect";
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine";
import * as RunnerAddress from "effect/cluster/RunnerAddress";
import type * as ShardingConfig from "effect/cluster/ShardingConfig";
import * as SingleRunner from "effect/cluster/SingleRunner";
import * as Digest from "effect/crypto/Digest";
import * as PersistedQueue from "effect/persistence/PersistedQueue";
import type * as SqlClient from "effect/sql/SqlClient";
import { DurableQueue, Workflow } from "effect/workflow";
import type * as WorkflowEngine from "effect/workflow/WorkflowEngine";
import * as NodeClusterSocket from "@effect/platform-node/NodeClusterSocket";
import * as PgClient from "@effect/sql-pg/PgClient";
import { Redacted } from "effect";
import * as Sqlite from "./internal/sqlite.ts";
import type * as Sweep from "./Sweep.ts";

// ---------------------------------------------------------------------------------------------
// The workflow and its queue

/** A cell's run failed; `message` is its `error:` output. Stored as the workflow's failure. */
export class CellFailed extends Schema.TaggedError<CellFailed>()("CellFailed", {
  key: Schema.String,
  message: Schema.String,
}) {}

/**
 * A cell as the engine carries it: its key, config hash and attempt (the idempotency key), and
 * its `Sweep.CellSpec` as JSON (all a worker on another machine needs).
 */
const Payload = {
  key: Schema.String,
  hash: Schema.String,
  attempt: Schema.Number,
  spec: Schema.String,
};
type Payload = {
  readonly key: string;
  readonly hash: string;
  readonly attempt: number;
  readonly spec: string;
};

/** The idempotency key: equal for an equal cell config (and attempt), on any machine. */
export const idempotencyKey = (p: Pick<Payload, "key" | "hash" | "attempt">): string =>
  `${p.key}@${p.hash}#${p.attempt}`;

/** The queue of cells waiting for a worker; the result is `Sweep.CellResult` as JSON. */
export const CellQueue = DurableQueue.make({
  name: "qat-sweep-cell",
  payload: Payload,
  success: Schema.String,
  error: CellFailed,
  idempotencyKey,
});

/** One cell's durable execution: queue the cell, wait for a worker's result. */
export const CellWorkflow = Workflow.make("qat/SweepCell", {
  payload: Payload,
  success: Schema.String,
  error: CellFailed,
  idempotencyKey,
});

/** Registers the workflow's body on a runner (every worker; the embedded sweep itself). */
export const workflowLayer = CellWorkflow.toLayer((p) => DurableQueue.process(CellQueue, p));

// ---------------------------------------------------------------------------------------------
// Stores

/** Lease and lock timings (seconds); every process on one store must use the same. */
export interface Timing {
  /**
   * How long a queue item (a cell being trained) and a runner's shards stay owned without a
   * refresh: a killed worker's cell goes to another worker about this long after the kill
   * (or later, once that worker has a free slot).
   * Refreshed every lease/4.
   */
  readonly lease: number;
}

/**
 * The default lease: 30 s across machines. On the embedded store it is 5 s: one process holds
 * the store (its lock file), so a lease there only delays a restarted sweep's taking back the
 * cell its killed predecessor held.
 */
export const defaultTiming: Timing = { lease: 30 };
/** The default lease of the embedded store. */
export const embeddedTiming: Timing = { lease: 5 };

const queueStore = (t: Timing) =>
  PersistedQueue.layer.pipe(
    Layer.provide(PersistedQueue.layerStoreSql({
      tableName: "qat_sweep_queue",
      lockExpiration: `${t.lease} seconds`,
      lockRefreshInterval: `${Math.max(0.5, t.lease / 4)} seconds`,
      pollInterval: "500 millis",
    })),
  );

const sharding = (t: Timing): Partial<ShardingConfig.ShardingConfig["Service"]> => ({
  shardLockExpiration: `${t.lease} seconds`,
  shardLockRefreshInterval: `${Math.max(0.5, t.lease / 4)} seconds`,
  entityMessagePollInterval: "1 second",
  refreshAssignmentsInterval: "1 second",
});

/** What a sweep's processes run on: the workflow engine and the persisted queues. */
export type Store = WorkflowEngine.WorkflowEngine | PersistedQueue.PersistedQueueFactory;

/**
 * One machine, no service: SQLite at `<dir>/sweep.db`, one runner owning every shard
 * (`SingleRunner.layer`, runner state in memory), the cluster's workflow engine. Take
 * {@link lockStore} first: a second process on the same file would run the same shards.
 */
export const embedded = (dir: string, t: Timing = embeddedTiming): Layer.Layer<Store, unknown> =>
  ClusterWorkflowEngine.layer.pipe(
    Layer.provideMerge(queueStore(t)),
    Layer.provide(
      SingleRunner.layer({ runnerStorage: "memory", shardingConfig: sharding(t) }).pipe(
        Layer.provide(Digest.layerWebCrypto),
      ),
    ),
    Layer.provide(Sqlite.layer({ filename: `${dir}/sweep.db` })),
  );

/** How a process joins a PostgreSQL store. */
export type Role =
  /** A worker: a cluster runner others reach at `host:port` (it listens on `0.0.0.0:port`). */
  | { readonly runner: { readonly host: string; readonly port: number } }
  /** The submitting command: sends cells and reads results, owns no shards. */
  | { readonly client: true };

const pgLayer = (url: string): Layer.Layer<SqlClient.SqlClient, unknown> =>
  PgClient.layer({ url: Redacted.make(url), applicationName: "qat-sweep" }) as Layer.Layer<
    SqlClient.SqlClient,
    unknown
  >;

/**
 * Many machines on one PostgreSQL database: workers are runners of one cluster
 * (`NodeClusterSocket.layer({ storage: "sql" })`: shard locks and mailboxes in SQL, runners
 * talk over TCP), the submitter a client (`clientOnly: true`).
 */
export const postgres = (
  url: string,
  role: Role,
  t: Timing = defaultTiming,
): Layer.Layer<Store, unknown> => {
  const cluster = "runner" in role
    ? NodeClusterSocket.layer({
      storage: "sql",
      shardingConfig: {
        ...sharding(t),
        runnerAddress: Option.some(RunnerAddress.make(role.runner.host, role.runner.port)),
        runnerListenAddress: Option.some(RunnerAddress.make("0.0.0.0", role.runner.port)),
      },
    })
    : NodeClusterSocket.layer({ storage: "sql", clientOnly: true, shardingConfig: sharding(t) });
  return ClusterWorkflowEngine.layer.pipe(
    Layer.provideMerge(queueStore(t)),
    Layer.provide(cluster as Layer.Layer<never, unknown, SqlClient.SqlClient>),
    Layer.provide(pgLayer(url)),
  ) as Layer.Layer<Store, unknown>;
};

/** Another process holds the embedded store. */
export class StoreBusy extends EffectData.TaggedError("StoreBusy")<{
  readonly file: string;
  readonly holder: string;
}> {
  override get message(): string {
    return `${this.file} is held by another sweep (${this.holder}): one process per embedded ` +
      "store; wait for it, or stop it (its cells resume from their checkpoints)";
  }
}

/**
 * Holds `<dir>/sweep.lock` (an exclusive flock, released by the OS when the process ends, even
 * by SIGKILL) for the scope, or fails with {@link StoreBusy} naming the holder.
 */
export const lockStore = (dir: string) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        await Deno.mkdir(dir, { recursive: true });
        const file = `${dir}/sweep.lock`;
        const f = await Deno.open(file, { create: true, read: true, write: true });
        if (!(await f.tryLock(true))) {
          f.close();
          const holder = await Deno.readTextFile(file).catch(() => "");
          throw new StoreBusy({ file, holder: holder.trim() || "unknown process" });
        }
        await f.truncate(0);
        await f.write(
          new TextEncoder().encode(
            `pid ${Deno.pid} on ${Deno.hostname()} since ${new Date().toISOString()}\n`,
          ),
        );
        return f;
      },
      catch: (e) => e instanceof StoreBusy ? e : new Error(`${dir}: ${(e as Error).message}`),
    }),
    (f) => Effect.sync(() => f.close()),
  );

// ---------------------------------------------------------------------------------------------
// Workers

/** Options of {@link worker}. */
export interface WorkerOptions {
  /** Cells at a time (one per GPU). */
  readonly slots: number;
  readonly log: (line: string) => void;
  /** Further runs of a cell whose process crashed (killed, out of memory) before giving up. */
  readonly crashRetries?: number;
  /** Seconds a stopped cell's process may take to write its checkpoint before it is killed. */
  readonly grace?: number;
}

const CELL_SCRIPT = new URL("./cli/sweep-worker.ts", import.meta.url).pathname;
/** The environment variable that tells a cell's process which worker runs it (`host:pid`). */
export const WORKER_ENV = "QAT_SWEEP_WORKER";

/** The error text of a cell process's output: from its last `error:` line on. */
export function errorOf(lines: ReadonlyArray<string>): string | undefined {
  const i = lines.findLastIndex((l) => l.startsWith("error: "));
  return i < 0 ? undefined : lines.slice(i).join("\n").slice("error: ".length).trim();
}

/**
 * Runs a cell in a child process (`sweep-worker --cell <dir>/cell.json`): one tfjs engine and
 * one device per process, a crash or out-of-memory of a cell leaves the worker up, and a
 * worker's event loop stays free for its leases. The child's output goes to `log`, prefixed
 * with the cell's key, and to `<dir>/cell.log`. The child's stdin is a pipe: `stop` asks it to
 * stop at the next step and keep its checkpoint (an interrupted worker); end of file (the
 * worker died, even by SIGKILL) makes it stop on its own.
 */
const runChild = (spec: Sweep.CellSpec, o: WorkerOptions) =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      await Deno.mkdir(spec.dir, { recursive: true });
      await Deno.writeTextFile(`${spec.dir}/cell.json`, JSON.stringify(spec, null, 2) + "\n");
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CELL_SCRIPT, "--cell", `${spec.dir}/cell.json`],
        env: { [WORKER_ENV]: `${Deno.hostname()}:${Deno.pid}` },
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const stdin = child.stdin.getWriter();
      const logFile = await Deno.open(`${spec.dir}/cell.log`, {
        create: true,
        append: true,
      });
      const pump = async (s: ReadableStream<Uint8Array>) => {
        let rest = "";
        const dec = new TextDecoder();
        for await (const chunk of s) {
          const parts = (rest + dec.decode(chunk, { stream: true })).split("\n");
          rest = parts.pop()!;
          for (const l of parts) line(l);
        }
        if (rest) line(rest);
      };
      const enc = new TextEncoder();
      const line = (l: string) => {
        o.log(`  [${spec.key}] ${l}`);
        logFile.writeSync(enc.encode(l + "\n"));
      };
      const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
      return { child, stdin, pumped, logFile };
    }),
    (p) => Effect.promise(() => p.child.status.then(async (s) => (await p.pumped, s))),
    (p, exit) =>
      Effect.promise(async () => {
        if (Exit.isFailure(exit)) {
          // Interrupted (the worker is stopping): ask the cell to stop and keep its checkpoint.
          await p.stdin.write(new TextEncoder().encode("stop\n")).catch(() => {});
          const timer = setTimeout(() => {
            try {
              p.child.kill("SIGKILL");
            } catch { /* already gone */ }
          }, (o.grace ?? 60) * 1000);
          await p.child.status;
          clearTimeout(timer);
          await p.pumped.catch(() => {});
        }
        await p.stdin.close().catch(() => {});
        p.logFile.close();
      }),
  );

/**
 * The queue handler of a worker: runs the cell's process (again after a crash, up to
 * `crashRetries`, each time from its checkpoint) and returns its `result.json`; a run that
 * ends with an `error:` fails the cell with that message.
 */
const handle = (o: WorkerOptions) => (p: Payload) =>
  Effect.gen(function* () {
    const spec = JSON.parse(p.spec) as Sweep.CellSpec;
    const where = `${Deno.hostname()}:${Deno.pid}`;
    const retries = o.crashRetries ?? 2;
    yield* Effect.promise(async () => {
      await Deno.mkdir(spec.dir, { recursive: true });
      await Deno.writeTextFile(
        `${spec.dir}/worker.json`,
        JSON.stringify({
          host: Deno.hostname(),
          pid: Deno.pid,
          attempt: p.attempt,
          since: new Date().toISOString(),
        }) + "\n",
      );
    });
    for (let run = 0; run <= retries; run++) {
      o.log(
        `cell ${spec.key}: running on ${where}` +
          (p.attempt > 0 ? ` (attempt ${p.attempt + 1})` : "") +
          (run > 0 ? ` (run ${run + 1} after a crash)` : "") + ` → ${spec.dir}`,
      );
      const started = performance.now();
      const child = yield* runChild(spec, o);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      if (child.code === 0) {
        const text = yield* Effect.promise(() =>
          Deno.readTextFile(`${spec.dir}/result.json`).catch(() => "")
        );
        if (text) {
          o.log(`cell ${spec.key}: finished on ${where} in ${seconds} s`);
          return text;
        }
      }
      const log = yield* Effect.promise(() =>
        Deno.readTextFile(`${spec.dir}/cell.log`).catch(() => "")
      );
      const lines = log.split("\n").filter((l) => l.trim() !== "").slice(-60);
      const error = child.code === 1 ? errorOf(lines) : undefined;
      if (error !== undefined) {
        o.log(`cell ${spec.key}: failed on ${where}: ${error.split("\n")[0]}`);
        return yield* Effect.fail(new CellFailed({ key: spec.key, message: error }));
      }
      o.log(
        `cell ${spec.key}: its process ended without a result (${
          child.signal ? `signal ${child.signal}` : `exit code ${child.code}`
        }) after ${seconds} s`,
      );
    }
    return yield* Effect.fail(
      new CellFailed({
        key: spec.key,
        message: `its process crashed ${retries + 1} times; see ${spec.dir}/cell.log`,
      }),
    );
  });

/**
 * A worker: registers the workflow (this process hosts its share of executions) and takes
 * cells from the queue, `slots` at a time (`DurableQueue.worker`).
 */
export const worker = (o: WorkerOptions): Layer.Layer<never, never, Store> =>
  Layer.mergeAll(
    workflowLayer,
    DurableQueue.worker(CellQueue, handle(o), { concurrency: o.slots }),
  );

// ---------------------------------------------------------------------------------------------
// Submitting

const payloadOf = (c: Sweep.CellSpec, attempt: number): Payload => ({
  key: c.key,
  hash: c.hash,
  attempt,
  spec: JSON.stringify(c),
});

/** Options of {@link submit}. */
export interface SubmitOptions {
  readonly log: (line: string) => void;
  /** Seconds between looks at a running cell's stored result (default 2). */
  readonly pollEvery?: number;
  /** Seconds between status lines (done/total, what runs where); 0: none. */
  readonly statusEvery?: number;
}

const readWorker = (dir: string) =>
  Deno.readTextFile(`${dir}/worker.json`).then(
    (t) => JSON.parse(t) as { host: string; pid: number; since: string },
    () => undefined,
  );

/** Waits for an execution's stored result, looking every `every` seconds. */
const awaitResult = (id: string, every: number) =>
  Effect.gen(function* () {
    while (true) {
      const r = yield* CellWorkflow.poll(id);
      if (Option.isSome(r) && r.value._tag === "Complete") {
        const exit = r.value.exit;
        if (Exit.isSuccess(exit)) return Result.succeed(exit.value as string);
        const e = Cause.squash(exit.cause);
        // A `CellFailed` (decoded from the store), or a defect of the engine.
        const message = typeof e === "object" && e !== null && "message" in e
          ? String(e.message)
          : String(e);
        return Result.fail(message);
      }
      yield* Effect.sleep(`${every} seconds`);
    }
  });

/**
 * Submits every cell and waits for all of them: a cell done before (same config hash) comes
 * back from the store without work, a running one is joined, one that failed before is tried
 * again as the next attempt. Logs each cell's outcome with done/total, and a status line every
 * `statusEvery` seconds.
 */
export const submit = (cells: ReadonlyArray<Sweep.CellSpec>, o: SubmitOptions) =>
  Effect.gen(function* () {
    const total = cells.length;
    const finished = yield* Ref.make(0);
    const pending = new Set(cells.map((c) => c.key));
    const one = (c: Sweep.CellSpec) =>
      Effect.gen(function* () {
        let attempt = 0;
        let state: "new" | "done" | "running" = "new";
        while (true) {
          const id = yield* CellWorkflow.executionId(payloadOf(c, attempt));
          const r = yield* CellWorkflow.poll(id);
          if (Option.isNone(r)) break;
          if (r.value._tag === "Suspended") {
            state = "running";
            break;
          }
          const exit = r.value.exit;
          if (Exit.isSuccess(exit)) {
            state = "done";
            break;
          }
          const why = Cause.squash(exit.cause);
          o.log(
            `cell ${c.key}: attempt ${attempt + 1} failed before (${
              (why instanceof CellFailed ? why.message : String(why)).split("\n")[0]
            }); trying again`,
          );
          attempt++;
        }
        if (state === "new") o.log(`cell ${c.key}: queued`);
        if (state === "running") o.log(`cell ${c.key}: submitted before, waiting for it`);
        // Start (or re-send, idempotently) the execution without waiting in `execute`: a client
        // waits there on the engine's suspended-retry schedule, which backs off to 30 s between
        // looks (measured: the last of 4 tiny cells reported 22 s after it finished). The stored
        // result is read instead every `pollEvery`, one cheap query per cell.
        const payload = payloadOf(c, attempt);
        const id = yield* CellWorkflow.executionId(payload);
        if (state !== "done") yield* CellWorkflow.execute(payload, { discard: true });
        const result = yield* awaitResult(id, o.pollEvery ?? 2);
        pending.delete(c.key);
        const k = yield* Ref.updateAndGet(finished, (n) => n + 1);
        if (result._tag === "Success") {
          const r = JSON.parse(result.success) as Sweep.CellResult;
          const q = r.summary.qat;
          const score = q.flagged?.length
            ? `⚠ flagged (${q.flagged[0].reason})`
            : `PSNR ${q.psnr?.toFixed(2) ?? "–"} dB, SSIM ${q.ssim?.toFixed(4) ?? "–"}`;
          o.log(
            `cell ${c.key}: ${state === "done" ? "done before" : "done"} (${k}/${total}) on ` +
              `${r.ranOn}: ${score}`,
          );
          return { spec: c, result: r } as Sweep.Outcome;
        }
        const e = result.failure;
        o.log(`cell ${c.key}: failed (${k}/${total}): ${e.split("\n")[0]}`);
        return { spec: c, error: e } as Sweep.Outcome;
      });
    const status = Effect.gen(function* () {
      const every = o.statusEvery ?? 60;
      if (every <= 0) return yield* Effect.never;
      while (true) {
        yield* Effect.sleep(`${every} seconds`);
        const running: string[] = [];
        for (const c of cells) {
          if (!pending.has(c.key)) continue;
          const w = yield* Effect.promise(() => readWorker(c.dir));
          if (w) running.push(`${c.key} on ${w.host}:${w.pid}`);
        }
        o.log(
          `sweep: ${total - pending.size}/${total} done` +
            (running.length ? `; running: ${running.join(", ")}` : "") +
            `; waiting: ${pending.size - running.length}`,
        );
      }
    });
    const statusFiber = yield* Effect.forkChild(status);
    const outcomes = yield* Effect.forEach(cells, one, { concurrency: "unbounded" });
    yield* Fiber.interrupt(statusFiber);
    return outcomes;
  });

// ---------------------------------------------------------------------------------------------
// Processes

/**
 * Runs a sweep command's program as the process (no tfjs backend: the cells run in their own
 * processes): Ctrl-C (SIGINT) or SIGTERM interrupts it so that its finalizers run (a worker
 * asks its cells to keep their checkpoints); one `error: …` line for a failure; exit 0, 1 or
 * 130 (interrupted), or `exitCode(result)`.
 */
export async function runMain<A, E>(
  program: Effect.Effect<A, E>,
  opts: { readonly exitCode?: (a: A) => number } = {},
): Promise<never> {
  const fiber = Effect.runFork(program);
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) Deno.exit(130);
    interrupted = true;
    console.error(
      "\ninterrupted; stopping (running cells keep their checkpoints; again to stop at once)",
    );
    Effect.runFork(Fiber.interrupt(fiber));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const exit = await Effect.runPromise(Fiber.await(fiber));
  if (Exit.isSuccess(exit)) Deno.exit(opts.exitCode?.(exit.value) ?? 0);
  if (interrupted || Cause.hasInterruptsOnly(exit.cause)) {
    console.error("interrupted");
    Deno.exit(130);
  }
  const e = Cause.squash(exit.cause);
  console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
  Deno.exit(1);
}
