/**
 * End-to-end training runs of a tiny recipe in child processes: a run killed with SIGKILL and
 * resumed ends with exactly the checkpoint of an uninterrupted run; the loss falls; metrics
 * and summary are written.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertEquals, assertGreater } from "@std/assert";
import * as Checkpoint from "../../lib/Checkpoint.ts";
import "../_setup.ts";

const root = new URL("../../", import.meta.url).pathname;
const recipe = new URL("../fixtures/tiny-recipe.ts", import.meta.url).pathname;

/** The real Deno binary (a wrapper's pid would survive SIGKILL, PLATFORM.md). */
const train = (out: string, extra: string[] = []) =>
  new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/train.ts", "--recipe", recipe, "--out", out, ...extra],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  });

const finish = async (cmd: Deno.Command) => {
  const r = await cmd.output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`training failed:\n${text}`);
  return text;
};

const stepsLogged = async (file: string) => {
  try {
    return (await Deno.readTextFile(file)).split("\n").filter((l) => l.trim()).length;
  } catch {
    return 0;
  }
};

Deno.test("a run killed midway and resumed ends with the same checkpoint as an uninterrupted run", async () => {
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  const log = await finish(train(a));
  assert(log.includes("quantized, after QAT"), log);
  const summary = JSON.parse(await Deno.readTextFile(`${a}/summary.json`));
  for (const k of ["fp32", "ptq", "qat"]) assert(Number.isFinite(summary[k].psnr), k);
  assertEquals(summary.steps, 12);
  const metrics = (await Deno.readTextFile(`${a}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(metrics.map((m) => m.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  // Per-batch L1 is noisy at batch 2; the held-out PSNR is the learning signal.
  assertGreater(summary.qat.psnr, summary.ptq.psnr + 1, "QAT improves on the calibrated model");

  // Interrupted run: SIGKILL once at least 5 steps are logged.
  const child = train(b).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  while ((await stepsLogged(`${b}/metrics.jsonl`)) < 5) {
    if (exited) {
      throw new Error(`the run ended before it could be killed: ${JSON.stringify(await status)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  assertEquals((await status).signal, "SIGKILL");
  const killedAt = await Effect.runPromise(Checkpoint.read(`${b}/checkpoint.bin`));
  assert(killedAt.step >= 4 && killedAt.step < 12, `killed at step ${killedAt.step}`);
  const resumedLog = await finish(train(b, ["--resume"]));
  assert(
    resumedLog.includes(`resumed from ${b}/checkpoint.bin at step ${killedAt.step}`),
    resumedLog,
  );

  const ca = await Effect.runPromise(Checkpoint.read(`${a}/checkpoint.bin`));
  const cb = await Effect.runPromise(Checkpoint.read(`${b}/checkpoint.bin`));
  assertEquals(cb.step, 12);
  assertEquals([...cb.params.keys()], [...ca.params.keys()]);
  for (const [k, t] of ca.params) assertEquals(await cb.params.get(k)!.data(), await t.data(), k);
  for (const [k, t] of ca.opt) assertEquals(await cb.opt.get(k)!.data(), await t.data(), k);
  const mb = (await Deno.readTextFile(`${b}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(mb.map((m) => m.step), metrics.map((m) => m.step));
  tf.dispose([
    ...ca.params.values(),
    ...ca.opt.values(),
    ...cb.params.values(),
    ...cb.opt.values(),
  ]);
});
