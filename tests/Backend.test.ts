/**
 * The backend: WebGPU where an adapter exists (lavapipe in CI), the start-up self-test, and the
 * fallback when an adapter fails it (the failure injected with `QAT_SELFTEST_BREAK`, so no
 * broken machine is needed): skipped with one warning naming the check, an error when forced.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as Conformance from "../lib/Conformance.ts";
import { backend } from "./_setup.ts";

const hasVulkanDriver = (() => {
  for (const dir of ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]) {
    try {
      if ([...Deno.readDirSync(dir)].some((e) => e.name.endsWith(".json"))) return true;
    } catch { /* absent */ }
  }
  return false;
})();

const onCpu = Deno.env.get("QAT_BACKEND") === "cpu";

Deno.test("the suite runs on WebGPU when a Vulkan driver (lavapipe or a GPU) is installed", () => {
  console.log(`backend under test: ${backend.name} (${backend.adapter})`);
  assertEquals(tf.getBackend(), backend.name);
  if (hasVulkanDriver && !onCpu) assertEquals(backend.name, "webgpu");
});

Deno.test({
  name: "the adapter in use passed the self-test, and the start-up line says so",
  ignore: backend.name !== "webgpu",
  fn: async () => {
    assertEquals(await Conformance.run(), undefined);
    assert(backend.selfTestSeconds !== undefined);
    assertStringIncludes(Backend.describe(backend), "self-test passed in");
  },
});

const root = new URL("../", import.meta.url).pathname;

/** Runs a script of this repository with extra environment; returns exit code and output. */
async function spawn(script: string, args: string[], env: Record<string, string>) {
  const clean = { ...Deno.env.toObject() };
  for (const k of ["QAT_BACKEND", "DENO_WEBGPU_BACKEND", "QAT_SELFTEST_BREAK"]) delete clean[k];
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}${script}`, ...args],
    cwd: root,
    env: { ...clean, ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: r.code, stdout: text(r.stdout), stderr: text(r.stderr) };
}

const CHECK = "conv2d 3×3 and both gradients";

Deno.test({
  name: "an adapter that fails its self-test is skipped with one warning that names the check",
  ignore: onCpu,
  fn: async () => {
    const r = await spawn("tests/fixtures/backend_start.ts", [], { QAT_SELFTEST_BREAK: "conv2d" });
    assertEquals(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout);
    assertEquals(info.name, "cpu");
    const warnings = r.stderr.split("\n").filter((l) => l.startsWith("warning:"));
    assertEquals(warnings.length, 1, r.stderr);
    assertStringIncludes(warnings[0], `failed the self-test "${CHECK}"`);
    assertStringIncludes(warnings[0], "where the cpu backend gives");
  },
});

Deno.test({
  name:
    "forcing a failing adapter (QAT_BACKEND=webgpu or DENO_WEBGPU_BACKEND) is an error naming the check",
  ignore: onCpu,
  fn: async () => {
    const api = hasVulkanDriver ? "vulkan" : "gl";
    const forced: Record<string, string>[] = [{ QAT_BACKEND: "webgpu" }, {
      DENO_WEBGPU_BACKEND: api,
    }];
    for (const env of forced) {
      const r = await spawn("lib/cli/train.ts", ["--help"], {
        ...env,
        QAT_SELFTEST_BREAK: "tape",
      });
      assertEquals(r.code, 1, JSON.stringify(env));
      assertStringIncludes(r.stderr, 'failed the self-test "two gradients from one recorded');
      assert(!r.stdout.includes("usage:"), "no work after the refusal");
    }
  },
});

Deno.test({
  name: "a task whose Vulkan adapter fails runs again under GL (and under cpu if GL fails too)",
  ignore: onCpu || !hasVulkanDriver,
  fn: async () => {
    const gl = await spawn("lib/cli/train.ts", ["--help"], { QAT_SELFTEST_BREAK: "vulkan:matmul" });
    assertEquals(gl.code, 0, gl.stderr);
    assertStringIncludes(gl.stderr, 'via vulkan failed the self-test "matmul"');
    assertStringIncludes(gl.stdout, "via gl; self-test passed");
    assertStringIncludes(gl.stdout, "usage: deno task train");
    const cpu = await spawn("lib/cli/train.ts", ["--help"], { QAT_SELFTEST_BREAK: "matmul" });
    assertEquals(cpu.code, 0, cpu.stderr);
    assertStringIncludes(cpu.stderr, "via gl failed the self-test");
    assertStringIncludes(cpu.stdout, "backend: cpu");
  },
});

Deno.test({
  name:
    "releaseMemory destroys the pooled buffers of freed tensors; later work still computes right",
  ignore: backend.name !== "webgpu",
  fn: async () => {
    // A 3×3 conv (our kernels) on a 16 MiB input, freed: its buffers go to the pools.
    const x = tf.randomUniform([1, 256, 256, 64], -1, 1, "float32", 3) as tf.Tensor4D;
    const w = tf.randomUniform([3, 3, 64, 8], -1, 1, "float32", 4) as tf.Tensor4D;
    const y = tf.conv2d(x, w, 1, "same");
    const want = await tf.sum(y).data();
    tf.dispose([x, y]);
    const pool = (tf.backend() as unknown as { bufferManager: { getNumFreeBuffers(): number } })
      .bufferManager;
    assert(pool.getNumFreeBuffers() > 0, "the freed tensors' buffers are pooled");
    const released = Backend.releaseMemory();
    assert(released >= 16 * 2 ** 20, `released ${released} bytes`);
    assertEquals(pool.getNumFreeBuffers(), 0);
    // The pools work on after it: the same conv again, the same sum (bit for bit).
    const x2 = tf.randomUniform([1, 256, 256, 64], -1, 1, "float32", 3) as tf.Tensor4D;
    const y2 = tf.conv2d(x2, w, 1, "same");
    assertEquals(await tf.sum(y2).data(), want);
    tf.dispose([x2, y2, w]);
    assert(pool.getNumFreeBuffers() > 0, "buffers are pooled again after a release");
  },
});
