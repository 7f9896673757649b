/** The backend: WebGPU where an adapter exists (lavapipe in CI), cpu only as a fallback. */
import * as tf from "@tensorflow/tfjs";
import { assertEquals } from "@std/assert";
import { backend } from "./_setup.ts";

const hasVulkanDriver = (() => {
  for (const dir of ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]) {
    try {
      if ([...Deno.readDirSync(dir)].some((e) => e.name.endsWith(".json"))) return true;
    } catch { /* absent */ }
  }
  return false;
})();

Deno.test("the suite runs on WebGPU when a Vulkan driver (lavapipe or a GPU) is installed", () => {
  console.log(`backend under test: ${backend.name} (${backend.adapter})`);
  assertEquals(tf.getBackend(), backend.name);
  if (hasVulkanDriver && Deno.env.get("QAT_BACKEND") !== "cpu") {
    assertEquals(backend.name, "webgpu");
  }
});
