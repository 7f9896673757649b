/**
 * Prepared folders: the copies hold exactly the decoded HR image and its MATLAB-bicubic LR
 * image (or the dataset's own LR file); batches streamed from them equal the in-memory ones,
 * found beside the HR folder or given directly (even with the source gone); a second run keeps
 * what is current and remakes what is missing, cut off or stale; corrupt and unusable files are
 * named, counted and left out of runs too; the task's output and exit code.
 */
import { Effect, Exit } from "effect";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import * as Data from "../lib/Data.ts";
import * as Image from "../lib/Image.ts";
import * as Loader from "../lib/Loader.ts";
import * as Prepare from "../lib/Prepare.ts";
import * as Resize from "../lib/Resize.ts";
import * as Ppm from "../lib/internal/ppm.ts";
import { collect, folder, noise } from "./_data.ts";
import "./_setup.ts";

const readPpm = async (path: string) => {
  const h = await Ppm.readHeader(path);
  assert(h, `${path} is a whole PPM`);
  return Image.make(h.width, h.height, await Ppm.readRows(path, h, 0, h.height));
};

const images = () => ({
  "a.png": noise(41, 30, 1), // odd sizes: the LR is the bicubic of the HR cropped to ×2
  "b.png": noise(24, 37, 2),
  "c.png": noise(30, 30, 3),
});

const run = (dir: string, scale: number, out?: string) =>
  Effect.runPromise(Prepare.prepare(dir, { scale, out, workers: 1 }));

Deno.test("prepared copies are the decoded HR and its bicubic LR; batches from them equal the in-memory ones", async () => {
  const root = await Deno.makeTempDir();
  const src = images();
  const dir = await folder(`${root}/photos`, src);
  const progress: number[] = [];
  const r = await Effect.runPromise(
    Prepare.prepare(dir, { scale: 2 }, { onProgress: (p) => progress.push(p.done) }),
  );
  assertEquals(r.out, `${root}/photos_prepared`);
  assertEquals([r.total, r.made, r.kept, r.skipped.length], [3, 3, 0, 0]);
  assertEquals(progress.sort(), [1, 2, 3]);
  for (const [name, hr] of Object.entries(src)) {
    const stem = name.replace(".png", "");
    assertEquals(await readPpm(`${r.out}/HR/${stem}.ppm`), hr);
    // The oracle: MATLAB bicubic (tested against NumPy in Resize.test.ts) of the cropped HR.
    const lr = await readPpm(`${r.out}/X2/${stem}x2.ppm`);
    assertEquals(lr, Resize.downscale(Image.modcrop(hr, 2), 2));
  }
  // A run given the HR folder finds the prepared folder; given the prepared folder, too.
  const mem = await Effect.runPromise(Data.load(dir, 2));
  const opts = { batch: 4, patch: 6, seed: 21 };
  const lines: string[] = [];
  for (const given of [dir, r.out]) {
    const s = await Effect.runPromise(Loader.open(given, 2, { log: (l) => lines.push(l) }));
    const got = await collect(s.batches(opts, 3, 15));
    for (const b of got) {
      assertEquals(b.lr, Data.batch(mem, opts, b.index).lr, `batch ${b.index} from ${given}`);
      assertEquals(b.hr, Data.batch(mem, opts, b.index).hr, `batch ${b.index} from ${given}`);
    }
  }
  assertStringIncludes(lines[0], `training images: 3 in ${dir}, 3 prepared in ${r.out}`);
  assertStringIncludes(lines[1], "data: 12 batches");
  assertStringIncludes(lines[1], "48 patches read from prepared copies");
  // Another scale shares the HR copies (read, not decoded again) and adds its LR ones.
  const x3 = await run(dir, 3);
  assertEquals(x3.made, 3);
  const m = await Effect.runPromise(Prepare.readManifest(r.out));
  assertEquals(Object.keys(m!.scales).sort(), ["2", "3"]);
  assertEquals(
    await readPpm(`${r.out}/X3/ax3.ppm`),
    Resize.downscale(Image.modcrop(src["a.png"], 3), 3),
  );
  // With the source gone, the prepared folder alone still trains, with the same batches.
  await Deno.remove(dir, { recursive: true });
  const alone = await Effect.runPromise(Loader.open(r.out, 2));
  assertEquals(alone.files, Object.keys(src).map((n) => `${dir}/${n}`));
  const b = (await collect(alone.batches(opts, 5, 6)))[0];
  assertEquals(b.hr, Data.batch(mem, opts, 5).hr);
});

