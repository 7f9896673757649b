/**
 * A sweep's wall time on one worker vs two, and the failover after a SIGKILL, in one run:
 * the 4 tiny cells of tests/fixtures/tiny-grid.ts (EDSR ×2, 4 channels, 12 steps) on a private
 * PostgreSQL server (tests/_postgres.ts), each phase with its own database and output folder:
 *
 * 1. the embedded store, `--slots 1` (one machine, no service: the default);
 * 2. PostgreSQL, 1 worker × 1 slot;
 * 3. PostgreSQL, 2 workers × 1 slot: prints the ratio 2-workers / 1-worker;
 * 4. PostgreSQL, 2 workers × 1 slot with the lease of `--lease` (default: the workers' default,
 *    30 s): the worker running a cell is SIGKILLed once that cell has logged 4 steps, and the
 *    time until the other worker takes the cell is printed (the failover).
 *
 * Wall time is from starting `deno task sweep` to its exit (its start-up included, the workers'
 * not: they are up and registered first). Every process is the real Deno binary. On a machine
 * whose cores the cells already fill (2 cores, a software WebGPU adapter), two workers gain
 * only what start-up and idle time they overlap; on machines of their own (a GPU each) the ratio
 * should approach 1/2.
 *
 *   deno task bench:sweep [--lease S] [--skip-failover] [--json]   (deno run -A bench/sweep.ts)
 */
import { freePort, pgBin, startPostgres } from "../tests/_postgres.ts";

const args = Deno.args;
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const lease = Number(flag("--lease") ?? 30);
const json = args.includes("--json");
const say = json ? (l: string) => console.error(l) : (l: string) => console.log(l);

const root = new URL("../", import.meta.url).pathname;
const grid = new URL("../tests/fixtures/tiny-grid.ts", import.meta.url).pathname;
const env = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" };

