/**
 * A training step with tfjs's stock conv kernels vs ours vs PyTorch (CPU, 2 threads), in one
 * process: the tiny EDSR ×4 of PLATFORM.md (4 blocks × 32 channels, batch 4, LR 24², Adam) and
 * an EDSR-baseline body width (16 × 64, batch 8, LR 48²); FP32, W2A2 plain QAT (learnable
 * ranges, reconstruction loss only) and W2A2 ODM (clip-corrected weights, mismatch loss on a
 * second backward walk over the same forward pass, cooperative merge). Prints the median
 * seconds per step after one warm-up step, the ratios ours/stock and ours/PyTorch, and
 * ODM/FP32 with our kernels, with the backend named.
 * The stock EDSR-baseline step takes minutes: it runs once, shader compilation included (a few
 * seconds of it).
 *
 * PyTorch numbers come from bench/reference/step.py, run with `/usr/bin/python3`; they are
 * skipped (null, with a note) when python3 or torch is missing. PyTorch is never a dependency.
 *
 *   deno run -A bench/step.ts [--quick] [--json] [--profile] [--replay] [--torch] [--rows TEXT]
 *                             [--no-stock] [--help]
 *
 * `--quick`: tiny EDSR only. `--json`: prints only `{"rows": [{"name", "ours_s", "stock_s",
 * "pytorch_s"}]}` on stdout (null where skipped; with `--profile`, each row also has its
 * `profile`); notes go to stderr. `--rows TEXT`: only the rows whose name contains TEXT
 * (`--rows "EDSR-baseline W2A2 ODM"`). `--no-stock`: skip tfjs's stock kernels.
 *
 * `--profile`: with our kernels only, after the timed steps of a row one more step runs under
 * the profiler (lib/internal/kernels/profile.ts) and its table is printed: milliseconds and
 * share of the step per kernel family (conv forward / input grad / weight grad, matmul,
 * element-wise, reductions, layout, fake-quant, quantile, merge, optimizer), the gaps between
 * dispatches, and the wall time outside the GPU's span (host start-up and the read-back wait).
 * From per-dispatch GPU timestamps where the adapter has `timestamp-query`, else (or with
 * `--replay`) from replaying each family's dispatches as one timed submit. The PyTorch reference
 * is skipped under `--profile` unless `--torch` is given.
 */
import * as tf from "@tensorflow/tfjs";
import type { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import * as Backend from "../lib/Backend.ts";
import * as Kernels from "../lib/Kernels.ts";
import * as Profile from "../lib/internal/kernels/profile.ts";
import * as Methods from "../lib/methods/mod.ts";
import * as Recipe from "../lib/Recipe.ts";
import { stepper } from "./_stepper.ts";

if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
  // The module comment above is the help text.
  const text = await Deno.readTextFile(new URL(import.meta.url));
  const doc = text.slice(text.indexOf("/**") + 3, text.indexOf("*/"));
  console.log(doc.split("\n").map((l) => l.replace(/^ \* ?/, "")).join("\n").trim());
  Deno.exit(0);
}
const quick = Deno.args.includes("--quick");
const json = Deno.args.includes("--json");
const profile = Deno.args.includes("--profile");
const replay = Deno.args.includes("--replay");
const noStock = Deno.args.includes("--no-stock") || profile;
const rowsAt = Deno.args.indexOf("--rows");
const only = rowsAt >= 0 ? Deno.args[rowsAt + 1] : undefined;
/** Human output (stdout), silent under `--json`. */
const say = (line: string) => {
  if (!json) console.log(line);
};
/** Notes: stdout for humans, stderr under `--json` so stdout stays one JSON document. */
const note = (line: string) => (json ? console.error(line) : console.log(line));

const info = await Backend.initialize({ log: false });
say(`backend: ${info.name} (${info.adapter})`);
if (profile && info.name === "webgpu" && !replay) {
  // The profile reads GPU timestamps: a device with timestamp-query, before any tensor exists.
  const ok = await Profile.enableTimestamps();
  note(ok ? "profile: GPU timestamps" : "profile: no timestamp-query, timing dispatch groups");
}

type Method = "fp32" | "plain" | "odm";

/** Row labels, shared with bench/reference/step.py. */
const LABEL: Record<Method, string> = {
  fp32: "FP32",
  plain: "W2A2 plain QAT",
  odm: "W2A2 ODM",
};

function recipeOf(
  model: Recipe.Input["model"],
  method: Method,
  batch: number,
  patch: number,
): Recipe.Recipe {
  const quant = method === "fp32" ? { wbits: 32, abits: 32 } : { wbits: 2, abits: 2 };
  return Recipe.parse({
    name: `step-${method}`,
    model,
    // plain: learnable u_w, no regulariser (Table 7 a); odm: WCC + the cooperative merge.
    method: method === "plain" ? Methods.ablation.a : "odm",
    quant,
    regularizer: { merge: method === "odm" ? "cooperative" : "reconstruction" },
    train: { steps: 1, batch, patch },
  });
}

async function seconds(run: () => Promise<void>, n: number): Promise<number> {
  if (n > 1) await run(); // compiles the shaders (a single slow step keeps its compile time)
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await run();
    times.push((performance.now() - t0) / 1000);
  }
  return times.sort((a, b) => a - b)[Math.floor(n / 2)];
}

