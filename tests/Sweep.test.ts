/**
 * Sweeps (lib/Sweep.ts, lib/SweepEngine.ts, lib/internal/sqlite.ts) without training: a grid's
 * cells are validated before any work, naming the cell and the field (the cell schema's and the
 * recipe's); `product` is the cartesian product; the config hash is stable across key order and
 * changes with what makes another run; the tables have the compare layout; the `node:sqlite`
 * `SqlClient` runs statements and transactions; the embedded store's lock refuses a second
 * holder, naming the first; a cell process's error text is found in its output.
 */
import { Effect } from "effect";
import * as SqlClient from "effect/sql/SqlClient";
import {
  assert,
  assertEquals,
  assertGreater,
  assertNotEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import * as Recipe from "../lib/Recipe.ts";
import * as Sweep from "../lib/Sweep.ts";
import * as SweepEngine from "../lib/SweepEngine.ts";
import type * as Train from "../lib/Train.ts";
import * as Sqlite from "../lib/internal/sqlite.ts";

const tiny = new URL("./fixtures/tiny-recipe.ts", import.meta.url).pathname;

const cellsOf = (g: Sweep.GridInput, out = "/tmp/sweep-test-out") =>
  Sweep.cells(Sweep.parse(g), { source: "(test grid)", out });

Deno.test("product is every combination, the last axis fastest", () => {
  const cells = Sweep.product({
    recipe: ["a"],
    method: ["odm", "lsq"],
    bits: [2, 4],
    seed: [0],
  });
  assertEquals(cells.map((c) => `${c.method}/${c.bits}`), ["odm/2", "odm/4", "lsq/2", "lsq/4"]);
  assertEquals(cells.every((c) => c.recipe === "a" && c.seed === 0), true);
});

Deno.test("a grid's cells become validated recipes with absolute paths and unique folders", async () => {
  const loaded = await cellsOf({
    name: "g",
    steps: 3,
    cells: [
      ...Sweep.product({ recipe: [tiny], method: ["odm", "lsq"], bits: [4, 2] }),
      { recipe: tiny, bits: { w: 4, a: 8 }, seed: 7, steps: 5, table: "other", name: "mine" },
    ],
  });
  assertEquals(loaded.cells.map((c) => c.key), [
    "edsr-x2/w4a4-odm-s5",
    "edsr-x2/w2a2-odm-s5",
    "edsr-x2/w4a4-lsq-s5",
    "edsr-x2/w2a2-lsq-s5",
    "other/mine",
  ]);
  const r = await Recipe.fromJSON(loaded.cells[4].recipe, "test");
  assertEquals([r.quant.wbits, r.quant.abits, r.train.seed, r.train.steps], [4, 8, 7, 5]);
  assertEquals(r.method.name, "odm"); // "recipe": the base recipe's own method
  const lsq = await Recipe.fromJSON(loaded.cells[2].recipe, "test");
  assertEquals([lsq.method.name, lsq.train.steps], ["lsq", 3]);
  assert(lsq.data.train.startsWith("/"), lsq.data.train);
  assertEquals(loaded.cells[0].dir, "/tmp/sweep-test-out/edsr-x2/w4a4-odm-s5");
  assertEquals(new Set(loaded.cells.map((c) => c.hash)).size, 5);
});

Deno.test("an invalid cell is refused before any work, naming the cell and the field", async () => {
  // The cell schema: a bad bit-width, an unknown method, an unknown field.
  const e = assertThrows(
    () =>
      Sweep.parse({
        name: "g",
        cells: [
          { recipe: tiny },
          { recipe: tiny, bits: 9 },
          { recipe: tiny, method: "nope" },
          { recipe: tiny, seeds: [1] },
        ],
      }, "grid.ts"),
    Sweep.GridInvalid,
  );
  assertStringIncludes(e.message, "invalid grid grid.ts:");
  assertStringIncludes(e.message, "✖ cells[1].bits: ");
  assertStringIncludes(e.message, "✖ cells[2].method: ");
  assertStringIncludes(e.message, "✖ cells[3]: Unrecognized key");
  assert(!e.message.includes("cells[0]"), e.message);
  // The cell's recipe: an option the architecture does not have, a missing recipe file.
  const r = await assertRejects(
    () =>
      cellsOf({
        name: "g",
        cells: [
          { recipe: tiny },
          { recipe: tiny, model: { options: { numFeats: 4 } } },
          { recipe: "/nonexistent/recipe.ts" },
        ],
      }),
    Sweep.GridInvalid,
  );
  assertStringIncludes(
    r.message,
    "✖ cells[1]: recipe.model.options.numFeats: unknown option for edsr",
  );
  assertStringIncludes(r.message, "✖ cells[2].recipe: cannot load recipe /nonexistent/recipe.ts");
  // Two cells in one folder.
  const d = await assertRejects(
    () => cellsOf({ name: "g", cells: [{ recipe: tiny }, { recipe: tiny, steps: 4 }] }),
    Sweep.GridInvalid,
  );
  assertStringIncludes(
    d.message,
    "✖ cells[1]: its folder edsr-x2/w4a4-odm-s5 is that of cells[0]; give one of them a name",
  );
  // A recipe value whose method only exists in memory: a worker could not rebuild it.
  const base = (await import(tiny)).default as Recipe.Recipe;
  const own = Recipe.parse({ ...base, method: { ...base.method, name: "mine" } });
  const v = await assertRejects(
    () => cellsOf({ name: "g", cells: [{ recipe: own }] }),
    Sweep.GridInvalid,
  );
  assertStringIncludes(
    v.message,
    'cells[0].recipe: a Recipe value with a method of its own ("mine")',
  );
});

Deno.test("the config hash: key order does not matter; steps, folder and SSIM do", async () => {
  assertEquals(
    Sweep.canonical({ b: 1, a: { d: 2, c: [3, { f: 1, e: 0 }] } }),
    Sweep.canonical({ a: { c: [3, { e: 0, f: 1 }], d: 2 }, b: 1 }),
  );
  const one = async (g: Partial<Sweep.GridInput>, out?: string, ssim?: "same" | "valid") =>
    (await Sweep.cells(Sweep.parse({ name: "g", cells: [{ recipe: tiny }], ...g }), {
      source: "(t)",
      out: out ?? "/tmp/o",
      ssim,
    })).cells[0].hash;
  const h = await one({});
  assertEquals(await one({}), h);
  assertEquals(h.length, 16);
  assertNotEquals(await one({ steps: 13 }), h);
  assertNotEquals(await one({}, "/tmp/p"), h);
  assertNotEquals(await one({}, undefined, "same"), h);
  assertNotEquals(await one({ cells: [{ recipe: tiny, seed: 1 }] }), h);
});

const score = (psnr: number): Train.Score => ({ psnr, ssim: 0.9 });
const result = (spec: Sweep.CellSpec, psnr: number): Sweep.CellResult => ({
  key: spec.key,
  hash: spec.hash,
  summary: {
    fp32: score(30),
    ptq: score(20),
    qat: score(psnr),
    steps: 3,
    seconds: 1,
    wallSeconds: 2,
    backend: "cpu",
    recipe: "r",
    method: "odm",
    stepsPerSecond: 3,
  },
  method: "odm",
  label: "ODM",
  wbits: 4,
  abits: 4,
  scale: 2,
  storageK: 1,
  bitopsT: 2,
  fp32: { storageK: 3, bitopsT: 4 },
  evalName: "Set5",
  evalImages: 5,
  ranOn: "h:1 (cpu)",
});

Deno.test("tables: one per table in grid order, an FP32 row, then the cells; failures listed", async () => {
  const { cells } = await cellsOf({
    name: "g",
    cells: [
      { recipe: tiny, table: "b" },
      { recipe: tiny, table: "a" },
      { recipe: tiny, table: "a", method: "lsq" },
    ],
  });
  const ts = Sweep.tables([
    { spec: cells[0], result: result(cells[0], 25) },
    { spec: cells[1], result: result(cells[1], 26.5) },
    { spec: cells[2], error: "non-finite L1\nmore" },
  ]);
  assertEquals(ts.map((t) => t.table), ["b", "a"]);
  assertEquals(ts[1].rows.map((r) => r.method), ["fp32", "w4a4-odm-s5"]);
  assertEquals(ts[1].failed, [{ key: "a/w4a4-lsq-s5", error: "non-finite L1\nmore" }]);
  const lines = ts[1].markdown.split("\n");
  assertEquals(lines[0], "| method | W/A | PSNR (dB) ×2 Set5 | SSIM | storage (K) | BitOPs (T) |");
  assertEquals(lines[2], "| fp32: full precision | 32/32 | 30.00 | 0.9000 | 3.000 | 4.00 |");
  assertEquals(lines[3], "| w4a4-odm-s5: ODM | 4/4 | 26.50 | 0.9000 | 1.000 | 2.00 |");
  assertStringIncludes(ts[1].setup, 'a: ×2, 3 steps, eval 5 images (Set5), SSIM "valid"');
});

Deno.test("the node:sqlite SqlClient runs statements, parameters and transactions", async () => {
  const dir = await Deno.makeTempDir();
  const program = Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient;
    yield* sql`CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)`;
    const ins = yield* sql<{ id: number; name: string }>`
      INSERT INTO t (name) VALUES (${"a"}), (${"b"}) RETURNING id, name`;
    assertEquals(ins.map((r) => ({ ...r })), [{ id: 1, name: "a" }, { id: 2, name: "b" }]);
    // A failed transaction leaves nothing behind; a successful one commits.
    const failed = yield* sql.withTransaction(
      Effect.andThen(sql`INSERT INTO t (name) VALUES (${"c"})`, Effect.fail("no")),
    ).pipe(Effect.flip);
    assertEquals(failed, "no");
    yield* sql.withTransaction(sql`INSERT INTO t (name) VALUES (${"d"})`);
    const rows = yield* sql<{ name: string }>`SELECT name FROM t ORDER BY id`;
    assertEquals(rows.map((r) => r.name), ["a", "b", "d"]);
    const values = yield* sql`SELECT id, name FROM t WHERE id = ${2}`.values;
    assertEquals(values, [[2, "b"]]);
    const bad = yield* sql`SELECT * FROM missing`.pipe(Effect.flip);
    assertEquals(bad._tag, "SqlError");
  });
  await Effect.runPromise(
    program.pipe(Effect.provide(Sqlite.layer({ filename: `${dir}/t.db` }))),
  );
  assertGreater((await Deno.stat(`${dir}/t.db`)).size, 0);
});

