/**
 * One ODM training step at W2A2 for every architecture (EDSR, RDN, SRResNet, SwinIR) in a small
 * configuration, on the current backend: calibration, the cooperative step of Algorithm 1 with
 * the SPEC §7 optimizer, a finite loss, and no tensor leaked between the second and third step.
 */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertGreater } from "@std/assert";
import * as Nn from "../../lib/Nn.ts";
import * as Quant from "../../lib/Quant.ts";
import * as Recipe from "../../lib/Recipe.ts";
import * as Train from "../../lib/Train.ts";
import * as Tree from "../../lib/Tree.ts";
import type { Params } from "../../lib/Tree.ts";
import * as Registry from "../../models/registry.ts";
import { edsr } from "../../models/edsr.ts";
import { rdn } from "../../models/rdn.ts";
import { srresnet } from "../../models/srresnet.ts";
import { swinir } from "../../models/swinir.ts";
import "../_setup.ts";

// The optimizer, merge rule and quantizers of an ODM W2A2 recipe (the arch is only a
// placeholder for the schema: each model is built below).
const recipe = Recipe.parse({
  name: "models-step",
  model: { arch: "edsr", scale: 2 },
  quant: { wbits: 2, abits: 2 },
  regularizer: { merge: "cooperative", lambdaM: 1e-5 },
  train: { steps: 3, batch: 2, patch: 8, lrWeights: 1e-4 },
});

const models = {
  edsr: { model: edsr({ upscale: 2, numFeat: 8, numBlock: 2 }), family: "edsr" as const, n: 4 },
  rdn: {
    model: rdn({ upscale: 2, numFeat: 8, numBlock: 2, numConv: 2, growRate: 8 }),
    family: "rdn" as const,
    n: 2 * 2 + 2 + 2,
  },
  srresnet: {
    model: srresnet({ upscale: 2, numFeat: 8, numBlock: 2 }),
    family: "srresnet" as const,
    n: 4,
  },
  swinir: {
    model: swinir({ upscale: 2, embedDim: 12, depths: [1, 1], numHeads: 2, windowSize: 4 }),
    family: "swinir" as const,
    n: 2 * 4 + 2,
  },
} as const;

/** Calibrated quantizer parameters from one FP forward pass (SPEC §2). */
function calibrate(model: Nn.AnyLayer, params: Params, lr: tf.Tensor): Params {
  return tf.tidy(() => {
    const inputs = new Map<string, tf.Tensor[]>();
    model.apply(params, lr, Nn.context("calibrate", { tap: (t) => inputs.set(t.path, [t.x]) }));
    const cal = Quant.calibrate(model, params, inputs);
    for (const t of Tree.flatten(cal).values()) tf.keep(t);
    return cal;
  });
}

for (const [name, m] of Object.entries(models)) {
  Deno.test(`${name}: one ODM step at W2A2 — finite loss, no leak between steps 2 and 3`, async () => {
    const model = Registry.quantize(recipe, m);
    assertEquals(Quant.layers(model).length, m.n);
    const lr = tf.randomUniform([2, 8, 8, 3], 0, 255, "float32", 1) as tf.Tensor4D;
    const hr = tf.image.resizeNearestNeighbor(lr, [16, 16]);
    const init = model.init(0);
    const cal = calibrate(model, init, lr);
    const params = Tree.flatten(Tree.merge(init, cal));
    const kept = new Set(params.values());
    for (const t of [...Tree.flatten(init).values(), ...Tree.flatten(cal).values()]) {
      if (!kept.has(t)) t.dispose();
    }
    const cfg = Train.configOf(recipe, model);
    const first = new Map([...params].map(([k, t]) => [k, t.clone()] as const));
    let state = Train.initialState(cfg, params);
    const counts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const out = Train.step(cfg, state, { lr, hr });
      const [l1, mismatch] = await out.report.data();
      assert(
        Number.isFinite(l1) && Number.isFinite(mismatch),
        `step ${i}: L1 ${l1}, L_M ${mismatch}`,
      );
      assertGreater(mismatch, 0);
      out.report.dispose();
      Train.dispose(state);
      state = out.state;
      counts.push(tf.memory().numTensors);
    }
    assertEquals(counts[1], counts[2], `tensor counts per step: ${counts}`);
    // The weights moved; batch-norm running statistics (buffers) did not.
    const moved = async (k: string) =>
      (await tf.tidy(() => tf.max(tf.abs(tf.sub(state.params.get(k)!, first.get(k)!)))).data())[0];
    for (const k of state.params.keys()) {
      if (Nn.isBuffer(k)) assertEquals(await moved(k), 0, k);
    }
    const quantWeight = [...state.params.keys()].find((k) =>
      Quant.layers(model).some((l) => k === `${l.path}.weight`)
    )!;
    assertGreater(await moved(quantWeight), 0, quantWeight);
    Train.dispose(state);
    tf.dispose([lr, hr, ...first.values()]);
  });
}