const configs = [
  {
    name: "tiny EDSR",
    title: "tiny EDSR ×4 (4×32, batch 4, LR 24²)",
    model: { arch: "edsr", scale: 4, options: { numFeat: 32, numBlock: 4 } },
    batch: 4,
    patch: 24,
    n: { stock: 3, ours: 5 },
  },
  {
    name: "EDSR-baseline",
    title: "EDSR-baseline ×4 (16×64, batch 8, LR 48²)",
    model: { arch: "edsr", scale: 4, options: { numFeat: 64, numBlock: 16 } },
    batch: 8,
    patch: 48,
    n: { stock: 1, ours: 3 },
  },
] as const;

interface Row {
  name: string;
  ours_s: number | null;
  stock_s: number | null;
  pytorch_s: number | null;
  profile?: Profile.Profile;
}

const PYTHON = "/usr/bin/python3";
const REFERENCE = new URL("./reference/step.py", import.meta.url).pathname;

/** PyTorch seconds per row name, or undefined (with a note) when the reference can't run. */
async function pytorch(timeoutS: number): Promise<Map<string, number> | undefined> {
  try {
    await Deno.stat(PYTHON);
  } catch {
    note(`note: ${PYTHON} not found, PyTorch reference skipped`);
    return undefined;
  }
  const probe = await new Deno.Command(PYTHON, {
    args: ["-c", "import torch"],
    stdout: "null",
    stderr: "null",
  }).output();
  if (!probe.success) {
    note(`note: torch is not installed for ${PYTHON}, PyTorch reference skipped`);
    return undefined;
  }
  try {
    const out = await new Deno.Command(PYTHON, {
      args: [REFERENCE, ...(quick ? ["--quick"] : [])],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(timeoutS * 1000),
    }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
      note(`note: PyTorch reference failed (exit ${out.code}): ${err}`);
      return undefined;
    }
    const parsed = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      rows: { name: string; seconds: number }[];
    };
    return new Map(parsed.rows.map((r) => [r.name, r.seconds]));
  } catch (e) {
    note(`note: PyTorch reference skipped: ${e instanceof Error ? e.message : String(e)}`);
    return undefined;
  }
}

const rows: Row[] = [];
for (const c of quick ? configs.slice(0, 1) : configs) {
  note(c.title); // progress: stderr under --json
  for (const method of ["fp32", "plain", "odm"] as const) {
    const row: Row = {
      name: `${c.name} ${LABEL[method]}`,
      ours_s: null,
      stock_s: null,
      pytorch_s: null,
    };
    if (only !== undefined && !row.name.includes(only)) continue;
    for (const which of noStock ? ["ours"] as const : ["stock", "ours"] as const) {
      Kernels.install(info, which);
      const st = await stepper(
        recipeOf(c.model as Recipe.Input["model"], method, c.batch, c.patch),
      );
      const t = await seconds(st.run, c.n[which]);
      row[which === "ours" ? "ours_s" : "stock_s"] = t;
      note(`  ${LABEL[method]} ${which}: ${t.toFixed(2)} s/step`);
      if (profile && which === "ours" && info.name === "webgpu") {
        const p = new Profile.Profiler(tf.backend() as WebGPUBackend, { replay });
        p.start();
        await st.run();
        row.profile = await p.stop();
        say(`\nprofile of one ${row.name} step (${info.adapter}):`);
        say(Profile.table(row.profile));
        say("");
      }
      st.dispose();
    }
    rows.push(row);
  }
}
Kernels.install(info);

const torchSeconds = profile && !Deno.args.includes("--torch")
  ? undefined
  : await pytorch(quick ? 300 : 900);
for (const r of rows) r.pytorch_s = torchSeconds?.get(r.name) ?? null;

if (json) {
  console.log(JSON.stringify({ rows }));
} else {
  const f = (x: number | null, d = 2) => (x === null ? "—" : x.toFixed(d));
  const ratio = (a: number | null, b: number | null) => (a === null || b === null ? null : a / b);
  const w = Math.max(...rows.map((r) => r.name.length));
  console.log(
    `\n${"row".padEnd(w)}  ${"ours s".padStart(8)}  ${"stock s".padStart(8)}  ` +
      `${"torch s".padStart(8)}  ${"ours/stock".padStart(10)}  ${"ours/torch".padStart(10)}`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(w)}  ${f(r.ours_s).padStart(8)}  ${f(r.stock_s).padStart(8)}  ` +
        `${f(r.pytorch_s).padStart(8)}  ${f(ratio(r.ours_s, r.stock_s), 3).padStart(10)}  ` +
        `${f(ratio(r.ours_s, r.pytorch_s), 3).padStart(10)}`,
    );
  }
  for (const c of quick ? configs.slice(0, 1) : configs) {
    const get = (m: Method) => rows.find((r) => r.name === `${c.name} ${LABEL[m]}`);
    const odm = get("odm"), fp32 = get("fp32");
    if (!odm || !fp32) continue;
    const ours = ratio(odm.ours_s, fp32.ours_s);
    const torch = ratio(odm.pytorch_s, fp32.pytorch_s);
    console.log(
      `${c.name} ODM/FP32 step time: ours ${f(ours)}×` +
        (torch === null ? "" : `, PyTorch ${f(torch)}×`),
    );
  }
}