Deno.test("the embedded store's lock refuses a second holder, naming the first", async () => {
  const dir = await Deno.makeTempDir();
  await Effect.runPromise(Effect.scoped(Effect.gen(function* () {
    yield* SweepEngine.lockStore(dir);
    const second = yield* Effect.flip(SweepEngine.lockStore(dir));
    assert(second instanceof SweepEngine.StoreBusy, String(second));
    assertStringIncludes(
      second.message,
      `${dir}/sweep.lock is held by another sweep (pid ${Deno.pid} on `,
    );
  })));
  // Released with the scope: a new holder gets it.
  await Effect.runPromise(Effect.scoped(SweepEngine.lockStore(dir)));
});

Deno.test("a cell process's error is its output from the last error: line on", () => {
  assertEquals(
    SweepEngine.errorOf(["step 1", "error: cannot resume x:", "  a: 1 vs 2", "(hint)"]),
    "cannot resume x:\n  a: 1 vs 2\n(hint)",
  );
  assertEquals(SweepEngine.errorOf(["step 1", "interrupted"]), undefined);
  assertEquals(
    SweepEngine.idempotencyKey({
      key: "edsr-x4/w2a2-odm-s0",
      hash: "0123456789abcdef",
      attempt: 1,
    }),
    "edsr-x4/w2a2-odm-s0@0123456789abcdef#1",
  );
});

Deno.test("every grid in recipes/grids/ loads, and its cells validate", async () => {
  const dir = new URL("../recipes/grids/", import.meta.url).pathname;
  const files = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".ts")).map((e) => e.name);
  assertGreater(files.length, 0);
  for (const f of files) {
    const loaded = await Sweep.load(`${dir}${f}`, { out: "/tmp/sweep-grids" });
    assertGreater(loaded.cells.length, 0, f);
  }
  // Table 2: three networks × three bit-widths × five methods, one table per network.
  const t2 = await Sweep.load(`${dir}table2.ts`, { out: "/tmp/sweep-grids" });
  assertEquals(t2.cells.length, 45);
  assertEquals([...new Set(t2.cells.map((c) => c.table))], ["edsr-x4", "rdn-x4", "srresnet-x4"]);
  assertEquals(t2.cells[0].key, "edsr-x4/w2a2-odm-s0");
});
