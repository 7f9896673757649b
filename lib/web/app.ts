/**
 * The page of `deno task serve` (lib/web/index.html): pick a packed model (or take the one the
 * server was started with) and an image, and see it upscaled by bicubic, by the FP32 network
 * and by the quantized model on the integer kernels, each timed, on this browser's WebGPU.
 *
 * Bundled for the browser by lib/Serve.ts (`deno bundle --platform browser`). Besides the
 * controls it exposes `window.qatsr` ({@link Hook}) so that a test or a benchmark can drive the
 * page with bytes instead of file pickers (tests/e2e/page.test.ts, bench/page.ts); every call,
 * from the controls or the hook, also draws its result on the page.
 *
 * @module
 */
import type * as Packed from "../Packed.ts";
import * as Recipe from "../Recipe.ts";
import * as Backend from "./backend.ts";
import * as Compare from "./compare.ts";

/** What {@link Hook.upscale} returns: the RGBA pixels (`ImageData` order) and the times. */
export interface HookResult {
  /** The output (HR) size. */
  readonly width: number;
  readonly height: number;
  readonly quantized: Uint8ClampedArray;
  /** Absent where the server has no FP32 network for the model (`fp32Error` says why). */
  readonly fp32?: Uint8ClampedArray;
  readonly fp32Error?: string;
  readonly bicubic: Uint8ClampedArray;
  /** Milliseconds: each upscale, and loading the model (0 when it was loaded before). */
  readonly timings: {
    readonly bicubic: number;
    readonly fp32?: number;
    readonly quantized: number;
    readonly load: number;
  };
  readonly adapter: string;
  readonly engine: string;
  readonly modelBytes: number;
}

