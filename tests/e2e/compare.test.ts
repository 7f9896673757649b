/**
 * `deno task compare` end to end on the tiny fixture (EDSR 4 ch, 2 blocks, ×2, 3 steps) in a
 * child process: one table row per method plus FP32, `--json` prints only parseable JSON, the
 * files (and the comparison page) are written, and a second invocation reads the finished methods instead of training
 * them and resumes a half-done one from its checkpoint.
 */
import { assert, assertEquals } from "@std/assert";

const root = new URL("../../", import.meta.url).pathname;
const recipe = new URL("../fixtures/tiny-compare-recipe.ts", import.meta.url).pathname;

const compare = async (args: string[]) => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/cli/compare.ts", "--recipe", recipe, "--steps", "3", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  const stdout = new TextDecoder().decode(r.stdout);
  const stderr = new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`compare failed:\n${stdout}\n${stderr}`);
  return { stdout, stderr };
};

Deno.test("compare runs each method, prints one table, writes files, and resumes", async () => {
  const out = await Deno.makeTempDir();
  const methods = ["odm", "pams", "daq", "ddtb"];
  const { stdout } = await compare(["--methods", methods.join(","), "--out", out]);
  const rows = stdout.split("\n").filter((l) => /^\| (fp32|odm|pams|daq|ddtb):/.test(l));
  assertEquals(rows.map((l) => l.slice(2, l.indexOf(":"))), ["fp32", ...methods], stdout);
  for (const l of rows) {
    assertEquals(l.split(/(?<!\\)\|/).length, 8, l); // 6 columns
  }
  assert((await Deno.readTextFile(`${out}/compare.md`)).includes("| daq:"));
  const saved = JSON.parse(await Deno.readTextFile(`${out}/compare.json`));
  assertEquals(saved.rows.length, 5);
  for (const m of methods) assert((await Deno.stat(`${out}/${m}/summary.json`)).isFile, m);
  assert((await Deno.readTextFile(`${out}/report.html`)).includes("<svg"), "the comparison page");

  // Second invocation: the finished methods are read back, a half-done one (no summary yet)
  // continues from its checkpoint, and --json is the only stdout.
  await Deno.remove(`${out}/daq/summary.json`);
  await Deno.remove(`${out}/ddtb/summary.json`);
  const again = await compare(["--methods", methods.join(","), "--out", out, "--json"]);
  const parsed = JSON.parse(again.stdout) as {
    rows: Array<
      {
        method: string;
        psnr: number;
        ssim: number;
        storageK: number;
        bitopsT: number;
        flagged?: string;
      }
    >;
  };
  assertEquals(parsed.rows.map((r) => r.method), ["fp32", ...methods]);
  // The tiny models are barely trained: a score is a number or flagged with its reason.
  for (const r of parsed.rows) {
    for (const k of ["storageK", "bitopsT"] as const) {
      assert(Number.isFinite(r[k]), `${r.method}.${k}`);
    }
    for (const k of ["psnr", "ssim"] as const) {
      assert(Number.isFinite(r[k]) || (r[k] === null && r.flagged), `${r.method}.${k}`);
    }
  }
  assertEquals(parsed.rows.map((r) => r.psnr), saved.rows.map((r: { psnr: number }) => r.psnr));
  assert(again.stderr.includes("done before"), again.stderr);
  assert(!/training tiny-(odm|pams)/.test(again.stderr), "finished methods are not run again");
  assert(again.stderr.includes(`resumed from ${out}/daq/checkpoint.bin at step 3`), again.stderr);
  // DDTB picks the same gated layers again, so its checkpoint fits the rebuilt model.
  assert(again.stderr.includes(`resumed from ${out}/ddtb/checkpoint.bin at step 3`), again.stderr);
  // DAQ pays for its run-time statistics, DDTB for its gates.
  const by = Object.fromEntries(parsed.rows.map((r) => [r.method, r]));
  assert(by.daq.bitopsT > by.odm.bitopsT);
  assert(by.ddtb.storageK > by.odm.storageK && by.ddtb.bitopsT > by.odm.bitopsT);
});

Deno.test("compare --ablation runs Table 7 (a)–(e) and the global-cosine row (f)", async () => {
  const out = await Deno.makeTempDir();
  const { stdout } = await compare(["--ablation", "--out", out, "--json"]);
  const parsed = JSON.parse(stdout) as {
    rows: Array<{ method: string; psnr: number | null; flagged?: string }>;
  };
  assertEquals(parsed.rows.map((r) => r.method), ["fp32", "a", "b", "c", "d", "e", "f"]);
  assert(parsed.rows.every((r) => Number.isFinite(r.psnr) || (r.psnr === null && r.flagged)));
});
