/**
 * Reports of a tiny training run (tests/fixtures/tiny-recipe.ts, trained once in a child
 * process): `deno task report` writes a page with every section and one SVG per figure, and
 * each chart's data equals the numbers it was computed from — metrics.jsonl for the curves,
 * the recipe for the schedule, a float64 scalar quantizer on the checkpoint's weights for
 * Fig. 3a, the checkpoint's activation range for Fig. 1 / 5, `Loss.mismatch` for the per-layer
 * mismatch. A folder without metrics, a truncated checkpoint and an unknown `--layer` fail
 * naming the file (or the layers). The comparison page (`Report.writeCompare`) is checked on
 * a comparison folder made of copies of the tiny run. Where Debian's chromium is installed,
 * the page is opened headless and its screenshot must show the charts.
 */
import * as tf from "@tensorflow/tfjs";
import { Effect } from "effect";
import { decode } from "fast-png";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertStringIncludes,
} from "@std/assert";
import * as Backend from "../lib/Backend.ts";
import * as Checkpoint from "../lib/Checkpoint.ts";
import * as Figures from "../lib/Figures.ts";
import * as Iqa from "../lib/Iqa.ts";
import * as Loss from "../lib/Loss.ts";
import * as Nn from "../lib/Nn.ts";
import * as Report from "../lib/Report.ts";
import * as Resize from "../lib/Resize.ts";
import * as Tree from "../lib/Tree.ts";
import { roundHalfEven } from "./_setup.ts";
import { CHROMIUM } from "./e2e/_page.ts";

const root = new URL("../", import.meta.url).pathname;
const recipeFile = new URL("./fixtures/tiny-recipe.ts", import.meta.url).pathname;
const env = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" };

const run = async (args: string[]) => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env,
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
};

/** The tiny run, trained once for all tests of this file. */
let trained: Promise<string> | undefined;
const tinyRun = () =>
  trained ??= (async () => {
    const out = await Deno.makeTempDir({ prefix: "report-run-" });
    const r = await run(["lib/cli/train.ts", "--recipe", recipeFile, "--out", out]);
    if (r.code !== 0) throw new Error(`training failed:\n${r.stdout}\n${r.stderr}`);
    return out;
  })();

const provide = <A, E>(e: Effect.Effect<A, E, Backend.Backend>) =>
  e.pipe(Effect.provide(Backend.layer({ log: false })));

const metricsOf = async (dir: string) =>
  (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));

/** The data of every figure of a page: `{ <figure id>: datasets }`. */
const pageData = (html: string): Record<string, Record<string, Array<Record<string, unknown>>>> =>
  Object.fromEntries(
    [...html.matchAll(/<script type="application\/json" id="data-([^"]+)">(.*?)<\/script>/gs)]
      .map((m) => [m[1], JSON.parse(m[2])]),
  );

/** A copy of a run folder. */
const copyRun = async (from: string, to: string) => {
  await Deno.mkdir(to, { recursive: true });
  for (const f of ["metrics.jsonl", "summary.json", "checkpoint.bin"]) {
    await Deno.copyFile(`${from}/${f}`, `${to}/${f}`);
  }
};

/** float64 reference of Eq. 1, symmetric: the relative error of quantizing `w` to [−u, u]. */
function referenceQe(w: ArrayLike<number>, u: number, bits: number): number {
  const s = (2 * u) / (2 ** bits - 1);
  let err = 0, norm = 0;
  for (let i = 0; i < w.length; i++) {
    const c = Math.min(Math.max(w[i], -u), u);
    const q = roundHalfEven((c + u) / s) * s - u;
    err += (w[i] - q) ** 2;
    norm += w[i] ** 2;
  }
  return Math.sqrt(err / norm);
}

/** numpy's linear-interpolation quantile, float64. */
function referenceQuantile(v: ArrayLike<number>, p: number): number {
  const s = Array.from(v).sort((a, b) => a - b);
  const pos = p * (s.length - 1);
  const lo = Math.floor(pos);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (pos - lo);
}

