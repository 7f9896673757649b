/**
 * tfjs on the browser's WebGPU, with our kernels: the page's counterpart of lib/Backend.ts,
 * which is Deno's (it reads `Deno.env`, respawns processes and picks Vulkan or GL).
 *
 * As there, the device is requested by us with the adapter's full limits (the stock tfjs
 * factory caps `maxTextureDimension2D` at 8192 and keeps the default 128 MiB binding limit)
 * and handed to tfjs's `WebGPUBackend`; then lib/Kernels.ts installs our conv, fake-quant and
 * integer kernels tuned to the adapter. The Deno start-up self-test (lib/Conformance.ts) is not
 * run here: the page's results are checked against the Deno path by tests/e2e/page.test.ts.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import type * as Backend from "../Backend.ts";
import * as Kernels from "../Kernels.ts";
import { LIMITS } from "../internal/kernels/tuning.ts";

/** The adapter's name for people: `google swiftshader`, `nvidia ampere`, or its description. */
export function adapterName(info: GPUAdapterInfo): string {
  const parts = [info.vendor, info.architecture].filter((s) => s !== "");
  const name = parts.length > 0 ? parts.join(" ") : info.description || info.device;
  return name || "unknown adapter";
}

let started: Promise<Backend.Info> | undefined;

/**
 * Starts tfjs on WebGPU once per page and returns what runs. Rejects, with the reason, where
 * the browser has no WebGPU or no adapter (the page shows it).
 */
export function initialize(): Promise<Backend.Info> {
  started ??= (async () => {
    const gpu = (navigator as { gpu?: GPU }).gpu;
    if (!gpu) {
      throw new Error(
        "this browser has no WebGPU (navigator.gpu is absent; chromium needs a secure context " +
          "such as http://127.0.0.1 and, headless, --enable-unsafe-webgpu)",
      );
    }
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw new Error("navigator.gpu.requestAdapter() found no adapter");
    const info = adapter.info;
    const limits: Record<string, number> = {};
    for (const name of LIMITS) {
      const v = (adapter.limits as unknown as Record<string, number>)[name];
      if (typeof v === "number") limits[name] = v;
    }
    const device = await adapter.requestDevice({ requiredLimits: limits });
    const name = adapterName(info);
    const software = /swiftshader|llvmpipe|lavapipe|software/i.test(name) ||
      (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
    tf.removeBackend("webgpu");
    tf.registerBackend("webgpu", () => new WebGPUBackend(device, info), 3);
    if (!(await tf.setBackend("webgpu"))) {
      throw new Error("tfjs could not start its webgpu backend");
    }
    await tf.ready();
    const backend: Backend.Info = { name: "webgpu", adapter: name, software, limits };
    // "ours" given, not read from QAT_KERNELS: a page has no environment.
    Kernels.install(backend, "ours");
    return backend;
  })();
  started.catch(() => (started = undefined));
  return started;
}
