/** EDSR: output shapes at every scale, the baseline's parameter count, the ODM placement. */
import * as tf from "@tensorflow/tfjs";
import { assertEquals } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Quant from "../lib/Quant.ts";
import * as Quantizer from "../lib/Quantizer.ts";
import * as Range from "../lib/Range.ts";
import * as Tree from "../lib/Tree.ts";
import { edsr, placement } from "../models/edsr.ts";
import "./_setup.ts";

Deno.test("EDSR output shapes at ×2, ×3, ×4 (baseline size and a small size)", () => {
  for (const upscale of [2, 3, 4] as const) {
    for (const opts of [{}, { numFeat: 8, numBlock: 2 }]) {
      const model = edsr({ upscale, ...opts });
      const p = model.init(0);
      const y = tf.tidy(() => model.apply(p, tf.ones([2, 5, 7, 3]), Nn.context()));
      assertEquals(
        y.shape,
        [2, 5 * upscale, 7 * upscale, 3],
        `×${upscale} ${JSON.stringify(opts)}`,
      );
      y.dispose();
      Tree.dispose(p);
    }
  }
});

Deno.test("EDSR-baseline ×4 has 1,517,571 parameters (mean shift not counted)", () => {
  // EDSR paper / EDSR-PyTorch baseline: head 1,792 + 32 block convs 36,928 each + body conv
  // 36,928 + upsampler 2 × 147,712 + tail 1,731 = 1,517,571.
  assertEquals(Nn.parameterCount(edsr({ upscale: 4 })), 1_517_571);
  assertEquals(Nn.parameterCount(edsr({ upscale: 2 })), 1_369_859);
});

Deno.test("quantizing EDSR-baseline at 2 bits wraps exactly the 32 block convs", () => {
  const q = {
    weight: Quantizer.symmetric({ bits: 2, range: Range.clipCorrected(0.99) }),
    input: Quantizer.asymmetric({ bits: 2, range: Range.learnable(Range.percentile(0.99)) }),
  };
  const model = Quant.quantize(edsr({ upscale: 4 }), placement(q));
  const wrapped = Quant.layers(model).map((l) => l.path);
  assertEquals(wrapped.length, 32);
  assertEquals(wrapped.slice(0, 3), [
    "body.blocks.0.conv1",
    "body.blocks.0.conv2",
    "body.blocks.1.conv1",
  ]);
  // head, body-last conv, upsampler and tail stay FP32.
  for (const fp of ["head", "body.conv", "upsample.0", "upsample.2", "tail"]) {
    assertEquals(wrapped.includes(fp), false, fp);
  }
  // 3 quantizer parameters per layer (l_a, u_a, γ_w).
  assertEquals(Nn.parameterCount(model, Quant.isQuantizerParam), 96);
});
