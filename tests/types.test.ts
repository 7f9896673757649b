/**
 * Type tests: channel counts are part of a layer's type, so mis-wiring does not compile.
 * `deno test` type-checks this file; an `@ts-expect-error` that no longer finds an error
 * fails the check, so each line below proves that the wiring it shows is rejected.
 */
import { assertEquals } from "@std/assert";
import * as Nn from "../lib/Nn.ts";

Deno.test("mis-wired channels do not compile", () => {
  const ok: Nn.Layer<3, 3> = Nn.sequential(
    Nn.conv2d({ in: 3, out: 64 }),
    Nn.relu(64),
    Nn.conv2d({ in: 64, out: 3 }),
  );
  assertEquals([ok.inChannels, ok.outChannels], [3, 3]);

  const wrong = () =>
    Nn.sequential(
      Nn.conv2d({ in: 3, out: 64 }),
      // @ts-expect-error a 64-channel output cannot feed a 32-channel input
      Nn.conv2d({ in: 32, out: 3 }),
    );
  const wrongRelu = () =>
    Nn.sequential(
      Nn.conv2d({ in: 3, out: 64 }),
      // @ts-expect-error relu(32) after a 64-channel conv
      Nn.relu(32),
    );
  // @ts-expect-error a Layer<3, 64> is not a Layer<3, 3>
  const notRgb: Nn.Layer<3, 3> = Nn.conv2d({ in: 3, out: 64 });
  // @ts-expect-error residual needs equal in and out channels
  const badResidual = () => Nn.residual(Nn.conv2d({ in: 3, out: 64 }));
  assertEquals(typeof wrong, "function");
  assertEquals(typeof wrongRelu, "function");
  assertEquals(typeof badResidual, "function");
  assertEquals(notRgb.outChannels, 64);
});