const SECTIONS = ["findings", "training", "gradients", "activations", "weights", "table", "recipe"];
const FIGURES = [
  "loss",
  "lr",
  "fig2b",
  "fig2c",
  "mismatch",
  "fig1",
  "fig5",
  "fig3a",
  "fig3b",
  "fig3c",
];

Deno.test("the pure parts: quantiles, histograms, grids, schedule, windows, SVG ids", () => {
  assertEquals(Report.quantileSorted([1, 2, 3, 4], 0.25), 1.75); // numpy.quantile
  assertEquals(Report.quantileSorted([5], 0.99), 5);
  const s = Report.spread([3, 1, 2, 5, 4]);
  assertEquals([s.min, s.q1, s.median, s.q3, s.max], [1, 2, 3, 4, 5]);
  const h = Report.histogram([0, 0.5, 1, 1, 2, 7], 0, 2, 2);
  assertEquals(h, [{ x0: 0, x1: 1, count: 2 }, { x0: 1, x1: 2, count: 3 }]); // 7 is outside
  for (const [k, v] of Report.gridLevels(-1, 1, 2).entries()) {
    assertAlmostEquals(v, [-1, -1 / 3, 1 / 3, 1][k], 1e-15);
  }
  const lr = Report.schedule({
    lrWeights: 1e-4,
    lrQuant: 1e-3,
    decayEvery: 10,
    decayFactor: 0.5,
    steps: 25,
  });
  assertEquals(lr.filter((r) => r.group === "weights").map((r) => [r.step, r.lr]), [
    [0, 1e-4],
    [10, 5e-5],
    [20, 2.5e-5],
    [25, 2.5e-5],
  ]);
  // An 8×8 image whose reference differs only in the window at (4, 2).
  const hr = { width: 8, height: 8, data: new Uint8Array(8 * 8 * 3) };
  const ref = { width: 8, height: 8, data: new Uint8Array(8 * 8 * 3) };
  for (let y = 2; y < 5; y++) for (let x = 4; x < 7; x++) ref.data[(y * 8 + x) * 3] = 200;
  assertEquals(Report.hardestWindow(hr, ref, 3, 1), { x: 4, y: 2 });
  assertEquals(
    Figures.prefixIds('<clipPath id="clip3"/><g clip-path="url(#clip3)"/>', "fig1"),
    '<clipPath id="fig1-clip3"/><g clip-path="url(#fig1-clip3)"/>',
  );
});

Deno.test("a chart renders to SVG headless, with its data drawn", async () => {
  const f = Figures.figure({
    id: "t",
    title: "t",
    caption: "",
    datasets: { d: [{ x: 0, y: 1 }, { x: 1, y: 3 }, { x: 2, y: 2 }] },
    view: Figures.layer({}, Figures.line({ data: "d", x: { field: "x" }, y: { field: "y" } })),
  });
  const svg = await Figures.render(f);
  assert(svg.startsWith("<svg"), svg.slice(0, 80));
  assertStringIncludes(svg, 'class="mark-line');
  assertEquals((f.spec as { datasets: unknown }).datasets, f.datasets);
});

