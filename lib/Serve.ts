/**
 * The server of `deno task serve` (lib/cli/serve.ts): a static HTTP server on 127.0.0.1 for the
 * page of lib/web/ — the same library code as `deno task upscale`, bundled for the browser, run
 * on the browser's WebGPU.
 *
 * At start it bundles lib/web/app.ts with `deno bundle --platform browser` into a temporary
 * folder (removed at shutdown), so the page always runs the working tree's code. Routes:
 *
 * - `GET /` the page (lib/web/index.html), `GET /app.js` the bundle;
 * - `GET /api/config` `{"model": <file name> | null, "bytes": <size> | null}`;
 * - `GET /model` the packed file given with `--model` (404 without one);
 * - `POST /api/fp32` with a packed file's recipe (JSON, as its `__metadata__.recipe`): the FP32
 *   network it was quantized from, as a packed file of the full-precision recipe (every
 *   parameter F32; lib/web/compare.ts decodes it with lib/Packed.ts like the quantized one).
 *   The weights are the recipe's starting point (`Registry.build`: the pretrained package of
 *   `esrgan-slim`/`esrgan-medium`, or `model.checkpoint`); a recipe that starts from random
 *   weights has no FP32 network worth comparing with and gets 422 with the reason.
 *
 * @module
 */
import { Effect } from "effect";
import * as Backend from "./Backend.ts";
import * as Packed from "./Packed.ts";
import * as Recipe from "./Recipe.ts";
import * as Tree from "./Tree.ts";
import * as Registry from "../models/registry.ts";

/** The default port of `deno task serve`. */
export const DEFAULT_PORT = 8787;

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);
const WEB = `${ROOT}lib/web/`;

/** Options of {@link start}. */
export interface Options {
  /** TCP port on 127.0.0.1; 0 takes a free one (default {@link DEFAULT_PORT}). */
  readonly port?: number;
  /** A packed file (or a folder holding `model.qsr.safetensors`) the page loads at start. */
  readonly model?: string;
  /** Called with one line per request that failed (default: `console.error`). */
  readonly onError?: (line: string) => void;
  /** Called once `--model` is checked, before the bundle is built (a progress line). */
  readonly onBundling?: () => void;
}

/** A running server. */
export interface Server {
  /** `http://127.0.0.1:<port>/`. */
  readonly url: string;
  readonly port: number;
  /** The `--model` file served at `/model`, if any. */
  readonly model?: string;
  /** Seconds the bundle took. */
  readonly bundleSeconds: number;
  /** Stops listening and removes the bundle's folder. */
  readonly shutdown: () => Promise<void>;
}

/** The server could not start; names the file or flag at fault. */
export class ServeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ServeError";
  }
}

/** The packed file a `--model` argument names (a folder: its `model.qsr.safetensors`), checked. */
export async function modelFile(p: string): Promise<string> {
  const stat = await Deno.stat(p).catch(() => undefined);
  if (!stat) throw new ServeError(`--model ${p}: no such file or folder`);
  const file = stat.isDirectory ? `${p.replace(/\/+$/, "")}/model${Packed.EXTENSION}` : p;
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new ServeError(`--model ${file}: cannot read (${(e as Error).message})`);
  }
  if (!Packed.isPacked(bytes)) {
    throw new ServeError(
      `--model ${file}: not a ${Packed.FORMAT} file (${Packed.EXTENSION}; ` +
        "write one with deno task export --format packed)",
    );
  }
  return file;
}

/** Bundles the page's script for the browser into `dir/app.js`; throws with deno's output. */
export async function bundle(dir: string): Promise<string> {
  const out = `${dir}/app.js`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--config",
      `${ROOT}deno.json`,
      "--platform",
      "browser",
      "--output",
      out,
      `${WEB}app.ts`,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (r.code !== 0) {
    const text = new TextDecoder().decode(r.stderr) + new TextDecoder().decode(r.stdout);
    throw new ServeError(`deno bundle of ${WEB}app.ts failed:\n${text.trim()}`);
  }
  return out;
}

/**
 * The FP32 network a packed file's recipe was quantized from, as a packed file of the
 * full-precision recipe (see the module comment). Throws with the reason where there is none.
 */
