/**
 * Command-line parsing (lib/cli/Args.ts): an unknown flag is named with the task's options
 * whether or not a value follows, a flag given twice that is not repeatable says so, repeatable
 * flags collect their values; and every task in lib/cli/ still parses its real options.
 */
import * as z from "zod";
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import * as Args from "../lib/cli/Args.ts";

const many = <T extends z.ZodType>(t: T) =>
  z.union([t, z.array(t)]).optional().transform((v) =>
    v === undefined ? [] : Array.isArray(v) ? v : [v]
  );

/** The shapes the tasks use: repeatable (eval), integer, boolean, enum with default. */
const Options = z.object({
  data: many(z.string()),
  steps: Args.int.optional(),
  resume: z.literal(true).optional(),
  ssim: z.enum(["same", "valid"]).default("same"),
}).strict();

const parse = (argv: string[]) => Args.parse(Options, argv, ["resume"]);

Deno.test("an unknown flag is named with the options, whether or not a value follows", () => {
  const want = "unknown option --bogus (options: --data, --steps, --resume, --ssim)";
  assertEquals(assertThrows(() => parse(["--bogus"])).message, want);
  assertEquals(assertThrows(() => parse(["--bogus", "3"])).message, want);
  assertEquals(assertThrows(() => parse(["--steps", "2", "--bogus=3"])).message, want);
});

Deno.test("a flag given twice is an error unless it is repeatable; repeatable ones collect", () => {
  assertEquals(
    assertThrows(() => parse(["--steps", "3", "--steps", "4"])).message,
    "option --steps given twice",
  );
  assertEquals(
    assertThrows(() => parse(["--resume", "--resume"])).message,
    "option --resume given twice",
  );
  assertEquals(parse(["--data", "a", "--data=b", "--steps", "3", "--resume"]), {
    data: ["a", "b"],
    steps: 3,
    resume: true,
    ssim: "same",
  });
  assertEquals(parse(["--data", "a"]).data, ["a"]);
  assertEquals(Args.acceptsArray(Options.shape.data), true);
  assertEquals(Args.acceptsArray(Options.shape.steps), false);
});

Deno.test("values: a missing one, one for a boolean, and a bad one are named", () => {
  assertEquals(assertThrows(() => parse(["--steps"])).message, "option --steps needs a value");
  assertEquals(
    assertThrows(() => parse(["--resume=yes"])).message,
    "option --resume takes no value",
  );
  assertStringIncludes(assertThrows(() => parse(["--ssim", "x"])).message, "--ssim: ");
  assertStringIncludes(assertThrows(() => parse(["steps"])).message, 'unexpected argument "steps"');
  // A schema that is not an object (no known flags): zod's unknown-key issue, whose path is
  // empty, reads as an option (not "--:").
  const loose = z.record(z.string(), z.string()).pipe(z.object({ a: z.string() }).strict());
  assertEquals(
    assertThrows(() => Args.parse(loose, ["--a", "x", "--b", "y"])).message,
    "invalid options:\n  ✖ unknown option --b",
  );
});

const root = new URL("../", import.meta.url).pathname;
const task = async (file: string, args: string[]) => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `lib/cli/${file}`, ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { QAT_BACKEND: "cpu" },
  }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout), err: d.decode(r.stderr) };
};

Deno.test("every task refuses an unknown flag by name and parses its real options", async () => {
  for (
    const [file, first] of [
      ["train.ts", "--recipe"],
      ["eval.ts", "--checkpoint"],
      ["cost.ts", "--model"],
      ["compare.ts", "--recipe"],
    ]
  ) {
    for (const args of [["--bogus"], ["--bogus", "1"]]) {
      const r = await task(file, args);
      assertEquals(r.code, 1, `${file} ${args}: ${r.err}`);
      assertStringIncludes(r.err, `error: unknown option --bogus (options: ${first}, `);
    }
  }
  // eval: --model, --data and --checkpoint repeat; the run gets as far as the first checkpoint.
  const e = await task("eval.ts", [
    "--model",
    "esrgan-slim",
    "--model",
    "esrgan-medium",
    "--pretrained",
    "--data",
    "/nonexistent/a",
    "--data",
    "/nonexistent/b",
    "--checkpoint",
    "/nonexistent/c1.bin",
    "--checkpoint",
    "/nonexistent/c2.bin",
    "--ssim",
    "valid",
  ]);
  assertEquals(e.code, 1);
  assertStringIncludes(e.err, "error: checkpoint /nonexistent/c1.bin: ");
  const twice = await task("eval.ts", ["--scale", "2", "--scale", "4"]);
  assertStringIncludes(twice.err, "error: option --scale given twice");
  // train: a repeated --steps is named, not NaN.
  const t = await task("train.ts", ["--steps", "1", "--steps", "2"]);
  assertStringIncludes(t.err, "error: option --steps given twice");
  // cost: its boolean flags and values parse (it runs, on cpu).
  const c = await task("cost.ts", [
    "--model",
    "edsr",
    "--bits",
    "2",
    "--concat",
    "--mean-shift",
    "--json",
  ]);
  assertEquals(c.code, 0, c.err);
  assertEquals(JSON.parse(c.out).wbits, 2);
  // compare: its boolean flags take no value.
  const m = await task("compare.ts", ["--methods", "nope", "--steps", "1", "--ablation=x"]);
  assertStringIncludes(m.err, "error: option --ablation takes no value");
});
