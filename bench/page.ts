/**
 * `deno run -A bench/page.ts [--size 256] [--image FILE]`: the default kind of packed model
 * (pretrained esrgan-slim ×4, W2A2; tests/e2e/_page.ts) upscaling a `size`² crop of a
 * photograph in headless chromium, through the page of `deno task serve` (lib/Serve.ts), on
 * the browser's WebGPU (SwiftShader without a GPU): the quantized model on the integer
 * kernels vs the FP32 network it came from. Each runs once untimed on the same image first (the
 * shaders compile then), then once timed; prints both times, their ratio and the adapter.
 */
import * as z from "zod";
import * as Backend from "../lib/Backend.ts";
import * as Image from "../lib/Image.ts";
import * as Serve from "../lib/Serve.ts";
import * as Args from "../lib/cli/Args.ts";
import * as PageDriver from "../tests/e2e/_page.ts";

const ROOT = new URL("../", import.meta.url).pathname;

const Options = z.object({
  size: z.coerce.number().int().min(16).max(1024).default(256),
  image: z.string().min(1).default(`${ROOT}data/eval/astronaut.png`),
}).strict();

const opts = Args.parse(Options, Deno.args);
if (!PageDriver.CHROMIUM) {
  console.error("error: no chromium (apt-get install chromium)");
  Deno.exit(1);
}
await Backend.initialize(); // Deno's WebGPU calibrates the model before it is packed
const photo = await Image.read(opts.image).catch((e) => {
  console.error(`error: --image ${opts.image}: ${(e as Error).message}`);
  Deno.exit(1);
});
if (photo.width < opts.size || photo.height < opts.size) {
  console.error(`error: --size ${opts.size}: ${opts.image} is ${photo.width}×${photo.height}`);
  Deno.exit(1);
}
const lr = PageDriver.busiestCrop(photo, opts.size);
const packed = await PageDriver.defaultPacked();
const dir = await Deno.makeTempDir({ prefix: "bench-page-" });
await Deno.writeFile(`${dir}/model.qsr.safetensors`, packed);
const server = await Serve.start({ port: 0, model: `${dir}/model.qsr.safetensors` });
const browser = await PageDriver.launch();
try {
  const { page, adapter } = await PageDriver.open(browser, server.url);
  const t0 = performance.now();
  const r = await PageDriver.upscale(page, Image.encodePng(lr), packed, { warmup: true });
  const wall = (performance.now() - t0) / 1000;
  const q = r.timings.quantized, f = r.timings.fp32;
  console.log(`adapter: ${adapter} (headless chromium, ${PageDriver.FLAGS.join(" ")})`);
  console.log(`model: esrgan-slim ×4 W2A2, packed ${r.modelBytes} bytes; ${r.engine}`);
  console.log(`image: ${opts.size}×${opts.size} crop of ${opts.image} → ${r.width}×${r.height}`);
  console.log(`bicubic   ${r.timings.bicubic.toFixed(0)} ms`);
  console.log(`FP32      ${f === undefined ? `— (${r.fp32Error})` : `${f.toFixed(0)} ms`}`);
  console.log(`quantized ${q.toFixed(0)} ms (integer engine)`);
  if (f !== undefined) console.log(`FP32 / quantized: ×${(f / q).toFixed(2)}`);
  console.log(`(the whole call, warm-up runs included: ${wall.toFixed(1)} s)`);
} finally {
  await browser.close();
  await server.shutdown();
  await Deno.remove(dir, { recursive: true });
}
