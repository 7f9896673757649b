/**
 * `deno task sweep <grid file> [--out DIR] [--slots N] [--db postgres://…] [--lease S]
 *   [--ssim valid|same] [--no-report] [--status S]`
 *
 * Runs a grid (lib/Sweep.ts: a TypeScript file exporting `Sweep.grid({ … })`) as durable runs
 * (lib/SweepEngine.ts), one per cell, and prints one table per `table` of the grid in the ODM
 * paper's layout. Writes `<out>/sweep.json` (every cell: its key, config hash, result or error),
 * `<out>/sweep.md`, and per table `<out>/<table>/compare.{json,md}` and the comparison page
 * (`deno task report`'s, where the cells' folders are on this machine; `--no-report` skips it).
 * Every cell is validated before any work: an invalid cell is refused naming the cell and field.
 *
 * - Default: one machine, no service. The store is SQLite at `<out>/sweep.db` (held by
 *   `<out>/sweep.lock`: one process per store), and this process trains `--slots` cells at a
 *   time (default 1), each in a child process into `<out>/<table>/<name>/`.
 * - `--db postgres://…`: many machines. This command submits the cells and waits; the
 *   `deno task sweep-worker --db …` processes train them. `--out` must then be a folder every
 *   worker reaches (a shared filesystem); the results come back through the database, so the
 *   tables need only the database.
 *
 * Running it again with the same grid resumes: finished cells come back from the store without
 * work (their idempotency key holds the cell's config hash), running ones are joined, a killed
 * one continues from its checkpoint, a failed one is tried again. Ctrl-C stops (running cells
 * keep their checkpoints; with `--db`, they go on on the workers). Exit code 1 when a cell failed.
 *
 * @module
 */
import { Effect, Layer } from "effect";
import * as z from "zod";
import * as Sweep from "../Sweep.ts";
import * as SweepEngine from "../SweepEngine.ts";
import * as Args from "./Args.ts";
import { redact } from "./sweep-worker.ts";