export async function fp32Of(recipeJson: unknown): Promise<Uint8Array> {
  const recipe = await Recipe.fromJSON(recipeJson, "the packed model's recipe");
  const fp: Recipe.Recipe = { ...recipe, quant: { ...recipe.quant, wbits: 32, abits: 32 } };
  if (!fp.model.pretrained && !fp.model.checkpoint) {
    throw new ServeError(
      `${recipe.model.arch} ×${recipe.model.scale} starts from random weights ` +
        "(neither model.pretrained nor model.checkpoint): no FP32 network to compare with",
    );
  }
  const built = await Effect.runPromise(Registry.build(fp.model, fp.train.seed));
  try {
    return await Packed.encode({
      model: built.model,
      params: built.params,
      recipe: Recipe.toJSON(fp),
      arch: fp.model.arch,
      scale: fp.model.scale,
      options: (fp.model.options ?? {}) as Record<string, number>,
    });
  } finally {
    Tree.dispose(built.params);
  }
}

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  json: "application/json",
  text: "text/plain; charset=utf-8",
  bin: "application/octet-stream",
};

const reply = (body: BodyInit | null, type: keyof typeof TYPES, status = 200) =>
  new Response(body, {
    status,
    headers: { "content-type": TYPES[type], "cache-control": "no-store" },
  });

/**
 * Bundles the page and starts serving it (see the module comment). Starts tfjs (the cpu
 * backend unless one runs already: the server only decodes and encodes weights).
 */
export async function start(opts: Options = {}): Promise<Server> {
  const model = opts.model === undefined ? undefined : await modelFile(opts.model);
  const onError = opts.onError ?? ((line: string) => console.error(line));
  await Backend.initialize({ prefer: "cpu", log: false });
  opts.onBundling?.();
  const dir = await Deno.makeTempDir({ prefix: "qat-sr-serve-" });
  const t0 = performance.now();
  let app: string;
  try {
    app = await bundle(dir);
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  const bundleSeconds = (performance.now() - t0) / 1000;
  // One FP32 file per recipe model (the page asks again for each model it loads).
  const fp32 = new Map<string, Promise<Uint8Array>>();

  const handle = async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname;
    if (req.method === "GET" && (path === "/" || path === "/index.html")) {
      return reply(await Deno.readFile(`${WEB}index.html`), "html");
    }
    if (req.method === "GET" && path === "/app.js") return reply(await Deno.readFile(app), "js");
    if (req.method === "GET" && path === "/api/config") {
      const bytes = model ? (await Deno.stat(model)).size : null;
      return reply(JSON.stringify({ model: model?.split("/").pop() ?? null, bytes }), "json");
    }
    if (req.method === "GET" && path === "/model") {
      if (!model) return reply("the server was started without --model", "text", 404);
      return reply(await Deno.readFile(model), "bin");
    }
    if (req.method === "POST" && path === "/api/fp32") {
      const json = await req.json().catch(() => undefined);
      if (json === undefined) return reply("the body must be a recipe as JSON", "text", 400);
      const key = JSON.stringify((json as { model?: unknown }).model ?? json);
      let bytes = fp32.get(key);
      if (!bytes) {
        bytes = fp32Of(json);
        fp32.set(key, bytes);
        bytes.catch(() => fp32.delete(key));
      }
      try {
        return reply((await bytes) as Uint8Array<ArrayBuffer>, "bin");
      } catch (e) {
        return reply((e as Error).message, "text", 422);
      }
    }
    return reply(`no such page: ${req.method} ${path}`, "text", 404);
  };

  const handler = async (req: Request) => {
    try {
      return await handle(req);
    } catch (e) {
      const line = `${req.method} ${new URL(req.url).pathname}: ${(e as Error).message}`;
      onError(line);
      return reply(line, "text", 500);
    }
  };
  const asked = opts.port ?? DEFAULT_PORT;
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname: "127.0.0.1", port: asked, onListen: () => {}, handler });
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw new ServeError(`--port ${asked}: cannot listen on 127.0.0.1 (${(e as Error).message})`);
  }
  const port = server.addr.port;
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    ...(model ? { model } : {}),
    bundleSeconds,
    shutdown: async () => {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
