/** Typed layers: shapes, pixel shuffle against depthToSpace, composition and paths. */
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertThrows } from "@std/assert";
import * as Nn from "../lib/Nn.ts";
import * as Tree from "../lib/Tree.ts";
import { maxRelDiff, values } from "./_setup.ts";

Deno.test("conv2d: same padding, bias, PyTorch-style init bound, seeded", async () => {
  const conv = Nn.conv2d({ in: 3, out: 5, kernel: 3 });
  const p = conv.init(1);
  const w = Tree.leaf(p, "weight");
  assertEquals(w.shape, [3, 3, 3, 5]);
  assertEquals(Tree.leaf(p, "bias").shape, [5]);
  const bound = 1 / Math.sqrt(27);
  assert((await values(w)).every((v) => Math.abs(v) <= bound));
  assertEquals(
    await values(w),
    await values(Tree.leaf(conv.init(1), "weight")),
    "same key, same init",
  );
  const y = conv.apply(p, tf.ones([2, 7, 5, 3]), Nn.context());
  assertEquals(y.shape, [2, 7, 5, 5]);
  // A 1×1 conv is a per-pixel matrix product plus bias: check one pixel by hand.
  const one = Nn.conv2d({ in: 2, out: 1, kernel: 1 });
  const q = { weight: tf.tensor4d([2, -3], [1, 1, 2, 1]), bias: tf.tensor1d([0.5]) };
  const z = one.apply(q, tf.tensor4d([1, 4], [1, 1, 1, 2]), Nn.context());
  assertEquals(await values(z), [2 * 1 - 3 * 4 + 0.5]);
  tf.dispose([y, z, q.weight, q.bias]);
  Tree.dispose(p);
  assertThrows(
    () => conv.apply(conv.init(0), tf.ones([1, 4, 4, 4]), Nn.context()),
    Error,
    "3 input channels",
  );
});

Deno.test("pixelShuffle equals tf.depthToSpace and has a gradient", async () => {
  for (const r of [2, 3]) {
    const c = 2;
    const x = tf.randomNormal([2, 3, 4, c * r * r], 0, 1, "float32", 4);
    const ps = Nn.pixelShuffle({ in: c * r * r, out: c, factor: r });
    const y = ps.apply({}, x, Nn.context());
    const ref = tf.depthToSpace(x as tf.Tensor4D, r, "NHWC");
    assertEquals(y.shape, [2, 3 * r, 4 * r, c]);
    assertEquals(maxRelDiff(await values(y), await values(ref)), 0);
    const g = tf.grad((t: tf.Tensor) => ps.apply({}, t, Nn.context()).square().sum())(x);
    assert(maxRelDiff(await values(g), await values(x.mul(2))) < 1e-6);
    tf.dispose([x, y, ref, g]);
  }
  assertThrows(() => Nn.pixelShuffle({ in: 12, out: 2, factor: 3 }), RangeError);
});

Deno.test("sequential, residual and repeat give dotted parameter paths", () => {
  const block = Nn.residual(
    Nn.sequential(
      Nn.named("conv1", Nn.conv2d({ in: 4, out: 4 })),
      Nn.relu(4),
      Nn.named("conv2", Nn.conv2d({ in: 4, out: 4 })),
    ),
  );
  const model = Nn.sequential(
    Nn.named("head", Nn.conv2d({ in: 3, out: 4 })),
    Nn.named("blocks", Nn.repeat(2, () => block)),
  );
  const p = model.init(0);
  assertEquals([...Tree.flatten(p).keys()], [
    "head.weight",
    "head.bias",
    "blocks.0.conv1.weight",
    "blocks.0.conv1.bias",
    "blocks.0.conv2.weight",
    "blocks.0.conv2.bias",
    "blocks.1.conv1.weight",
    "blocks.1.conv1.bias",
    "blocks.1.conv2.weight",
    "blocks.1.conv2.bias",
  ]);
  const paths: string[] = [];
  Nn.walk(model, (path, l) => l.kind === "conv2d" && paths.push(path));
  assertEquals(paths, [
    "head",
    "blocks.0.conv1",
    "blocks.0.conv2",
    "blocks.1.conv1",
    "blocks.1.conv2",
  ]);
  Tree.dispose(p);
});

Deno.test("residual adds its input; a mis-wired chain fails at run time too", async () => {
  const zero = Nn.conv2d({ in: 2, out: 2, kernel: 1 });
  const res = Nn.residual(zero, 0.5);
  const p = { weight: tf.tensor4d([1, 0, 0, 1], [1, 1, 2, 2]), bias: tf.zeros([2]) };
  const y = res.apply(p, tf.tensor4d([2, 4], [1, 1, 1, 2]), Nn.context());
  assertEquals(await values(y), [3, 6]);
  tf.dispose([y, p.weight, p.bias]);
  // deno-lint-ignore no-explicit-any
  const wrong = [Nn.conv2d({ in: 3, out: 8 }), Nn.conv2d({ in: 4, out: 3 })] as any[];
  // deno-lint-ignore no-explicit-any
  assertThrows(() => (Nn.sequential as any)(...wrong), Error, "gives 8 channels");
});
