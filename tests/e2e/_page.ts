/**
 * Driving the page of `deno task serve` (lib/Serve.ts, lib/web/) in Debian's headless chromium
 * through puppeteer-core, for tests/e2e/page.test.ts and bench/page.ts: the default kind of
 * packed model to hand it, the browser's flags, and one call of the page's `window.qatsr` hook
 * with the pixels brought back.
 */
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import * as Image from "../../lib/Image.ts";
import * as Packed from "../../lib/Packed.ts";
import * as Pretrained from "../../lib/Pretrained.ts";
import * as Recipe from "../../lib/Recipe.ts";
import * as Tree from "../../lib/Tree.ts";
import * as Registry from "../../models/registry.ts";
import * as Deploy from "../_deploy.ts";
import type { HookResult } from "../../lib/web/app.ts";

/** The system chromium, if installed (also tests/Report.test.ts). */
export const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});

/**
 * Headless chromium with WebGPU. On a machine without a GPU it exposes SwiftShader's Vulkan
 * (`google swiftshader`); `--enable-unsafe-swiftshader` keeps that adapter allowed where
 * chromium would otherwise refuse software WebGPU.
 */
export const FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-unsafe-swiftshader",
  "--disable-gpu-sandbox",
  "--disable-dev-shm-usage",
];

/** Starts the browser; its profile lives in a temporary folder. */
export async function launch(): Promise<Browser> {
  return await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    userDataDir: await Deno.makeTempDir({ prefix: "page-chromium-" }),
    protocolTimeout: 600_000,
  });
}

/** Opens the page and waits for WebGPU to start; returns the adapter's name. */
export async function open(
  browser: Browser,
  url: string,
): Promise<{ page: Page; adapter: string }> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.setViewport({ width: 1400, height: 700 });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => "qatsr" in globalThis, { timeout: 60_000 }).catch(() => {
    throw new Error(`the page did not set window.qatsr: ${errors.join("; ") || "no error"}`);
  });
  const { adapter } = await page.evaluate(() =>
    (globalThis as unknown as { qatsr: { ready: Promise<{ adapter: string }> } }).qatsr.ready
  );
  return { page, adapter };
}

const encodeBase64 = (a: Uint8Array) => {
  let s = "";
  for (let i = 0; i < a.length; i += 0x8000) s += String.fromCharCode(...a.subarray(i, i + 0x8000));
  return btoa(s);
};
const decodeBase64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

/** {@link HookResult} with its pixel arrays as plain bytes. */
export type Pixels = Omit<HookResult, "quantized" | "fp32" | "bicubic"> & {
  readonly quantized: Uint8Array;
  readonly fp32?: Uint8Array;
  readonly bicubic: Uint8Array;
};

/** One `window.qatsr.upscale` call; bytes travel as base64 (the protocol carries JSON). */
export async function upscale(
  page: Page,
  image: Uint8Array,
  model: Uint8Array,
  opts: { warmup?: boolean } = {},
): Promise<Pixels> {
  const r = await page.evaluate(
    async (img: string, mdl: string, o: { warmup?: boolean }) => {
      const dec = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
      const enc = (a: Uint8ClampedArray) => {
        let s = "";
        for (let i = 0; i < a.length; i += 0x8000) {
          s += String.fromCharCode(...a.subarray(i, i + 0x8000));
        }
        return btoa(s);
      };
      const hook = (globalThis as unknown as {
        qatsr: { upscale(i: Uint8Array, m: Uint8Array, o: unknown): Promise<HookResult> };
      }).qatsr;
      const r = await hook.upscale(dec(img), dec(mdl), o);
      return {
        ...r,
        quantized: enc(r.quantized),
        bicubic: enc(r.bicubic),
        fp32: r.fp32 ? enc(r.fp32) : undefined,
      };
    },
    encodeBase64(image),
    encodeBase64(model),
    opts,
  );
  return {
    ...r,
    quantized: decodeBase64(r.quantized),
    bicubic: decodeBase64(r.bicubic),
    fp32: r.fp32 === undefined ? undefined : decodeBase64(r.fp32),
  };
}

/**
 * The `side`² window of a photograph with the most fine detail (largest mean absolute
 * difference between neighbouring pixels, on a 16-pixel grid), so that the upscales differ
 * visibly and agreeing means something: a flat patch of sky would agree under any model.
 */
export function busiestCrop(img: Image.Image, side: number): Image.Image {
  const g = (x: number, y: number) => img.data[(y * img.width + x) * 3 + 1];
  let best = { x: 0, y: 0, detail: -1 };
  for (let y = 0; y + side <= img.height; y += 16) {
    for (let x = 0; x + side <= img.width; x += 16) {
      let detail = 0;
      for (let r = y; r < y + side - 1; r++) {
        for (let c = x; c < x + side - 1; c++) {
          detail += Math.abs(g(c + 1, r) - g(c, r)) + Math.abs(g(c, r + 1) - g(c, r));
        }
      }
      if (detail > best.detail) best = { x, y, detail };
    }
  }
  return Image.crop(img, best.x, best.y, side, side);
}

/**
 * The default job's network at the default kind of low-bit deployment: pretrained esrgan-slim
 * ×4 quantized W2A2 with ODM's placement (recipes/default.ts at 2 bits), calibrated on LR crops
 * of the embedded training photographs (tests/_deploy.ts), packed (lib/Packed.ts).
 */
export async function defaultPacked(): Promise<Uint8Array> {
  const base = (await import("../../recipes/default.ts")).default as Recipe.Recipe;
  const recipe: Recipe.Recipe = { ...base, quant: { ...base.quant, wbits: 2, abits: 2 } };
  const loaded = await Pretrained.load("esrgan-slim", 4);
  const model = Registry.quantize(recipe, Registry.architecture(recipe.model));
  const params = Deploy.calibrate(model, loaded.params, await Deploy.calibrationImages(4, 32));
  try {
    return await Packed.encode({
      model,
      params,
      recipe: Recipe.toJSON(recipe),
      arch: recipe.model.arch,
      scale: recipe.model.scale,
      options: (recipe.model.options ?? {}) as Record<string, number>,
    });
  } finally {
    Tree.dispose(params);
    Tree.dispose(loaded.params);
  }
}
