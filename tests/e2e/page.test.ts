/**
 * The page of `deno task serve` in a real browser: the server (lib/Serve.ts) runs in this
 * process on a free port, Debian's chromium opens its page headless (WebGPU on SwiftShader
 * where there is no GPU), and the page's hook upscales a crop of a real photograph with the
 * default kind of packed model (pretrained esrgan-slim ×4, W2A2, calibrated; tests/e2e/_page.ts).
 * The quantized pixels must be within 1 level of `deno task upscale --engine int` on the same
 * image and packed file (run here, in-process, on Deno's WebGPU), the bicubic ones equal to
 * lib/Resize.ts, and the FP32 ones within 1 level of the pretrained network (straight from its
 * npm package) under Deno. The page's screenshot, kept at runs/page-test/screenshot.png, must
 * show those three results where the page drew them. Without chromium the browser test is
 * skipped, saying so. Bad flags and files of `deno task serve` are refused, naming them.
 */
import { Effect } from "effect";
import { decode } from "fast-png";
import { assert, assertEquals, assertGreater, assertLess, assertStringIncludes } from "@std/assert";
import * as Image from "../../lib/Image.ts";
import * as Kernels from "../../lib/Kernels.ts";
import * as Packed from "../../lib/Packed.ts";
import * as Pretrained from "../../lib/Pretrained.ts";
import * as Recipe from "../../lib/Recipe.ts";
import * as Resize from "../../lib/Resize.ts";
import * as Serve from "../../lib/Serve.ts";
import * as Tree from "../../lib/Tree.ts";
import * as Upscale from "../../lib/Upscale.ts";
import * as ServeCli from "../../lib/cli/serve.ts";
import * as UpscaleCli from "../../lib/cli/upscale.ts";
import * as Deploy from "../_deploy.ts";
import { backend } from "../_setup.ts";
import * as PageDriver from "./_page.ts";

Kernels.install(backend);

const ROOT = new URL("../../", import.meta.url).pathname;
const SHOT_DIR = `${ROOT}runs/page-test`;
/** LR side of the crop: 48² → 192² at ×4, seconds on SwiftShader. */
const SIDE = 48;

if (!PageDriver.CHROMIUM) {
  console.log("page.test.ts: chromium is not installed (apt-get install chromium); skipped");
}

/** Largest |a − b| over RGB, and how many values differ; `a` has `ca` values a pixel, `b` 3. */
function maxDiff(a: Uint8Array, b: Uint8Array, ca = 4): { max: number; differ: number } {
  assertEquals(a.length / ca, b.length / 3, "pixel counts differ");
  let max = 0, differ = 0;
  for (let p = 0; p < b.length / 3; p++) {
    for (let c = 0; c < 3; c++) {
      const d = Math.abs(a[ca * p + c] - b[3 * p + c]);
      if (d > 0) differ++;
      max = Math.max(max, d);
    }
  }
  return { max, differ };
}

