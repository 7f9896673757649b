/**
 * `deno task serve [--model <model.qsr.safetensors | run folder>] [--port N]`
 *
 * Serves the page of lib/web/ on http://127.0.0.1:N/ (lib/Serve.ts): it loads a packed model
 * (the `--model` file, or one picked on the page) and upscales an image picked on the page on
 * the browser's WebGPU, with the library's own code bundled for the browser, showing bicubic,
 * the FP32 network and the quantized model on the integer kernels side by side, with the
 * packed file's size and each upscale's time. Runs until Ctrl-C.
 *
 * @module
 */
import { Effect } from "effect";
import * as z from "zod";
import * as Serve from "../Serve.ts";
import * as Args from "./Args.ts";
import * as Main from "./Main.ts";

const Options = z.object({
  model: z.string().min(1).optional(),
  port: z.coerce.number().int().min(0).max(65535).default(Serve.DEFAULT_PORT),
  help: z.literal(true).optional(),
}).strict();

const USAGE = `usage: deno task serve [--model <model.qsr.safetensors | run folder>] [--port N]
  --model  a packed file (deno task export --format packed), or a folder holding
           model.qsr.safetensors, that the page loads at start (else pick one on the page)
  --port   TCP port on 127.0.0.1 (default ${Serve.DEFAULT_PORT}; 0 takes a free one)`;

/** The whole `serve` task: starts the server, prints its address, serves until interrupted. */
export const program = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    if (argv.includes("--help")) {
      console.log(USAGE);
      return;
    }
    const opts = yield* Effect.try({
      try: () => Args.parse(Options, argv, ["help"]),
      catch: (e) => e as Error,
    });
    // Serve.start checks --model before it builds the bundle: a wrong path fails at once.
    const onBundling = () =>
      console.log("bundling lib/web/app.ts for the browser (deno bundle --platform browser)…");
    const server = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => Serve.start({ port: opts.port, model: opts.model, onBundling }),
        catch: (e) => e as Error,
      }),
      (s) => Effect.promise(() => s.shutdown()),
    );
    console.log(
      `serving ${server.url} (bundled in ${server.bundleSeconds.toFixed(1)} s)` +
        (server.model ? `; model ${server.model}` : "; no --model: pick a packed file on the page"),
    );
    console.log("open it in a browser with WebGPU; Ctrl-C stops");
    return yield* Effect.never;
  }).pipe(Effect.scoped);

if (import.meta.main) {
  // The server only decodes and encodes weights: tfjs cpu, no WebGPU self-test.
  await Main.run(program(Deno.args), { prefer: "cpu", log: false });
}
