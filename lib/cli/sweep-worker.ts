/**
 * `deno task sweep-worker --db postgres://… [--slots N] [--host NAME] [--port P] [--lease S]`
 *
 * One machine's share of a sweep on PostgreSQL (README, "More than one machine"): a runner of
 * the sweep's cluster that hosts its share of the cells' workflows and takes cells from the
 * durable queue, `--slots` at a time (one per GPU), each in a child process that trains it
 * into the folder the submitting `deno task sweep --db … --out DIR` named (a folder every
 * worker reaches: a shared filesystem; the summaries also come back through the database).
 * Runs until Ctrl-C / SIGTERM: running cells stop at their next step and keep their
 * checkpoints, and their items go back to the queue at once. A worker that dies (SIGKILL, a
 * lost machine) leaves its cells to the others once their lease (`--lease`) runs out.
 *
 * - `--host`: the name other machines reach this one at (default: its hostname); `--port`: the
 *   runner's TCP port (default 34431), listened on on every interface;
 * - `--lease`: seconds a cell and a runner's shards stay owned without a refresh (default 30);
 *   the same on every process of a sweep.
 *
 * `--cell <dir>/cell.json` is internal: the child process that runs one cell (`Sweep.runCell`,
 * with the backend of `deno task train`); `stop` on its stdin, or stdin closing (its worker
 * died), stops it at the next step with its checkpoint kept.
 *
 * @module
 */
import { Effect, Fiber, Layer } from "effect";
import * as z from "zod";
import * as Sweep from "../Sweep.ts";
import * as SweepEngine from "../SweepEngine.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  db: z.string().regex(/^postgres(ql)?:\/\//, "expected a postgres://… URL").optional(),
  slots: z.coerce.number().int().positive().default(1),
  host: z.string().min(1).optional(),
  port: z.coerce.number().int().min(1).max(65535).default(34431),
  lease: z.coerce.number().positive().default(SweepEngine.defaultTiming.lease),
  cell: z.string().min(1).optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE =
  `usage: deno task sweep-worker --db postgres://user@host/db [--slots N] [--host NAME] \
[--port P] [--lease S]
  --db     the sweep's PostgreSQL database (the same URL as the submitting sweep --db)
  --slots  cells at a time on this machine (default 1; one per GPU)
  --host   the name other workers reach this machine at (default: its hostname)
  --port   this runner's TCP port (default 34431)
  --lease  seconds a cell stays owned without a refresh; a dead worker's cell moves on after it
           (default ${SweepEngine.defaultTiming.lease}; the same on every process of a sweep)`;

/** A database URL with its password hidden, for logs. */
export const redact = (url: string): string => url.replace(/\/\/([^:/@]*):[^@]*@/, "//$1:***@");

const stamp = () => new Date().toISOString().slice(11, 19);

/** The worker as an Effect program: runs until interrupted. */
export const worker = (opts: z.output<typeof Options> & { readonly db: string }) =>
  Effect.gen(function* () {
    const host = opts.host ?? Deno.hostname();
    const log = (l: string) => console.log(`${stamp()} ${l}`);
    log(
      `sweep-worker: runner ${host}:${opts.port}, ${opts.slots} slot${
        opts.slots === 1 ? "" : "s"
      }, lease ${opts.lease} s, store ${redact(opts.db)}`,
    );
    const live = SweepEngine.worker({ slots: opts.slots, log }).pipe(
      Layer.provideMerge(
        SweepEngine.postgres(opts.db, { runner: { host, port: opts.port } }, {
          lease: opts.lease,
        }),
      ),
    );
    return yield* Layer.launch(live);
  });

/**
 * The child process of one cell: `Sweep.runCell` on its spec, stopped (checkpoint kept) by
 * `stop` on stdin or by stdin's end, which is how a worker's death reaches it (the pipe closes
 * even on SIGKILL; the child would otherwise train on as an orphan beside the cell's next run).
 */
export const cell = (file: string) =>
  Effect.gen(function* () {
    const spec = JSON.parse(yield* Effect.promise(() => Deno.readTextFile(file))) as Sweep.CellSpec;
    console.log(`cell ${spec.key} (config ${spec.hash}) → ${spec.dir}`);
    const run = yield* Effect.forkChild(Sweep.runCell(spec));
    const told = Effect.promise(async () => {
      const dec = new TextDecoder();
      let text = "";
      for await (const chunk of Deno.stdin.readable) {
        text += dec.decode(chunk, { stream: true });
        if (text.includes("stop")) return "stop" as const;
      }
      return "eof" as const;
    });
    yield* Effect.forkChild(
      told.pipe(
        Effect.flatMap((why) =>
          Effect.sync(() => {
            console.log(
              why === "stop"
                ? "stop: the worker is stopping; keeping the checkpoint"
                : "the worker is gone (stdin closed); stopping, keeping the checkpoint",
            );
            // A cell stops within a step; should it hang, do not outlive the worker for long.
            if (why === "eof") Deno.unrefTimer(setTimeout(() => Deno.exit(137), 30_000));
          })
        ),
        Effect.andThen(Fiber.interrupt(run)),
      ),
    );
    return yield* Fiber.join(run);
  });

if (import.meta.main) {
  const opts = (() => {
    try {
      return Args.parse(Options, Deno.args, ["help"]);
    } catch (e) {
      console.error(`error: ${(e as Error).message}\n${USAGE}`);
      Deno.exit(1);
    }
  })();
  if (opts.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (opts.cell) await Main.run(cell(opts.cell));
  if (!opts.db) {
    console.error(`error: --db is required\n${USAGE}`);
    Deno.exit(1);
  }
  await SweepEngine.runMain(worker({ ...opts, db: opts.db }));
}
