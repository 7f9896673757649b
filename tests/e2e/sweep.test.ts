/**
 * `deno task sweep` and `deno task sweep-worker` end to end, with real parts: processes of the
 * real Deno binary, SIGKILL, and for the many-machine case a PostgreSQL server of its own
 * (Debian's `postgresql`, in a temporary data folder, on 127.0.0.1 and a free port).
 *
 * Each grid has 4 tiny cells (EDSR 4 channels ×2, 12 steps) in two pairs of twins: two cells
 * with the same recipe under different names. A process is SIGKILLed in the middle of a cell;
 * the sweep then finishes with every cell run once (one start from step 0 each, the killed one
 * resumed once from its checkpoint), and the killed cell's final checkpoint is bit-identical to
 * its twin's, which ran uninterrupted. A grid with an invalid cell is refused before any work.
 *
 * The cells train on tfjs's `cpu` backend (`QAT_BACKEND=cpu`, inherited by every cell process):
 * these tests check the sweep's durability (store, queue, leases, locks, resume), and the cpu
 * backend is bit-reproducible across processes, and faster for cells this small (no shader
 * compilation, no self-test: 4 cells in 34 s vs 57 s here, 2 at a time). On lavapipe WebGPU a
 * resumed ODM cell measured 19 of 3795 values off its uninterrupted twin by a few ULP in 2 of 6
 * kill/resume runs with two cells training at once, while LSQ cells never differed; the GPU
 * path's resume is tests/e2e/train.test.ts's (one run at a time).
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import * as Checkpoint from "../../lib/Checkpoint.ts";
import { freePort, pgBin, startPostgres } from "../_postgres.ts";

const root = new URL("../../", import.meta.url).pathname;
const tiny = new URL("../fixtures/tiny-recipe.ts", import.meta.url).pathname;
const sweepLib = new URL("../../lib/Sweep.ts", import.meta.url).href;
const env = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", QAT_BACKEND: "cpu" };

/** A grid file of 4 tiny cells: two pairs of twins (same recipe, another name). */
const gridFile = async (dir: string) => {
  const file = `${dir}/grid.ts`;
  await Deno.writeTextFile(
    file,
    `import * as Sweep from "${sweepLib}";
const tiny = "${tiny}";
export default Sweep.grid({
  name: "twins",
  cells: [
    { recipe: tiny, method: "odm", name: "odm-a" },
    { recipe: tiny, method: "odm", name: "odm-b" },
    { recipe: tiny, method: "lsq", name: "lsq-a" },
    { recipe: tiny, method: "lsq", name: "lsq-b" },
  ],
});
`,
  );
  return file;
};
const NAMES = ["odm-a", "odm-b", "lsq-a", "lsq-b"];
const twin = (n: string) => n.endsWith("-a") ? n.replace(/-a$/, "-b") : n.replace(/-b$/, "-a");

/** A process of the real Deno binary (a wrapper's pid would survive SIGKILL, PLATFORM.md). */
const spawn = (script: string, args: string[]) => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `lib/cli/${script}`, ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env,
  }).spawn();
  let text = "";
  const dec = new TextDecoder();
  const read = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) text += dec.decode(c, { stream: true });
  };
  const done = Promise.all([read(child.stdout), read(child.stderr)]);
  return {
    child,
    get text() {
      return text;
    },
    status: child.status.then(async (s) => (await done, s)),
  };
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lines = async (file: string) =>
  (await Deno.readTextFile(file).catch(() => "")).split("\n").filter((l) => l.trim());