Deno.test("prepare again: current files are kept, missing, cut-off and stale ones remade", async () => {
  const root = await Deno.makeTempDir();
  const src = images();
  const dir = await folder(`${root}/photos`, src);
  const out = `${root}/elsewhere`;
  const first = await run(dir, 2, out);
  assertEquals(first.made, 3);
  // As if interrupted: a copy never written (writes are atomic: a file is whole or absent),
  // one cut off by a full disk, a temporary file left behind; and a source changed since.
  await Deno.remove(`${out}/X2/ax2.ppm`);
  const hrB = `${out}/HR/b.ppm`;
  await Deno.truncate(hrB, 100);
  await Deno.writeTextFile(`${out}/X2/cx2.ppm.tmp`, "half");
  const lrC = await Deno.stat(`${out}/X2/cx2.ppm`);
  const changed = noise(30, 30, 99);
  await new Promise((r) => setTimeout(r, 20)); // a later modification time
  await Image.write(`${dir}/c.png`, changed);
  const again = await run(dir, 2, out);
  assertEquals([again.made, again.kept, again.skipped.length], [3, 0, 0]);
  assertEquals(
    await readPpm(`${out}/X2/ax2.ppm`),
    Resize.downscale(Image.modcrop(src["a.png"], 2), 2),
  );
  assertEquals(await readPpm(hrB), src["b.png"]);
  assertEquals(await readPpm(`${out}/HR/c.ppm`), changed);
  assert((await Deno.stat(`${out}/X2/cx2.ppm`)).mtime! > lrC.mtime!);
  // Nothing left to do: everything kept.
  const third = await run(dir, 2, out);
  assertEquals([third.made, third.kept], [0, 3]);
  // A run knows the copies only through the folder it was given (not beside the HR folder).
  const lines: string[] = [];
  await Effect.runPromise(Loader.open(dir, 2, { log: (l) => lines.push(l) }));
  assertStringIncludes(lines[0], "3 decoded on demand");
  // A source changed after preparing is decoded on demand, the others still read.
  await new Promise((r) => setTimeout(r, 20));
  await Image.write(`${dir}/a.png`, noise(41, 30, 7));
  lines.length = 0;
  await Effect.runPromise(Loader.open(out, 2, { log: (l) => lines.push(l) }));
  assertStringIncludes(lines[0], "2 prepared in");
  assertStringIncludes(lines[0], "1 decoded on demand");
  // Another folder's preparation is refused, naming both.
  const other = await folder(`${root}/other`, { "x.png": noise(8, 8, 1) });
  const refused = await Effect.runPromiseExit(Prepare.prepare(other, { scale: 2, out }));
  assert(Exit.isFailure(refused));
  assertStringIncludes(
    String(refused.cause),
    `it holds the preparation of ${await Deno.realPath(dir)}`,
  );
});

Deno.test("corrupt and unusable files are named, counted and left out of runs too; own LR files are copied", async () => {
  const root = await Deno.makeTempDir();
  const hrDir = await folder(`${root}/DIV2K_train_HR`, {
    "0001.png": noise(24, 20, 1),
    "0002.png": noise(20, 22, 2),
    "0004.png": noise(20, 20, 4),
  });
  const own = noise(12, 10, 11);
  await folder(`${root}/DIV2K_train_LR_bicubic/X2`, {
    "0001x2.png": own,
    "0002x2.png": noise(10, 11, 12),
    "0004x2.png": noise(9, 9, 13), // 10×10 expected
  });
  const bytes = Image.encodePng(noise(20, 20, 3));
  bytes[bytes.length - 30] ^= 0xff; // damaged pixel data (its CRC fails)
  await Deno.writeFile(`${hrDir}/0003.png`, bytes);
  await Image.write(`${root}/DIV2K_train_LR_bicubic/X2/0003x2.png`, noise(10, 10, 14));
  const named: string[] = [];
  const r = await Effect.runPromise(
    Prepare.prepare(hrDir, { scale: 2, workers: 1 }, { onSkip: (p) => named.push(p.file) }),
  );
  assertEquals(r.skipped.map((p) => p.file), [`${hrDir}/0003.png`, `${hrDir}/0004.png`]);
  assertEquals(named, r.skipped.map((p) => p.file));
  assertStringIncludes(r.skipped[0].reason, "corrupt PNG");
  assertStringIncludes(r.skipped[1].reason, "is 9x9; expected 10x10");
  assertEquals(await readPpm(`${r.out}/X2/0001x2.ppm`), own);
  const skipped: Array<[string, string]> = [];
  const s = await Effect.runPromise(
    Loader.open(hrDir, 2, { onSkip: (f, why) => skipped.push([f, why]) }),
  );
  assertEquals(s.files, [`${hrDir}/0001.png`, `${hrDir}/0002.png`]);
  assertEquals(skipped.map(([f]) => f), [`${hrDir}/0003.png`, `${hrDir}/0004.png`]);
  assertStringIncludes(skipped[0][1], "corrupt PNG");
  assertStringIncludes(skipped[0][1], "(found by deno task prepare)");

  // The task: the skipped files named, a count, exit code 2; a second run keeps the rest.
  const task = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "lib/cli/prepare.ts", ...args],
      cwd: new URL("../", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
    }).output();
  const out = await task([hrDir, "--scale", "2", "--workers", "1"]);
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 2, text);
  assertStringIncludes(text, `warning: ${hrDir}/0003.png: corrupt PNG`);
  assertStringIncludes(
    text,
    `prepared 2 of 4 images of ${await Deno.realPath(hrDir)} at ×2 in ${r.out} ` +
      "(0 made, 2 already there)",
  );
  assertStringIncludes(text, "; 2 skipped:");
  assertStringIncludes(text, `a run whose data.train is ${hrDir} uses it`);
  const bad = await task([hrDir, "--scale", "two"]);
  assertEquals(bad.code, 1);
  assertStringIncludes(new TextDecoder().decode(bad.stderr), "--scale");
});
