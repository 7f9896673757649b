/**
 * The compute backend: tfjs on WebGPU under Deno, or tfjs `cpu` where no adapter exists.
 *
 * WebGPU is preferred through Vulkan (a real GPU's driver or Mesa's lavapipe, which is ~1.6×
 * faster than GL llvmpipe on the project's CPU machines). We request the device ourselves,
 * with the adapter's full limits, instead of the stock tfjs factory: the stock one caps
 * `maxTextureDimension2D` at 8192 and reads `adapter.info` after `requestDevice`
 * (denoland/deno#28135). With no adapter at all we fall back to `cpu` with one warning line.
 *
 * Choose a backend with the option `prefer` or the environment variable `QAT_BACKEND`
 * (`webgpu` | `cpu`); `DENO_WEBGPU_BACKEND` (`vulkan` | `gl`) still picks the WebGPU API.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import { Context, Data, Effect, Layer } from "effect";
import * as Kernels from "./Kernels.ts";

/** The backends the project runs on. */
export type Name = "webgpu" | "cpu";

/** What was chosen, for the one start-up line and for run summaries. */
export interface Info {
  readonly name: Name;
  /** Human description of the adapter, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) via vulkan`. */
  readonly adapter: string;
  /** True when the adapter is a software rasteriser (lavapipe/llvmpipe/SwiftShader). */
  readonly software: boolean;
  /** The device limits our kernels tune themselves to (absent on `cpu`). */
  readonly limits?: Readonly<Record<string, number>>;
}

/** Options for {@link initialize}. */
export interface Options {
  /** Force a backend; otherwise `QAT_BACKEND`, otherwise WebGPU with cpu fallback. */
  readonly prefer?: Name;
  /** Print the start-up line (default true). */
  readonly log?: boolean;
  /** Conv/matmul kernels on webgpu: ours or tfjs stock (default `QAT_KERNELS`, else ours). */
  readonly kernels?: Kernels.Which;
}

/** A backend that was asked for explicitly could not start. */
export class BackendUnavailable extends Data.TaggedError("BackendUnavailable")<{
  readonly requested: Name;
  readonly reason: string;
}> {
  override get message(): string {
    return `backend "${this.requested}" is unavailable: ${this.reason}`;
  }
}

const VULKAN_ICD_DIRS = [
  "/usr/share/vulkan/icd.d",
  "/etc/vulkan/icd.d",
  "/usr/local/share/vulkan/icd.d",
];

/** Prefer Vulkan when some Vulkan driver is installed and the user did not choose. */
function preferVulkan(): string {
  const chosen = Deno.env.get("DENO_WEBGPU_BACKEND");
  if (chosen) return chosen;
  const hasIcd = VULKAN_ICD_DIRS.some((dir) => {
    try {
      return [...Deno.readDirSync(dir)].some((e) => e.name.endsWith(".json"));
    } catch {
      return false;
    }
  });
  if (hasIcd || Deno.env.get("VK_DRIVER_FILES") || Deno.env.get("VK_ICD_FILENAMES")) {
    Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
    return "vulkan";
  }
  return "default";
}

const LIMITS = [
  "maxTextureDimension2D",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeWorkgroupsPerDimension",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeInvocationsPerWorkgroup",
  "maxStorageBuffersPerShaderStage",
  "maxStorageTexturesPerShaderStage",
] as const;

async function startWebGPU(): Promise<Info | string> {
  if (typeof navigator === "undefined" || !("gpu" in navigator)) return "navigator.gpu is absent";
  const api = preferVulkan();
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return `requestAdapter failed: ${(e as Error).message}`;
  }
  if (!adapter) return "no WebGPU adapter found";
  // NOTE: read the adapter info before requestDevice (denoland/deno#28135).
  const info = adapter.info;
  const description = info.description || info.device || info.vendor || "unknown adapter";
  const limits: Record<string, number> = {};
  for (const name of LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number>)[name];
    if (typeof v === "number") limits[name] = v;
  }
  const device = await adapter.requestDevice({ requiredLimits: limits });
  const software = /llvmpipe|lavapipe|swiftshader|software/i.test(description) ||
    (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", () => new WebGPUBackend(device, info), 3);
  if (!(await tf.setBackend("webgpu"))) return "tfjs could not start its webgpu backend";
  await tf.ready();
  return {
    name: "webgpu",
    adapter: `${description}${api === "default" ? "" : ` via ${api}`}`,
    software,
    limits,
  };
}

async function startCpu(): Promise<Info> {
  await tf.setBackend("cpu");
  await tf.ready();
  return { name: "cpu", adapter: "tfjs cpu (JavaScript)", software: true };
}

/** Points XDG_RUNTIME_DIR at a private 0700 folder when it is unset or unusable. */
function ensureRuntimeDir(): void {
  const current = Deno.env.get("XDG_RUNTIME_DIR");
  const usable = (dir: string) => {
    try {
      const st = Deno.statSync(dir);
      return st.isDirectory && st.mode !== null && (st.mode & 0o077) === 0 && st.uid === Deno.uid();
    } catch {
      return false;
    }
  };
  if (current && usable(current)) return;
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/qat-sr-runtime-${Deno.uid() ?? 0}`;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.chmodSync(dir, 0o700);
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // Leave it: the warning is harmless.
  }
}

let started: Promise<Info> | undefined;

function requested(options: Options): Name | undefined {
  const env = Deno.env.get("QAT_BACKEND");
  const want = options.prefer ?? (env === "webgpu" || env === "cpu" ? env : undefined);
  if (env && env !== "webgpu" && env !== "cpu") {
    throw new BackendUnavailable({
      requested: env as Name,
      reason: "QAT_BACKEND must be webgpu or cpu",
    });
  }
  return want;
}

/**
 * Starts tfjs on the best backend once per process and returns what was chosen. Later calls
 * return the same result. Rejects with {@link BackendUnavailable} only when a backend was
 * asked for explicitly and cannot start.
 */
export function initialize(options: Options = {}): Promise<Info> {
  if (started) return started;
  started = (async () => {
    // Mesa warns "XDG_RUNTIME_DIR is invalid or not set" unless it names a private (0700)
    // folder of ours; nothing here needs one, so make one rather than print the warning.
    ensureRuntimeDir();
    tf.env().set("IS_NODE", false);
    const want = requested(options);
    let info: Info;
    if (want === "cpu") info = await startCpu();
    else {
      const r = await startWebGPU();
      if (typeof r === "string") {
        if (want === "webgpu") throw new BackendUnavailable({ requested: "webgpu", reason: r });
        console.warn(
          `warning: WebGPU unavailable (${r}); falling back to the slow tfjs cpu backend`,
        );
        info = await startCpu();
      } else info = r;
    }
    Kernels.install(info, options.kernels);
    if (options.log !== false) console.log(`backend: ${info.name} (${info.adapter})`);
    return info;
  })();
  started.catch(() => (started = undefined));
  return started;
}

/** The backend as an Effect service: training programs read which backend they run on. */
export class Backend extends Context.Service<Backend, Info>()("qat/Backend") {}

/** A layer that starts the backend (once per process) and provides {@link Backend}. */
export const layer = (options: Options = {}): Layer.Layer<Backend, BackendUnavailable> =>
  Layer.effect(Backend)(
    Effect.tryPromise({
      try: () => initialize(options),
      catch: (e) =>
        e instanceof BackendUnavailable
          ? e
          : new BackendUnavailable({ requested: options.prefer ?? "webgpu", reason: String(e) }),
    }),
  );