/** Waits until `f` holds, polling, or fails after `seconds`. */
async function until(what: string, f: () => Promise<boolean> | boolean, seconds = 120) {
  const end = Date.now() + seconds * 1000;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Whether a cell's `cell.lock` is free: no process is training the cell. */
const lockFree = async (dir: string) => {
  const f = await Deno.open(`${dir}/cell.lock`, { write: true, create: true });
  try {
    const ok = await f.tryLock(true);
    if (ok) await f.unlock();
    return ok;
  } finally {
    f.close();
  }
};

/** Asserts every cell ran once and the killed one, resumed, equals its uninterrupted twin. */
async function checkOnce(out: string, logs: string, killed: string) {
  const sweep = JSON.parse(await Deno.readTextFile(`${out}/sweep.json`));
  assertEquals(sweep.cells.map((c: { name: string }) => c.name), NAMES);
  for (const c of sweep.cells) assert(c.result, `${c.key}: ${c.error}`);
  for (const n of NAMES) {
    const dir = `${out}/edsr-x2/${n}`;
    const starts = logs.split(`no checkpoint in ${dir}; starting from step 0`).length - 1;
    assertEquals(starts, 1, `${n} started from step 0 ${starts} times`);
    const resumes = logs.split(`resumed from ${dir}/checkpoint.bin at step `).length - 1;
    assertEquals(resumes, n === killed ? 1 : 0, `${n} resumed ${resumes} times`);
    const steps = (await lines(`${dir}/metrics.jsonl`)).map((l) => JSON.parse(l).step);
    assertEquals(steps, Array.from({ length: 12 }, (_, i) => i + 1), n);
  }
  const ca = await Effect.runPromise(Checkpoint.read(`${out}/edsr-x2/${killed}/checkpoint.bin`));
  const cb = await Effect.runPromise(
    Checkpoint.read(`${out}/edsr-x2/${twin(killed)}/checkpoint.bin`),
  );
  assertEquals([ca.step, cb.step], [12, 12]);
  assertEquals([...ca.params.keys()], [...cb.params.keys()]);
  for (const [k, t] of ca.params) assertEquals(await t.data(), await cb.params.get(k)!.data(), k);
  for (const [k, t] of ca.opt) assertEquals(await t.data(), await cb.opt.get(k)!.data(), k);
  tf.dispose([
    ...ca.params.values(),
    ...ca.opt.values(),
    ...cb.params.values(),
    ...cb.opt.values(),
  ]);
}

Deno.test("embedded store: a sweep killed mid-cell resumes, runs every cell once, and never re-runs a finished one", async () => {
  const dir = await Deno.makeTempDir();
  const grid = await gridFile(dir);
  const out = `${dir}/out`;
  const args = [grid, "--out", out, "--no-report", "--status", "0"];
  // First run: SIGKILL the sweep once its first cell has logged 4 steps.
  const first = spawn("sweep.ts", args);
  let killed = "";
  await until("a cell at step 4", async () => {
    for (const n of NAMES) {
      if ((await lines(`${out}/edsr-x2/${n}/metrics.jsonl`)).length >= 4) killed = n;
    }
    return killed !== "" ||
      (await Promise.race([first.status.then(() => true), sleep(0)]) === true);
  });
  first.child.kill("SIGKILL");
  assertEquals((await first.status).signal, "SIGKILL", first.text);
  assert(killed, `the sweep ended before it could be killed:\n${first.text}`);
  // The cell's own process stops with its sweep (its stdin closes): the cell's lock is freed.
  await until(
    "the killed sweep's cell process to stop",
    () => lockFree(`${out}/edsr-x2/${killed}`),
    40,
  );

  const second = spawn("sweep.ts", args);
  const s2 = await second.status;
  assertEquals(s2.code, 0, second.text);
  assertStringIncludes(second.text, `cell edsr-x2/${killed}: submitted before, waiting for it`);
  assertStringIncludes(second.text, "4/4 cells done");
  assertStringIncludes(second.text, `| ${killed}: `);
  await checkOnce(out, first.text + second.text, killed);

  // Third run: every cell comes back from the store, no cell process starts.
  const third = spawn("sweep.ts", args);
  assertEquals((await third.status).code, 0, third.text);
  for (const n of NAMES) assertStringIncludes(third.text, `cell edsr-x2/${n}: done before`);
  assert(!third.text.includes("running on"), third.text);
  assert((await Deno.stat(`${out}/edsr-x2/compare.json`)).isFile);
  await Deno.remove(dir, { recursive: true }); // kept when a check fails, to look at
});

Deno.test("a cell that fails is reported with its error, and tried again by the next run", async () => {
  const dir = await Deno.makeTempDir();
  // A valid recipe whose training folder is missing: it fails in its cell's run, not before.
  await Deno.writeTextFile(
    `${dir}/broken.ts`,
    `import base from "${tiny}";
import * as Recipe from "${new URL("../../lib/Recipe.ts", import.meta.url).href}";
export default Recipe.parse({ ...base, name: "broken", data: { ...base.data, train: "${dir}/missing" } });
`,
  );
  await Deno.writeTextFile(
    `${dir}/grid.ts`,
    `import * as Sweep from "${sweepLib}";
export default Sweep.grid({ name: "broken", cells: [{ recipe: "${dir}/broken.ts" }] });
`,
  );
  const args = [`${dir}/grid.ts`, "--out", `${dir}/out`, "--no-report", "--status", "0"];
  const first = spawn("sweep.ts", args);
  assertEquals((await first.status).code, 1, first.text);
  assertStringIncludes(first.text, "cell edsr-x2/w4a4-odm-s5: failed (1/1): ");
  assertStringIncludes(first.text, `${dir}/missing`);
  assertStringIncludes(first.text, "0/1 cells done, 1 failed (run the sweep again to retry them)");
  const sweep = JSON.parse(await Deno.readTextFile(`${dir}/out/sweep.json`));
  assertStringIncludes(sweep.cells[0].error, `${dir}/missing`);
  // The next run tries it again (attempt 2), naming the first failure.
  const second = spawn("sweep.ts", args);
  assertEquals((await second.status).code, 1, second.text);
  assertStringIncludes(second.text, "cell edsr-x2/w4a4-odm-s5: attempt 1 failed before (");
  assertStringIncludes(second.text, "(attempt 2)");
  await Deno.remove(dir, { recursive: true }); // kept when a check fails, to look at
});

Deno.test("a grid with an invalid cell is refused before any work, naming the cell and field", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/bad.ts`;
  await Deno.writeTextFile(
    file,
    `export default { name: "bad", cells: [
  { recipe: "${tiny}" },
  { recipe: "${tiny}", model: { options: { numFeats: 4 } } },
] };\n`,
  );
  const r = spawn("sweep.ts", [file, "--out", `${dir}/out`]);
  const s = await r.status;
  assertEquals(s.code, 1, r.text);
  assertStringIncludes(r.text, `error: invalid grid ${file}:`);
  assertStringIncludes(
    r.text,
    "✖ cells[1]: recipe.model.options.numFeats: unknown option for edsr",
  );
  assert(!r.text.includes("cells[0]"), r.text);
  // Nothing was started: no store, no folder.
  assertEquals(await Deno.stat(`${dir}/out`).then(() => true, () => false), false);
  await Deno.remove(dir, { recursive: true }); // kept when a check fails, to look at
});

// ---------------------------------------------------------------------------------------------
// PostgreSQL: two workers

if (!pgBin) {
  console.log(
    "sweep on PostgreSQL: skipped, PostgreSQL is not installed (apt-get install postgresql; " +
      ".ci/run installs it)",
  );
}

Deno.test({
  name:
    "PostgreSQL, two workers: one SIGKILLed mid-cell, its cell moves to the other and resumes; every cell once; a re-run runs nothing",
  ignore: !pgBin,
  fn: async () => {
    const pg = await startPostgres();
    const workers: Array<ReturnType<typeof spawn>> = [];
    try {
      const dir = await Deno.makeTempDir();
      const grid = await gridFile(dir);
      const out = `${dir}/out`;
      const lease = "4";
      for (let i = 0; i < 2; i++) {
        workers.push(spawn("sweep-worker.ts", [
          "--db",
          pg.url,
          "--host",
          "127.0.0.1",
          "--port",
          String(freePort()),
          "--lease",
          lease,
        ]));
      }
      const started = performance.now();
      const sweepArgs = [
        grid,
        "--db",
        pg.url,
        "--out",
        out,
        "--lease",
        lease,
        "--no-report",
        "--status",
        "0",
      ];
      const sweep = spawn("sweep.ts", sweepArgs);
      // Kill the worker that runs a cell once that cell has logged 4 steps.
      let killed = "";
      let victim = -1;
      await until("a cell at step 4 on a worker", async () => {
        for (const n of NAMES) {
          const w = await Deno.readTextFile(`${out}/edsr-x2/${n}/worker.json`).catch(() => "");
          if (!w || (await lines(`${out}/edsr-x2/${n}/metrics.jsonl`)).length < 4) continue;
          const pid = JSON.parse(w).pid;
          victim = workers.findIndex((x) => x.child.pid === pid);
          if (victim >= 0) killed = n;
        }
        return killed !== "";
      });
      const killedAt = performance.now();
      workers[victim].child.kill("SIGKILL");
      assertEquals((await workers[victim].status).signal, "SIGKILL");
      const survivor = workers[1 - victim];
      // The failover: the survivor takes the killed cell once its lease has run out.
      await until(
        "the survivor to take the killed cell",
        () => survivor.text.includes(`cell edsr-x2/${killed}: running on`),
      );
      const failover = (performance.now() - killedAt) / 1000;
      const s = await sweep.status;
      const wall = (performance.now() - started) / 1000;
      assertEquals(s.code, 0, sweep.text + survivor.text);
      assertStringIncludes(sweep.text, "4/4 cells done");
      // The end table, in the paper's layout: the FP32 row, then one row per cell.
      assertStringIncludes(sweep.text, "| method | W/A | PSNR (dB) ×2 tiny | SSIM |");
      assertStringIncludes(sweep.text, "| fp32: full precision | 32/32 |");
      for (const n of NAMES) assertStringIncludes(sweep.text, `| ${n}: `);
      const logs = workers.map((w) => w.text).join("\n");
      await checkOnce(out, logs, killed);
      // Submitted again: every cell comes back from the database, the worker runs nothing.
      const before = survivor.text.length;
      const again = spawn("sweep.ts", sweepArgs);
      assertEquals((await again.status).code, 0, again.text);
      for (const n of NAMES) assertStringIncludes(again.text, `cell edsr-x2/${n}: done before`);
      assert(!survivor.text.slice(before).includes("running on"), survivor.text.slice(before));
      await Deno.remove(dir, { recursive: true }); // kept when a check fails, to look at
      console.log(
        `  killed ${killed}'s worker at step ≥4; the survivor took it ${failover.toFixed(1)} s ` +
          `later (lease ${lease} s); the sweep took ${wall.toFixed(1)} s`,
      );
    } finally {
      for (const w of workers) {
        const kill = (sig: Deno.Signal) => {
          try {
            w.child.kill(sig);
          } catch { /* already gone */ }
        };
        kill("SIGTERM");
        const timer = setTimeout(() => kill("SIGKILL"), 15_000);
        await w.status;
        clearTimeout(timer);
      }
      await pg.stop();
    }
  },
});
