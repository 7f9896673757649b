/**
 * The compute backend: tfjs on WebGPU under Deno, or tfjs `cpu` where no adapter exists or
 * where the adapter fails its self-test.
 *
 * WebGPU is preferred through Vulkan (a real GPU's driver or Mesa's lavapipe, which is ~1.6×
 * faster than GL llvmpipe on the project's CPU machines), then through GL, then tfjs `cpu`. We
 * request the device ourselves, with the adapter's full limits, instead of the stock tfjs
 * factory: the stock one caps `maxTextureDimension2D` at 8192 and reads `adapter.info` after
 * `requestDevice` (denoland/deno#28135).
 *
 * Before an adapter is used it passes the self-test of `Conformance.ts` (a sum of many tensors,
 * a conv and both gradients, the fused fake-quant, the two-output tape, against tfjs `cpu`). An
 * adapter that fails is not used: one warning line names the failed check and the next choice
 * is taken. NOTE: Deno fixes the WebGPU API (Vulkan or GL) at the first adapter request of a
 * process (measured: a second `requestAdapter` under another `DENO_WEBGPU_BACKEND` returns
 * null), so "Vulkan failed → GL" needs a new process: with `respawn` (the CLI tasks set it) the
 * command runs again under GL, otherwise the fallback is `cpu`.
 *
 * Choose a backend with the option `prefer` or the environment variable `QAT_BACKEND`
 * (`webgpu` | `cpu`); `DENO_WEBGPU_BACKEND` (`vulkan` | `gl`) picks the WebGPU API. A backend
 * or API chosen that way that fails its self-test is an error naming the check.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import { Context, Data, Effect, Layer } from "effect";
import * as Conformance from "./Conformance.ts";
import * as Kernels from "./Kernels.ts";
import * as Native from "./internal/kernels/native.ts";
import { gpuOf } from "./internal/kernels/register.ts";
import { LIMITS } from "./internal/kernels/tuning.ts";

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
  /** Seconds the start-up self-test took (absent when it did not run: `cpu`). */
  readonly selfTestSeconds?: number;
  /** Why a better backend was not used (the warning printed at start), if one was refused. */
  readonly fallback?: string;
}

/** Options for {@link initialize}. */
export interface Options {
  /** Force a backend; otherwise `QAT_BACKEND`, otherwise WebGPU with cpu fallback. */
  readonly prefer?: Name;
  /** Print the start-up line (default true). */
  readonly log?: boolean;
  /** Conv/matmul kernels on webgpu: ours or tfjs stock (default `QAT_KERNELS`, else ours). */
  readonly kernels?: Kernels.Which;
  /**
   * When a Vulkan adapter chosen automatically fails its self-test, run this command again in a
   * new process under GL (`Deno.mainModule` with the same arguments) and exit with its code.
   * For CLI entry points only; the default falls back to `cpu` in this process.
   */
  readonly respawn?: boolean;
  /**
   * Checks to fail on purpose (tests of the fallback). Default: `QAT_SELFTEST_BREAK`, a comma
   * list of words of check names or `all`, each optionally prefixed by the API, `vulkan:conv2d`.
   */
  readonly breakChecks?: ReadonlyArray<string>;
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

/** Set in a process this module started again under GL: the reason Vulkan was refused. */
const RESPAWNED = "QAT_WEBGPU_FALLBACK";

/** Whether the user chose the WebGPU API (and so must get it or an error). */
function apiChosen(): boolean {
  return Deno.env.get("DENO_WEBGPU_BACKEND") !== undefined && !Deno.env.get(RESPAWNED);
}

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

async function startWebGPU(): Promise<(Info & { readonly api: string }) | string> {
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
    api,
  };
}

/**
 * What the cpu backend costs, measured on the project's 2-core machines (default job, one
 * training step of the pretrained esrgan-slim ×4 W4A4 ODM at batch 4 × 32²): 219 s on tfjs cpu
 * against 0.9 s on WebGPU lavapipe.
 */
export const CPU_SLOWDOWN =
  "the tfjs cpu backend trains ~240× slower than WebGPU on lavapipe (apt-get install mesa-vulkan-drivers)";

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

/** The checks to break on purpose for this API (see {@link Options.breakChecks}). */
function broken(options: Options, api: string): string[] {
  const all = options.breakChecks ?? Conformance.brokenFromEnv();
  return all.flatMap((b) => {
    const m = /^(vulkan|gl|default|webgpu):(.*)$/.exec(b);
    if (!m) return [b];
    return m[1] === api || m[1] === "webgpu" ? [m[2]] : [];
  });
}

/** Runs this command again with `DENO_WEBGPU_BACKEND=gl` and exits with its exit code. */
async function respawnUnderGl(reason: string): Promise<never> {
  const config = new URL("../deno.json", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", config, Deno.mainModule, ...Deno.args],
    env: { DENO_WEBGPU_BACKEND: "gl", [RESPAWNED]: reason },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  // The child gets the terminal's signals itself; forward those sent to this process alone.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => child.kill(sig));
  }
  const status = await child.status;
  Deno.exit(status.code);
}