/** The page's programmatic interface, on `window.qatsr`. */
export interface Hook {
  /** Resolves when WebGPU runs (with the adapter's name), rejects with why it does not. */
  readonly ready: Promise<{ readonly adapter: string }>;
  /**
   * Upscales PNG or JPEG bytes with a packed model's bytes (default: the model the server was
   * started with, or the one picked on the page).
   */
  upscale(
    image: Uint8Array,
    model?: Uint8Array,
    opts?: Compare.UpscaleOptions,
  ): Promise<HookResult>;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function status(state: "loading" | "running" | "ready" | "done" | "error", text: string): void {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function draw(id: string, p: { width: number; height: number; rgba: Uint8ClampedArray }): void {
  const c = $<HTMLCanvasElement>(id);
  c.width = p.width;
  c.height = p.height;
  const data = new Uint8ClampedArray(p.rgba); // ImageData needs its own ArrayBuffer
  c.getContext("2d")!.putImageData(new ImageData(data, p.width, p.height), 0, 0);
}

const ms = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(0)} ms`);

/** The model's FP32 network, as the server builds it from the packed file's recipe. */
async function fp32Of(packed: Packed.Loaded): Promise<Uint8Array> {
  const r = await fetch("/api/fp32", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(Recipe.toJSON(packed.recipe)),
  });
  if (!r.ok) throw new Error(`no FP32 network: ${await r.text()}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function digest(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The loaded model, keyed by its bytes' hash; loading another frees it. */
let current: { key: string; models: Compare.Models } | undefined;
/** The bytes the page uses when none are given: the server's model or the one picked. */
let defaultModel: { bytes: Uint8Array; name: string } | undefined;

async function modelsOf(
  bytes: Uint8Array,
  name: string,
): Promise<{ m: Compare.Models; loadMs: number }> {
  const key = await digest(bytes);
  if (current?.key === key) return { m: current.models, loadMs: 0 };
  if (current) Compare.dispose(current.models);
  current = undefined;
  status("loading", `loading ${name} (decode, FP32 network from the server, shader warm-up)…`);
  const models = await Compare.load(bytes, name, fp32Of);
  current = { key, models };
  const r = models.packed.recipe;
  $("model-info").textContent = `${name}: ${r.model.arch} ×${models.packed.scale}, ` +
    `W${r.quant.wbits}A${r.quant.abits}, ${models.bytes.toLocaleString("en")} bytes`;
  $("engine").textContent = `(${Compare.describeEngine(models)})`;
  return { m: models, loadMs: models.loadMs };
}

/** Calls run one at a time: the GPU and the loaded model are shared. */
let queue: Promise<unknown> = Promise.resolve();
const serial = <T>(f: () => Promise<T>): Promise<T> => {
  const next = queue.then(f, f);
  queue = next.catch(() => {});
  return next;
};

const ready = Backend.initialize().then((info) => {
  $("adapter").textContent = info.adapter;
  return { adapter: info.adapter };
});

function upscale(
  image: Uint8Array,
  model?: Uint8Array,
  opts: Compare.UpscaleOptions = {},
): Promise<HookResult> {
  return serial(async () => {
    try {
      const { adapter } = await ready;
      const given = model ? { bytes: model, name: "model.qsr.safetensors" } : defaultModel;
      if (!given) {
        throw new Error("no packed model: pick one (the server was started without --model)");
      }
      const { m, loadMs } = await modelsOf(given.bytes, given.name);
      status("running", "upscaling: bicubic, FP32, quantized…");
      const r = await Compare.upscale(m, image, "image", opts);
      draw("input", r.input);
      draw("bicubic", r.bicubic);
      $("bicubic-info").textContent = ms(r.bicubic.ms);
      draw("quantized", r.quantized);
      $("quantized-info").textContent = `${ms(r.quantized.ms)}, ${
        r.modelBytes.toLocaleString("en")
      } bytes`;
      $("input-info").textContent = `${r.input.width}×${r.input.height}`;
      if ("error" in r.fp32) $("fp32-info").textContent = r.fp32.error;
      else {
        draw("fp32", r.fp32);
        $("fp32-info").textContent = ms(r.fp32.ms);
      }
      status(
        "done",
        `${r.input.width}×${r.input.height} → ${r.quantized.width}×${r.quantized.height}: ` +
          `bicubic ${ms(r.bicubic.ms)}, ` +
          ("error" in r.fp32 ? "FP32 —" : `FP32 ${ms(r.fp32.ms)}`) +
          `, quantized ${ms(r.quantized.ms)}`,
      );
      return {
        width: r.quantized.width,
        height: r.quantized.height,
        quantized: r.quantized.rgba,
        bicubic: r.bicubic.rgba,
        ...("error" in r.fp32 ? { fp32Error: r.fp32.error } : { fp32: r.fp32.rgba }),
        timings: {
          bicubic: r.bicubic.ms,
          quantized: r.quantized.ms,
          load: loadMs,
          ...("error" in r.fp32 ? {} : { fp32: r.fp32.ms }),
        },
        adapter,
        engine: r.engine,
        modelBytes: r.modelBytes,
      };
    } catch (e) {
      status("error", (e as Error).message);
      throw e;
    }
  });
}

const fileBytes = async (input: HTMLInputElement) => {
  const f = input.files?.[0];
  return f ? { bytes: new Uint8Array(await f.arrayBuffer()), name: f.name } : undefined;
};

/** The page's start: WebGPU, then the server's model if it has one. */
async function start(): Promise<void> {
  try {
    await ready;
  } catch (e) {
    $("adapter").textContent = "none";
    status("error", (e as Error).message);
    return;
  }
  const config = await (await fetch("/api/config")).json() as { model: string | null };
  if (config.model) {
    const r = await fetch("/model");
    if (r.ok) {
      defaultModel = { bytes: new Uint8Array(await r.arrayBuffer()), name: config.model };
      try {
        await serial(() => modelsOf(defaultModel!.bytes, defaultModel!.name));
      } catch (e) {
        status("error", (e as Error).message);
        return;
      }
    }
  }
  $<HTMLButtonElement>("run").disabled = false;
  status(
    "ready",
    defaultModel ? "ready: pick an image" : "ready: pick a packed model and an image",
  );
}

$<HTMLInputElement>("model-file").addEventListener("change", async (ev) => {
  const f = await fileBytes(ev.target as HTMLInputElement);
  if (!f) return;
  defaultModel = f;
  serial(() => modelsOf(f.bytes, f.name)).then(
    () => status("ready", `${f.name} loaded: pick an image`),
    (e) => status("error", (e as Error).message),
  );
});

$<HTMLButtonElement>("run").addEventListener("click", async () => {
  const img = await fileBytes($<HTMLInputElement>("image-file"));
  if (!img) return status("error", "pick an image first");
  await upscale(img.bytes, undefined, { warmup: $<HTMLInputElement>("warmup").checked }).catch(
    () => {}, // shown in the status line
  );
});

const hook: Hook = { ready, upscale };
(globalThis as unknown as { qatsr: Hook }).qatsr = hook;
// An unhandled rejection here would only repeat what the status line says.
ready.catch(() => {});
start();
