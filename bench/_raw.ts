/**
 * Raw WebGPU for the probes that time one shader outside tfjs (bench/conv_ceiling.ts,
 * bench/bitplane.ts): a compute pipeline with its bind group (bindings 0, 1, … in order), and
 * the mean time of `reps` dispatches of it in one submit, waited for.
 */

/** A pipeline of `code` (entry point `main`) and the bind group of `resources`. */
export function compute(
  device: GPUDevice,
  code: string,
  resources: GPUBindingResource[],
): { readonly pipe: GPUComputePipeline; readonly group: GPUBindGroup } {
  const pipe = device.createComputePipeline({
    layout: "auto",
    compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
  });
  const group = device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: resources.map((resource, binding) => ({ binding, resource })),
  });
  return { pipe, group };
}

/** Milliseconds per dispatch of `workgroups` 1-D workgroups (spread over y past 32768). */
export async function timeDispatches(
  device: GPUDevice,
  k: { readonly pipe: GPUComputePipeline; readonly group: GPUBindGroup },
  workgroups: number,
  reps: number,
): Promise<number> {
  const t0 = performance.now();
  const enc = device.createCommandEncoder();
  for (let r = 0; r < reps; r++) {
    const pass = enc.beginComputePass();
    pass.setPipeline(k.pipe);
    pass.setBindGroup(0, k.group);
    const x = Math.min(workgroups, 32768);
    pass.dispatchWorkgroups(x, Math.ceil(workgroups / x));
    pass.end();
  }
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / reps;
}