async function start(options: Options): Promise<Info> {
  const want = requested(options);
  if (want === "cpu") {
    const info = await startCpu();
    Kernels.install(info, options.kernels);
    // A program that asks for cpu itself (counting, not computing) needs no warning.
    if (!options.prefer) console.warn(`warning: QAT_BACKEND=cpu: ${CPU_SLOWDOWN}`);
    return info;
  }
  const forced = want === "webgpu" || apiChosen(); // before startWebGPU sets the API itself
  const r = await startWebGPU();
  const previous = Deno.env.get(RESPAWNED);
  const fallBack = async (reason: string): Promise<Info> => {
    const cpu = { ...(await startCpu()), fallback: reason };
    Kernels.install(cpu, options.kernels);
    console.warn(`warning: ${reason}; falling back to the tfjs cpu backend (~240× slower)`);
    return cpu;
  };
  if (typeof r === "string") {
    if (forced) throw new BackendUnavailable({ requested: "webgpu", reason: r });
    return await fallBack(
      previous ? `${previous}, and WebGPU via GL: ${r}` : `WebGPU unavailable (${r})`,
    );
  }
  const { api, ...webgpu } = r;
  await Native.enable(); // bind groups' native memory is freed only by a JS collection
  Kernels.install(webgpu, options.kernels);
  const t0 = performance.now();
  const failure = await Conformance.run({ breakChecks: broken(options, api) });
  const selfTestSeconds = (performance.now() - t0) / 1000;
  if (!failure) {
    if (previous) console.warn(`warning: ${previous}; using WebGPU via GL instead`);
    return { ...webgpu, selfTestSeconds, ...(previous ? { fallback: previous } : {}) };
  }
  const reason = `WebGPU adapter ${webgpu.adapter} failed the self-test "${failure.check}" ` +
    `(${failure.detail})`;
  if (forced) throw new BackendUnavailable({ requested: "webgpu", reason });
  if (api === "vulkan" && options.respawn && !previous) return await respawnUnderGl(reason);
  return await fallBack(
    previous
      ? `${previous}, and ${reason}`
      : api === "vulkan"
      ? `${reason} (GL cannot start in this process: set DENO_WEBGPU_BACKEND=gl to try it)`
      : reason,
  );
}

/** The one start-up line: which backend and adapter run, and that the adapter passed. */
export function describe(info: Info): string {
  const test = info.selfTestSeconds === undefined
    ? ""
    : `; self-test passed in ${info.selfTestSeconds.toFixed(2)} s`;
  return `backend: ${info.name} (${info.adapter}${test})`;
}

/**
 * Starts tfjs on the best backend once per process and returns what was chosen. Later calls
 * return the same result. Rejects with {@link BackendUnavailable} only when a backend was
 * asked for explicitly and cannot start or fails its self-test.
 */
export function initialize(options: Options = {}): Promise<Info> {
  if (started) return started;
  started = (async () => {
    // Mesa warns "XDG_RUNTIME_DIR is invalid or not set" unless it names a private (0700)
    // folder of ours; nothing here needs one, so make one rather than print the warning.
    ensureRuntimeDir();
    tf.env().set("IS_NODE", false);
    const info = await start(options);
    if (options.log !== false) console.log(describe(info));
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

/** The parts of tfjs-webgpu's (4.22.0) buffer pool that {@link releaseMemory} empties. */
interface BufferPool {
  readonly bufferManager?: {
    freeBuffers: Map<string, GPUBuffer[]>;
    numFreeBuffers: number;
    numBytesAllocated: number;
  };
  readonly commandEncoder?: unknown;
  endComputePassEncoder?: () => void;
  submitQueue?: () => void;
}

/**
 * Destroys the GPU memory kept for reuse after its tensors were freed: tfjs's buffer pool and
 * the scratch pool of our kernels (`Gpu.trim`); returns the bytes of tfjs's pool released.
 * Neither pool gives memory back on its own, so one evaluation of full-size images leaves its
 * largest maps allocated for the rest of the process (measured on the default job: 1.42 GB
 * resident after the FP32 evaluation, 0.42 GB after this). Pending work is submitted first, so
 * no recorded command refers to a destroyed buffer. A no-op on `cpu`.
 */
export function releaseMemory(): number {
  if (tf.getBackend() !== "webgpu") return 0;
  const b = tf.backend() as unknown as BufferPool;
  const pool = b.bufferManager;
  if (!pool) return 0;
  if (b.commandEncoder) {
    b.endComputePassEncoder?.();
    b.submitQueue?.();
  }
  let bytes = 0;
  // Empty each list but keep its key: tfjs's releaseBuffer pools nothing once the map is empty.
  for (const list of pool.freeBuffers.values()) {
    for (const buffer of list) {
      bytes += buffer.size;
      buffer.destroy();
    }
    list.length = 0;
  }
  pool.numFreeBuffers = 0;
  pool.numBytesAllocated -= bytes;
  gpuOf(tf.backend()).trim();
  return bytes;
}