/** A process of the real Deno binary with its output collected. */
const spawn = (script: string, a: string[]) => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `lib/cli/${script}`, ...a],
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
type Proc = ReturnType<typeof spawn>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, f: () => Promise<boolean> | boolean, seconds = 300) {
  const end = Date.now() + seconds * 1000;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
const lines = async (file: string) =>
  (await Deno.readTextFile(file).catch(() => "")).split("\n").filter((l) => l.trim());

const stop = async (ps: ReadonlyArray<Proc>) => {
  for (const p of ps) {
    try {
      p.child.kill("SIGTERM");
    } catch { /* already gone */ }
    const t = setTimeout(() => {
      try {
        p.child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 15_000);
    await p.status;
    clearTimeout(t);
  }
};

const startWorkers = async (url: string, n: number, leaseS: number) => {
  const ws: Proc[] = [];
  for (let i = 0; i < n; i++) {
    ws.push(spawn("sweep-worker.ts", [
      "--db",
      url,
      "--host",
      "127.0.0.1",
      "--port",
      String(freePort()),
      "--lease",
      String(leaseS),
    ]));
  }
  await until("the workers to start", () => ws.every((w) => w.text.includes("sweep-worker:")));
  // Let each runner register and take its shards before the clock starts.
  await sleep(3000);
  return ws;
};

/** Runs the sweep to its end; returns its wall seconds and the backend the cells ran on. */
const sweep = async (a: string[], out: string) => {
  const t0 = performance.now();
  const s = spawn("sweep.ts", [grid, "--out", out, "--no-report", "--status", "0", ...a]);
  const st = await s.status;
  const wall = (performance.now() - t0) / 1000;
  if (st.code !== 0) throw new Error(`sweep failed (${st.code}):\n${s.text}`);
  const cells = JSON.parse(await Deno.readTextFile(`${out}/sweep.json`)).cells as Array<
    { result?: { ranOn: string } }
  >;
  const ranOn = [
    ...new Set(cells.map((c) => c.result?.ranOn.replace(/^[^ ]* \((.*)\)$/, "$1") ?? "?")),
  ];
  return { wall, ranOn: ranOn.join(", "), text: s.text };
};

if (!pgBin) {
  console.error("bench/sweep.ts needs PostgreSQL (apt-get install postgresql)");
  Deno.exit(1);
}
const tmp = await Deno.makeTempDir({ prefix: "qat-sweep-bench-" });
const pg = await startPostgres();
const rows: Array<Record<string, number | string>> = [];
try {
  // 1. The embedded store, one slot.
  say("embedded store, 1 slot …");
  const e = await sweep(["--slots", "1"], `${tmp}/embedded`);
  rows.push({ name: "embedded, 1 slot", wall_s: e.wall });
  say(`  ${e.wall.toFixed(1)} s (cells on ${e.ranOn})`);

  // 2. and 3. PostgreSQL, 1 worker, then 2 workers.
  for (const n of [1, 2]) {
    say(`PostgreSQL, ${n} worker${n === 1 ? "" : "s"} × 1 slot …`);
    const url = await pg.database(`bench_${n}`);
    const ws = await startWorkers(url, n, lease);
    try {
      const r = await sweep(["--db", url, "--lease", String(lease)], `${tmp}/pg-${n}`);
      rows.push({ name: `postgres, ${n} worker(s) × 1 slot`, wall_s: r.wall });
      const split = ws.map((w) => (w.text.match(/: finished on /g) ?? []).length);
      say(`  ${r.wall.toFixed(1)} s (cells per worker: ${split.join("/")}; on ${r.ranOn})`);
    } finally {
      await stop(ws);
    }
  }
  const one = rows[1].wall_s as number;
  const two = rows[2].wall_s as number;
  rows.push({ name: "ratio 2 workers / 1 worker", ratio: two / one });
  say(`2 workers / 1 worker: ${(two / one).toFixed(2)} (speed-up ${(one / two).toFixed(2)}×)`);

  // 4. Failover after a SIGKILL.
  if (!args.includes("--skip-failover")) {
    say(`PostgreSQL, 2 workers, lease ${lease} s: SIGKILL the worker of a cell at step 4 …`);
    const url = await pg.database("bench_failover");
    const ws = await startWorkers(url, 2, lease);
    const out = `${tmp}/pg-failover`;
    try {
      const s = spawn("sweep.ts", [
        grid,
        "--db",
        url,
        "--out",
        out,
        "--lease",
        String(lease),
        "--no-report",
        "--status",
        "0",
      ]);
      let cell = "";
      let victim = -1;
      await until("a cell at step 4", async () => {
        for (const e of await Array.fromAsync(Deno.readDir(out)).catch(() => [])) {
          if (!e.isDirectory) continue;
          for (const c of await Array.fromAsync(Deno.readDir(`${out}/${e.name}`))) {
            const dir = `${out}/${e.name}/${c.name}`;
            const w = await Deno.readTextFile(`${dir}/worker.json`).catch(() => "");
            if (!w || (await lines(`${dir}/metrics.jsonl`)).length < 4) continue;
            victim = ws.findIndex((x) => x.child.pid === JSON.parse(w).pid);
            if (victim >= 0) cell = `${e.name}/${c.name}`;
          }
        }
        return cell !== "";
      });
      const killedAt = performance.now();
      ws[victim].child.kill("SIGKILL");
      await ws[victim].status;
      const survivor = ws[1 - victim];
      await until(
        "the survivor to take the cell",
        () => survivor.text.includes(`cell ${cell}: running on`),
      );
      const failover = (performance.now() - killedAt) / 1000;
      const st = await s.status;
      if (st.code !== 0) throw new Error(`sweep failed after the kill:\n${s.text}`);
      rows.push({ name: `failover after SIGKILL, lease ${lease} s`, seconds: failover });
      say(`  the survivor took ${cell} ${failover.toFixed(1)} s after the SIGKILL; sweep done`);
    } finally {
      await stop(ws);
    }
  }
} finally {
  await pg.stop();
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
}
if (json) console.log(JSON.stringify({ rows }));