Deno.test("deno task report: every section and figure; each chart's data equals its numbers", async () => {
  const dir = await tinyRun();
  const metrics = await metricsOf(dir);
  // The ratio chart is drawn where the run logs ‖λ_M·sim·g_M‖/‖g_R‖.
  const logsRatio = metrics.some((m) => m.regRatio > 0);
  const figures = [...FIGURES, ...(logsRatio ? ["ratio"] : [])];
  const r = await run(["lib/cli/report.ts", dir]);
  assertEquals(r.code, 0, `${r.stdout}\n${r.stderr}`);
  assertStringIncludes(r.stdout, `wrote ${dir}/report.html and ${figures.length} figures`);
  const html = await Deno.readTextFile(`${dir}/report.html`);

  // Self-contained: no script to run, nothing fetched.
  assert(!/<(link|img|iframe)\b[^>]*(src|href)="(https?:)?\/\//.test(html), "no remote resource");
  assert(!/<script(?![^>]*type="application\/json")/.test(html), "no executable script");
  for (const s of SECTIONS) assertStringIncludes(html, `<section id="${s}">`);
  const data = pageData(html);
  assertEquals(Object.keys(data).sort(), [...figures].sort());
  for (const id of figures) {
    const fig = html.slice(html.indexOf(`<figure id="${id}">`));
    assert(fig.indexOf("<svg") < fig.indexOf("</figure>"), `${id}: inline SVG`);
    const svg = await Deno.readTextFile(`${dir}/report/${id}.svg`);
    assert(svg.startsWith("<svg"), id);
    const spec = JSON.parse(await Deno.readTextFile(`${dir}/report/${id}.vl.json`));
    assertEquals(spec.datasets, data[id], `${id}: the SVG's spec holds the page's data`);
  }

  // The curves are metrics.jsonl.
  assertEquals(
    data.loss.metrics,
    metrics.map((m) => ({ step: m.step, l1: m.l1, mismatch: m.mismatch, distill: m.distill })),
  );
  assertEquals(data.fig2b.cosine, metrics.map((m) => ({ step: m.step, cosine: m.cosine })));
  assertEquals(data.fig2c.conflict, metrics.map((m) => ({ step: m.step, conflict: m.conflict })));
  if (logsRatio) {
    assertEquals(data.ratio.ratio, metrics.map((m) => ({ step: m.step, regRatio: m.regRatio })));
  }

  // The schedule is the recipe's (tiny: lr 1e-2 / 1e-3, no decay within 12 steps).
  const ckpt = await Effect.runPromise(Checkpoint.read(`${dir}/checkpoint.bin`));
  const t = (ckpt.recipe as { train: Record<string, number> }).train;
  for (const row of data.lr.schedule) {
    const base = row.group === "weights" ? t.lrWeights : t.lrQuant;
    assertEquals(row.lr, base * t.decayFactor ** Math.floor((row.step as number) / t.decayEvery));
  }
  assertEquals(data.lr.schedule.map((r) => r.step), [0, t.steps, 0, t.steps]);

  // Fig. 3a: a float64 scalar quantizer on the checkpoint's weights.
  const j = (ckpt.recipe as { quant: { percentile: number } }).quant.percentile;
  const errors = data.fig3a.errors;
  const layers = [...new Set(errors.map((e) => e.layer as string))];
  assertEquals(layers, ["body.blocks.0.conv1", "body.blocks.0.conv2"]);
  for (const layer of layers) {
    const w = await ckpt.params.get(`${layer}.weight`)!.data();
    const gamma = (await ckpt.params.get(`${layer}.wq.gamma`)!.data())[0];
    const absW = Array.from(w, Math.abs);
    const u = {
      max: Math.max(...absW),
      percentile: referenceQuantile(absW, j),
      trained: referenceQuantile(absW, j) * gamma,
    };
    for (const bits of [4, 2]) {
      for (const policy of ["max", "percentile", "trained"] as const) {
        const row = errors.find((e) => e.layer === layer && e.bits === bits && e.policy === policy);
        assert(row, `${layer} ${policy} W${bits}`);
        assertAlmostEquals(row.u as number, u[policy], 1e-6 * u[policy], `${layer} ${policy} u`);
        const qe = referenceQe(w, u[policy], bits);
        assertAlmostEquals(row.qe as number, qe, 2e-3 * qe, `${layer} ${policy} W${bits} QE`);
      }
    }
  }

  // Fig. 1 and 5 draw the checkpoint's activation range of the chosen layer.
  const chosen = data.mismatch.layers.find((l) => l.selected)!.layer as string;
  const lower = (await ckpt.params.get(`${chosen}.aq.lower`)!.data())[0];
  const upper = (await ckpt.params.get(`${chosen}.aq.upper`)!.data())[0];
  assertEquals(data.fig1.bounds.map((b) => b.y), [lower, upper]);
  assertEquals(data.fig5.bounds.map((b) => b.x), [lower, upper]);
  assertEquals(data.fig5.grids.length, 16); // A4: 16 levels from l_a to u_a
  assertAlmostEquals(data.fig5.grids[15].x as number, upper, 1e-5);
  for (const series of new Set(data.fig5.bins.map((b) => b.series))) {
    const total = data.fig5.bins.filter((b) => b.series === series)
      .reduce((a, b) => a + (b.fraction as number), 0);
    assertAlmostEquals(total, 1, 1e-9, `${series}: every value in a bin`);
  }
  for (const c of data.fig1.channels) {
    const v = ["min", "p01", "q1", "median", "q3", "p99", "max"].map((k) => c[k] as number);
    assertEquals(v, [...v].sort((a, b) => a - b), `channel ${c.channel}: ordered quantiles`);
  }
  assertEquals(data.fig1.images.map((i) => i.image), ["rocket-48", "squirrel-60x48"]);

  // The per-layer mismatch adds up to L_M of the same forward pass (Loss.mismatch).
  const model = await Effect.runPromise(Report.loadTrained(`${dir}/checkpoint.bin`));
  const { pairs } = await Effect.runPromise(Report.evalPairs(model.recipe, 4));
  const probe = Report.probeOf(pairs);
  const lm = tf.tidy(() => {
    const taps: Nn.Tap[] = [];
    const x = tf.tensor4d(probe.data, [probe.names.length, probe.side, probe.side, 3]);
    model.model.apply(model.params, x, Nn.context("eval", { tap: (t) => taps.push(t) }));
    return Loss.mismatch(taps, { detach: true });
  });
  const expected = (await lm.data())[0];
  lm.dispose();
  const sum = data.mismatch.layers.reduce((a, l) => a + (l.mismatch as number), 0);
  assertAlmostEquals(sum, expected, 1e-4 * expected);
  tf.dispose([...ckpt.params.values(), ...ckpt.opt.values()]);
  Tree.dispose(model.params);
});

Deno.test("a folder without metrics.jsonl, or with a truncated checkpoint, is named in the error", async () => {
  const dir = await tinyRun();
  const noMetrics = await Deno.makeTempDir({ prefix: "report-nometrics-" });
  await Deno.copyFile(`${dir}/checkpoint.bin`, `${noMetrics}/checkpoint.bin`);
  const e1 = await Effect.runPromise(Effect.flip(provide(Report.write(noMetrics))));
  assertStringIncludes(e1.message, `${noMetrics}/metrics.jsonl: not found`);
  // The task prints one error line and exits 1.
  const cli = await run(["lib/cli/report.ts", noMetrics]);
  assertEquals(cli.code, 1);
  assertStringIncludes(cli.stderr, `error: ${noMetrics}/metrics.jsonl: not found`);

  const truncated = await Deno.makeTempDir({ prefix: "report-truncated-" });
  await copyRun(dir, truncated);
  const bytes = await Deno.readFile(`${truncated}/checkpoint.bin`);
  await Deno.writeFile(`${truncated}/checkpoint.bin`, bytes.subarray(0, bytes.length - 1000));
  const e2 = await Effect.runPromise(Effect.flip(provide(Report.write(truncated))));
  assertStringIncludes(e2.message, `${truncated}/checkpoint.bin`);
  assertStringIncludes(e2.message, "truncated data");

  const e3 = await Effect.runPromise(
    Effect.flip(provide(Report.write(dir, { layer: "body.nope", out: `${truncated}/x.html` }))),
  );
  assertStringIncludes(e3.message, '--layer "body.nope" is not a quantized layer');
  assertStringIncludes(e3.message, "body.blocks.0.conv1, body.blocks.0.conv2");
});

Deno.test("--layer picks the layer of Fig. 1, 3b–c and 5", async () => {
  const dir = await tinyRun();
  const out = `${await Deno.makeTempDir({ prefix: "report-layer-" })}/page.html`;
  const w = await Effect.runPromise(
    provide(Report.write(dir, { layer: "body.blocks.0.conv1", images: 1, out })),
  );
  assertEquals(w.layer, "body.blocks.0.conv1");
  assert((await Deno.stat(out.replace(/\.html$/, "/fig3b.svg"))).isFile);
  const data = pageData(await Deno.readTextFile(out));
  assertEquals(data.mismatch.layers.filter((l) => l.selected).map((l) => l.layer), [
    "body.blocks.0.conv1",
  ]);
  assertEquals(data.fig1.images.map((i) => i.image), ["rocket-48"]);
  // No tensor is left behind: a second report ends with as many tensors as the first.
  const before = tf.memory().numTensors;
  await Effect.runPromise(provide(Report.write(dir, { images: 1, out })));
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("the ratio chart holds the logged regRatio, and is left out, saying so, where none is logged", async () => {
  const dir = await tinyRun();
  const metrics = await metricsOf(dir);
  const withRatio = await Deno.makeTempDir({ prefix: "report-ratio-" });
  await copyRun(dir, withRatio);
  const ratios = metrics.map((_, i) => 1e-3 * (i + 1));
  await Deno.writeTextFile(
    `${withRatio}/metrics.jsonl`,
    metrics.map((m, i) => JSON.stringify({ ...m, regRatio: ratios[i] }) + "\n").join(""),
  );
  const w = await Effect.runPromise(provide(Report.write(withRatio, { images: 1 })));
  assert(w.figures.includes(`${withRatio}/report/ratio.svg`), w.figures.join(", "));
  const html = await Deno.readTextFile(w.page);
  assert(!html.includes("not logged by this run"));
  assertEquals(
    pageData(html).ratio.ratio,
    metrics.map((m, i) => ({ step: m.step, regRatio: ratios[i] })),
  );

  const without = await Deno.makeTempDir({ prefix: "report-noratio-" });
  await copyRun(dir, without);
  await Deno.writeTextFile(
    `${without}/metrics.jsonl`,
    metrics.map(({ regRatio: _, ...m }) => JSON.stringify(m) + "\n").join(""),
  );
  const w2 = await Effect.runPromise(provide(Report.write(without, { images: 1 })));
  assert(!w2.figures.some((f) => f.endsWith("/ratio.svg")), w2.figures.join(", "));
  assertStringIncludes(
    await Deno.readTextFile(w2.page),
    "not logged by this run (its metrics.jsonl has no regRatio field)",
  );
});

Deno.test("Report.writeCompare: table, curves, Fig. 4 crops with PSNR, Fig. 5 across ablation rows", async () => {
  const dir = await tinyRun();
  const cmp = await Deno.makeTempDir({ prefix: "report-compare-" });
  await copyRun(dir, `${cmp}/a`);
  await copyRun(dir, `${cmp}/e`);
  const summary = JSON.parse(await Deno.readTextFile(`${dir}/summary.json`));
  const psnr = (s: { psnr: number | null; flagged?: Array<{ psnr: number }> }) =>
    s.psnr ?? s.flagged![0].psnr;
  const row = (method: string, label: string) => ({
    method,
    label,
    wbits: 4,
    abits: 4,
    psnr: summary.qat.psnr,
    ssim: summary.qat.ssim,
    storageK: 1,
    bitopsT: 2,
  });
  await Deno.writeTextFile(
    `${cmp}/compare.json`,
    JSON.stringify({
      setup: "tiny",
      rows: [
        { ...row("fp32", "full precision"), wbits: 32, abits: 32 },
        row("a", "(a) baseline"),
        row("e", "(e) ODM"),
      ],
    }),
  );
  const w = await Effect.runPromise(provide(Report.writeCompare(cmp)));
  assertEquals(w.page, `${cmp}/report.html`);
  const html = await Deno.readTextFile(w.page);
  for (const s of ["findings", "table", "curves", "crops", "ablation"]) {
    assertStringIncludes(html, `<section id="${s}">`);
  }
  assertStringIncludes(html, "<td>a: (a) baseline</td>");
  const data = pageData(html);
  assertEquals(Object.keys(data).sort(), ["curves", "fig4", "fig5"]);
  const metrics = await metricsOf(dir);
  assertEquals(
    data.curves.curves.filter((c) => c.method === "e").map((c) => [c.step, c.l1, c.mismatch]),
    metrics.map((m) => [m.step, m.l1, m.mismatch]),
  );
  // Fig. 5: one panel per ablation row, each with its range.
  assertEquals(data.fig5.bounds.map((b) => b.row), [
    "(a) baseline",
    "(a) baseline",
    "(e) ODM",
    "(e) ODM",
  ]);

  // Fig. 4: HR, bicubic, FP32 and both methods for two images, PSNR as the tables compute it.
  const crops = data.fig4 as unknown as Report.Crop[];
  assertEquals(crops.map((c) => c.model), [
    ...["HR", "bicubic", "FP32", "a", "e"],
    ...["HR", "bicubic", "FP32", "a", "e"],
  ]);
  assertEquals(html.match(/<img src="data:image\/png;base64,/g)?.length, 10);
  const model = await Effect.runPromise(Report.loadTrained(`${dir}/checkpoint.bin`));
  Tree.dispose(model.params);
  const { pairs } = await Effect.runPromise(Report.evalPairs(model.recipe, 2));
  const s = model.recipe.model.scale;
  const bicubic = Iqa.psnr(Resize.bicubicUpscale(pairs[0].lr, s), pairs[0].hr, { shave: s });
  assertEquals(crops[1].psnr, bicubic);
  // The tiny recipe evaluates on its first image: the run's own FP32 and QAT scores.
  assertAlmostEquals(crops[2].psnr, psnr(summary.fp32), 1e-9);
  assertAlmostEquals(crops[3].psnr, psnr(summary.qat), 1e-9);
});

const chromium = CHROMIUM;
if (!chromium) {
  console.log("Report.test.ts: chromium is not installed; the screenshot test is skipped");
}

Deno.test({
  name: "the page opened offline in headless chromium shows its charts",
  ignore: !chromium,
  fn: async () => {
    const dir = await tinyRun();
    if (!(await Deno.stat(`${dir}/report.html`).catch(() => undefined))) {
      await Effect.runPromise(provide(Report.write(dir)));
    }
    const shot = `${await Deno.makeTempDir({ prefix: "report-shot-" })}/page.png`;
    const r = await new Deno.Command(chromium!, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--user-data-dir=" + (await Deno.makeTempDir({ prefix: "report-chromium-" })),
        `--screenshot=${shot}`,
        "--window-size=1200,3000",
        `file://${dir}/report.html`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
    const png = decode(await Deno.readFile(shot));
    assertEquals([png.width, png.height], [1200, 3000]);
    // The charts drew: many non-white pixels, and the charts' blue (#4c78a8) among them.
    const ch = png.channels;
    let ink = 0, blue = 0;
    for (let i = 0; i < png.data.length; i += ch) {
      const [red, g, b] = [png.data[i], png.data[i + 1], png.data[i + 2]];
      if (red < 200 || g < 200 || b < 200) ink++;
      if (Math.abs(red - 0x4c) < 24 && Math.abs(g - 0x78) < 24 && Math.abs(b - 0xa8) < 24) blue++;
    }
    const n = png.width * png.height;
    assertGreater(ink / n, 0.02, `ink ${ink} of ${n} pixels`);
    assertGreater(blue, 2000, `${blue} pixels in the charts' blue`);
  },
});