/** The message a call fails with. */
async function failure(p: () => Promise<unknown>): Promise<string> {
  try {
    await p();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected a failure");
}

Deno.test("deno task serve refuses bad flags and files, naming them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "serve-flags-" });
  try {
    const run = (argv: string[]) => failure(() => Effect.runPromise(ServeCli.program(argv)));
    assertStringIncludes(await run(["--port", "http"]), "--port");
    assertStringIncludes(await run(["--port", "70000"]), "--port");
    assertStringIncludes(await run(["--bogus", "1"]), "unknown option --bogus");
    assertStringIncludes(await run(["--model", `${dir}/absent.qsr.safetensors`]), "--model");
    await Deno.writeTextFile(`${dir}/not.qsr.safetensors`, "not a model");
    assertStringIncludes(
      await run(["--model", `${dir}/not.qsr.safetensors`]),
      `--model ${dir}/not.qsr.safetensors: not a qat-sr-packed file`,
    );
    // A folder means its model.qsr.safetensors, as deno task export writes it.
    assertStringIncludes(await run(["--model", dir]), `${dir}/model.qsr.safetensors`);
    // A model trained from random weights has no FP32 network to show next to it.
    const edsr = Recipe.toJSON(Recipe.parse(Deploy.small.edsr));
    assertStringIncludes(await failure(() => Serve.fp32Of(edsr)), "starts from random weights");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "the served page upscales on the browser's WebGPU to deno task upscale's pixels",
  ignore: !PageDriver.CHROMIUM,
  // puppeteer keeps sockets and timers of its own past browser.close().
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const t0 = performance.now();
    const dir = await Deno.makeTempDir({ prefix: "page-test-" });
    const packedFile = `${dir}/model${Packed.EXTENSION}`;
    const packed = await PageDriver.defaultPacked();
    await Deno.writeFile(packedFile, packed);
    const photo = await Image.read(`${ROOT}data/eval/astronaut.png`);
    const lr = PageDriver.busiestCrop(photo, SIDE);
    const lrPng = Image.encodePng(lr);
    await Deno.writeFile(`${dir}/in.png`, lrPng);

    // The reference: the task itself, on this process's WebGPU.
    const report = await Effect.runPromise(
      UpscaleCli.program([
        `${dir}/in.png`,
        "--model",
        packedFile,
        "--out",
        `${dir}/int.png`,
        "--engine",
        "int",
      ]),
    );
    assertEquals(UpscaleCli.exitCode(report), 0);
    const want = await Image.read(`${dir}/int.png`);
    // The FP32 network the packed model came from, straight from its npm package.
    const pretrained = await Pretrained.load("esrgan-slim", 4);
    const wantFp32 = await Effect.runPromise(Upscale.upscale(pretrained, lr));
    Tree.dispose(pretrained.params);
    const seconds = (performance.now() - t0) / 1000;
    console.log(`model and references (Deno, ${backend.adapter}) in ${seconds.toFixed(1)} s`);

    const server = await Serve.start({ port: 0, model: packedFile });
    const browser = await PageDriver.launch();
    try {
      const { page, adapter } = await PageDriver.open(browser, server.url);
      console.log(`page ${server.url}: adapter ${adapter}`);
      assert(adapter.length > 0 && adapter !== "unknown adapter", adapter);
      const r = await PageDriver.upscale(page, lrPng, packed);
      console.log(
        `browser: ${r.engine}; bicubic ${r.timings.bicubic.toFixed(0)} ms, FP32 ` +
          `${r.timings.fp32?.toFixed(0)} ms, quantized ${r.timings.quantized.toFixed(0)} ms ` +
          "(first runs on this image, after the load's 16² warm-up)",
      );
      assertEquals([r.width, r.height], [4 * SIDE, 4 * SIDE]);
      assertEquals(r.modelBytes, packed.length);
      assert(/: (\d+) of \1 quantized layers on the integer kernels/.test(r.engine), r.engine);
      assertGreater(r.timings.quantized, 0);

      const q = maxDiff(r.quantized, want.data);
      console.log(
        `quantized vs deno task upscale --engine int: max ${q.max} level(s), ` +
          `${q.differ} of ${want.data.length} values differ`,
      );
      assertLess(q.max, 2, `quantized pixels ${q.max} levels from deno task upscale`);
      assertEquals(maxDiff(r.bicubic, Resize.bicubicUpscale(lr, 4).data).max, 0, "bicubic");
      assert(r.fp32, `no FP32 result: ${r.fp32Error}`);
      const f = maxDiff(r.fp32, wantFp32.data);
      console.log(`FP32 vs the pretrained network under Deno: max ${f.max} level(s)`);
      assertLess(f.max, 2, `FP32 pixels ${f.max} levels from Deno's`);
      // W2A2 is not FP32: equal outputs would mean the page ran one network twice.
      assertGreater(maxDiff(r.quantized, wantFp32.data).differ, want.data.length / 2);

      assertEquals(await page.$eval("#status", (e) => (e as HTMLElement).dataset.state), "done");
      await Deno.mkdir(SHOT_DIR, { recursive: true });
      const shot = `${SHOT_DIR}/screenshot.png`;
      await page.screenshot({ path: shot, fullPage: true });
      const png = decode(await Deno.readFile(shot));
      console.log(`screenshot ${shot}: ${png.width}×${png.height}`);
      // The screenshot shows each result where the page drew it, pixel for pixel.
      const shown = [["quantized", want.data], ["fp32", wantFp32.data], [
        "bicubic",
        Resize.bicubicUpscale(lr, 4).data,
      ]] as const;
      for (const [id, expected] of shown) {
        const box = await page.$eval(`#${id}`, (e) => {
          const b = e.getBoundingClientRect();
          return { x: Math.round(b.x), y: Math.round(b.y), w: b.width, h: b.height };
        });
        assertEquals([box.w, box.h], [4 * SIDE, 4 * SIDE], `#${id} is drawn at its size`);
        const region = new Uint8Array(box.w * box.h * png.channels);
        for (let y = 0; y < box.h; y++) {
          const from = ((box.y + y) * png.width + box.x) * png.channels;
          region.set(
            png.data.subarray(from, from + box.w * png.channels),
            y * box.w * png.channels,
          );
        }
        const d = maxDiff(region, expected, png.channels);
        console.log(`screenshot #${id}: max ${d.max} level(s) from the expected pixels`);
        assertLess(d.max, 3, `the screenshot's #${id} is not the result`);
      }
    } finally {
      await browser.close();
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
    console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  },
});