const Options = z.object({
  out: z.string().min(1).optional(),
  slots: z.coerce.number().int().positive().optional(),
  db: z.string().regex(/^postgres(ql)?:\/\//, "expected a postgres://… URL").optional(),
  lease: z.coerce.number().positive().optional(),
  ssim: z.enum(["valid", "same"]).default("valid"),
  "no-report": z.literal(true).optional(),
  status: z.coerce.number().nonnegative().default(60),
  help: z.literal(true).optional(),
}).strict();
const BOOLEANS = ["no-report", "help"];

const USAGE = `usage: deno task sweep <grid file> [--out DIR] [--slots N] [--db postgres://…] \
[--lease S] [--ssim valid|same] [--no-report] [--status S]
  <grid file>  a .ts file whose default export is Sweep.grid({ name, cells }) (recipes/grids/)
  --out        output folder (default runs/<grid name>); each cell in <out>/<table>/<name>/
  --slots      cells at a time on this machine (default 1; not with --db: the workers have them)
  --db         a PostgreSQL database shared with deno task sweep-worker processes on other
               machines (then --out must be a folder they all reach)
  --lease      seconds a cell stays owned without a refresh (default ${SweepEngine.embeddedTiming.lease}, with --db
               ${SweepEngine.defaultTiming.lease}: the workers' --lease)
  --ssim       SSIM border of the tables: valid (default, MATLAB ssim_index) or same
  --no-report  do not write the comparison pages
  --status     seconds between status lines (default 60; 0 for none)`;

const stamp = () => new Date().toISOString().slice(11, 19);

const exists = (f: string) => Deno.stat(f).then(() => true, () => false);

/**
 * The comparison page of one table folder, by `deno task report` in a child process (it needs
 * the tfjs backend, which this process does not start). Only where every cell's run folder is
 * here (with `--db` and no shared filesystem they are on the workers).
 */
const report = (dir: string, specs: ReadonlyArray<Sweep.CellSpec>, log: (l: string) => void) =>
  Effect.promise(async () => {
    for (const s of specs) {
      if (!(await exists(`${s.dir}/metrics.jsonl`)) || !(await exists(`${s.dir}/checkpoint.bin`))) {
        log(`report ${dir}: not written (${s.dir} is not on this machine)`);
        return;
      }
    }
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./report.ts", import.meta.url).pathname, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    const last = text.trim().split("\n").filter((l) => l.trim()).pop() ?? "";
    log(r.success ? `report ${dir}: ${last}` : `report ${dir}: not written (${last})`);
  });

/** The whole `sweep` task as an Effect program; returns the outcomes. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const { args, flags } = Args.positionals(argv, BOOLEANS);
    const opts = Args.parse(Options, flags, BOOLEANS);
    if (opts.help) {
      console.log(USAGE);
      return [];
    }
    if (args.length !== 1) {
      throw new Error(
        `${
          args.length === 0 ? "no grid file given" : `one grid file, got ${args.join(" ")}`
        }\n${USAGE}`,
      );
    }
    if (opts.db && opts.slots !== undefined) {
      throw new Error(
        "--slots is for a sweep on this machine; with --db the cells run on " +
          "deno task sweep-worker processes, each with its own --slots",
      );
    }
    const log = (l: string) => console.log(`${stamp()} ${l}`);
    // Every cell validated (its recipe built) before the store is touched.
    const loaded = yield* Effect.tryPromise({
      try: async () => {
        const { grid, source } = await Sweep.read(args[0]);
        const out = opts.out ?? `runs/${grid.name}`;
        return { out, ...(await Sweep.cells(grid, { source, out, ssim: opts.ssim })) };
      },
      catch: (e) => e as Error,
    });
    const outDir = loaded.out;
    const out = new URL(outDir, `file://${Deno.cwd()}/`).pathname.replace(/\/+$/, "");
    const nTables = new Set(loaded.cells.map((c) => c.table)).size;
    const timing = {
      lease: opts.lease ??
        (opts.db ? SweepEngine.defaultTiming : SweepEngine.embeddedTiming).lease,
    };
    const slots = opts.slots ?? 1;
    log(
      `sweep ${loaded.name}: ${loaded.cells.length} cells in ${nTables} table${
        nTables === 1 ? "" : "s"
      } → ${out}` +
        (opts.db
          ? ` (store ${redact(opts.db)}; the cells run on sweep-worker processes)`
          : ` (store ${out}/sweep.db; ${slots} slot${slots === 1 ? "" : "s"} on this machine)`),
    );
    const submit = SweepEngine.submit(loaded.cells, { log, statusEvery: opts.status });
    const outcomes = opts.db
      ? yield* submit.pipe(Effect.provide(SweepEngine.postgres(opts.db, { client: true }, timing)))
      : yield* Effect.scoped(
        Effect.gen(function* () {
          yield* SweepEngine.lockStore(out);
          const live = SweepEngine.worker({ slots, log }).pipe(
            Layer.provideMerge(SweepEngine.embedded(out, timing)),
          );
          return yield* submit.pipe(Effect.provide(live));
        }),
      );

    // The tables: one compare folder per table, and the whole sweep.
    const tables = Sweep.tables(outcomes);
    yield* Effect.promise(async () => {
      for (const t of tables) {
        if (t.rows.length === 0) continue;
        await Deno.mkdir(`${out}/${t.table}`, { recursive: true });
        await Deno.writeTextFile(
          `${out}/${t.table}/compare.json`,
          JSON.stringify({ setup: t.setup, rows: t.rows }, null, 2) + "\n",
        );
        await Deno.writeTextFile(`${out}/${t.table}/compare.md`, `${t.setup}\n\n${t.markdown}\n`);
      }
      const md = tables.map((t) =>
        [
          `## ${t.setup}`,
          "",
          t.markdown,
          ...t.failed.map((f) => `\n- ${f.key} failed: ${f.error.split("\n")[0]}`),
        ].join("\n")
      ).join("\n\n");
      await Deno.writeTextFile(`${out}/sweep.md`, `# sweep ${loaded.name}\n\n${md}\n`);
      await Deno.writeTextFile(
        `${out}/sweep.json`,
        JSON.stringify(
          {
            grid: loaded.name,
            source: loaded.source,
            cells: outcomes.map((o) => ({
              key: o.spec.key,
              table: o.spec.table,
              name: o.spec.name,
              hash: o.spec.hash,
              dir: o.spec.dir,
              ...("result" in o ? { result: o.result } : { error: o.error }),
            })),
            tables: tables.map(({ table, setup, rows }) => ({ table, setup, rows })),
          },
          null,
          2,
        ) + "\n",
      );
    });
    if (!opts["no-report"]) {
      for (const t of tables) {
        if (t.failed.length > 0 || t.rows.length === 0) continue;
        yield* report(
          `${out}/${t.table}`,
          loaded.cells.filter((c) => c.table === t.table),
          log,
        );
      }
    }
    const failed = outcomes.filter((o) => "error" in o).length;
    console.log("");
    for (const t of tables) {
      console.log(t.markdown ? `${t.setup}\n\n${t.markdown}\n` : `${t.setup}\n`);
      for (const f of t.failed) console.log(`✖ ${f.key} failed: ${f.error}\n`);
    }
    console.log(
      `${outcomes.length - failed}/${outcomes.length} cells done` +
        (failed ? `, ${failed} failed (run the sweep again to retry them)` : "") +
        `; wrote ${out}/sweep.json, ${out}/sweep.md`,
    );
    return outcomes;
  });

if (import.meta.main) {
  await SweepEngine.runMain(program(Deno.args), {
    exitCode: (o) => (o.some((x) => "error" in x) ? 1 : 0),
  });
}
