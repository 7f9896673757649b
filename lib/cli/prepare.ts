/**
 * `deno task prepare <HR folder> --scale S [--out DIR] [--workers N]`
 *
 * Makes a training folder's prepared copies once (`Prepare.prepare`): each HR image and its
 * MATLAB-bicubic LR image at ×S (or the dataset's own LR file, `DIV2K_train_LR_bicubic/X4/`),
 * as files a run reads patches from without decoding. Default `--out`: `<HR folder>_prepared`,
 * which a run given the HR folder finds by itself; with another `--out`, point the recipe's
 * `data.train` at that folder. Interrupted (Ctrl-C, a crash), it continues where it stopped
 * when run again. Unusable images are named as they are found and counted at the end; the
 * exit code is 2 when any was skipped (0 otherwise, 1 on an error, 130 on Ctrl-C).
 *
 * @module
 */
import { Cause, Effect, Exit, Fiber } from "effect";
import * as z from "zod";
import * as Prepare from "../Prepare.ts";
import * as Args from "./Args.ts";

const Options = z.object({
  scale: z.coerce.number().int().positive(),
  out: z.string().min(1).optional(),
  workers: z.coerce.number().int().positive().optional(),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task prepare <HR folder> --scale S [--out DIR] [--workers N]
  <HR folder>  DIV2K_train_HR (with DIV2K_train_LR_bicubic/X<S> beside it, if you have it),
               <set>/HR (with <set>/LR_bicubic/X<S>), or any folder of PNG/JPEG images
  --scale      the SR scale of the LR copies (2, 3, 4, …)
  --out        the prepared folder (default: <HR folder>_prepared, found by runs on their own)
  --workers    images prepared in parallel (default: one per core)`;

const fmtTime = (s: number) => {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
};

/** The task as an Effect program; its result is the process's exit code. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const dir = argv.length > 0 && !argv[0].startsWith("--") ? argv[0] : undefined;
    const rest = dir === undefined ? argv : argv.slice(1);
    if (rest.includes("--help")) {
      console.log(USAGE);
      return 0;
    }
    if (dir === undefined) throw new Error(`no HR folder given\n${USAGE}`);
    const opts = Args.parse(Options, rest, ["help"]);
    const tty = Deno.stderr.isTerminal();
    const enc = new TextEncoder();
    const draw = (s: string) => Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${s}`));
    let lastLine = -1;
    const result = yield* Prepare.prepare(dir, opts, {
      onSkip: (p) => {
        if (tty) draw("");
        console.error(`warning: ${p.file}: ${p.reason}; skipped`);
      },
      onProgress: (p) => {
        // The rate and ETA count the images made in this call, not those already there.
        const rate = p.made / Math.max(1e-9, p.seconds);
        const eta = fmtTime((p.total - p.done) / rate);
        const name = p.file.split("/").pop();
        if (tty) {
          const width = 30, filled = Math.round((width * p.done) / Math.max(1, p.total));
          draw(
            `[${"█".repeat(filled)}${"░".repeat(width - filled)}] ${p.done}/${p.total} ${name} ` +
              `| ${rate.toFixed(2)} img/s | ETA ${eta}`,
          );
          if (p.done === p.total) draw("");
        } else {
          // Without a terminal: a line per twentieth.
          const twentieth = Math.floor((p.done * 20) / Math.max(1, p.total));
          if (twentieth > lastLine) {
            lastLine = twentieth;
            console.log(
              `prepare ${p.done}/${p.total} ${name} | ${rate.toFixed(2)} img/s | ETA ${eta}`,
            );
          }
        }
      },
    });
    const n = result.skipped.length;
    console.log(
      `prepared ${
        result.total - n
      } of ${result.total} images of ${result.source} at ×${result.scale} ` +
        `in ${result.out} (${result.made} made, ${result.kept} already there) in ${
          fmtTime(result.seconds)
        }` + (n ? `; ${n} skipped:` : ""),
    );
    for (const p of result.skipped) console.log(`  ${p.file}: ${p.reason}`);
    console.log(
      result.out === Prepare.defaultOut(result.hr)
        ? `a run whose data.train is ${dir.replace(/\/+$/, "")} uses it`
        : `point a recipe's data.train at ${result.out} to use it`,
    );
    return n > 0 ? 2 : 0;
  });

if (import.meta.main) {
  // No backend: preparing decodes and resizes images only (unlike lib/cli/Main.ts's tasks).
  const fiber = Effect.runFork(program(Deno.args));
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) Deno.exit(130);
    interrupted = true;
    console.error("\ninterrupted; the images prepared so far are kept: run it again to continue");
    Effect.runFork(Fiber.interrupt(fiber));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  const exit = await Effect.runPromise(Fiber.await(fiber));
  if (Exit.isSuccess(exit)) Deno.exit(exit.value);
  if (interrupted || Cause.hasInterruptsOnly(exit.cause)) Deno.exit(130);
  const e = Cause.squash(exit.cause);
  console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
  Deno.exit(1);
}
