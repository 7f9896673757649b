/**
 * A private PostgreSQL server for the sweep tests and bench/sweep.ts: Debian's `postgresql`
 * binaries (installed by `.ci/run`), a temporary data folder, listening on 127.0.0.1 only on a
 * free port, trust authentication (nothing else can reach it), no fsync (a test's database is
 * thrown away). As root it runs as the package's `postgres` user: `initdb` and `postgres`
 * refuse to run as root (PLATFORM.md).
 */

/** Debian's PostgreSQL server binaries (the newest installed), or undefined where absent. */
export const pgBin: string | undefined = (() => {
  try {
    const versions = [...Deno.readDirSync("/usr/lib/postgresql")].map((e) => e.name)
      .sort((a, b) => Number(a) - Number(b));
    const bin = `/usr/lib/postgresql/${versions.pop()}/bin`;
    return Deno.statSync(`${bin}/initdb`).isFile ? bin : undefined;
  } catch {
    return undefined;
  }
})();

/** A TCP port free on 127.0.0.1 now. */
export const freePort = (): number => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
};

/** A running server: `url` of its `postgres` database, `database(name)` makes another. */
export interface Postgres {
  readonly url: string;
  readonly database: (name: string) => Promise<string>;
  readonly stop: () => Promise<void>;
}

/** Starts a private server (see the module comment); `stop` kills it and removes its folder. */
export async function startPostgres(): Promise<Postgres> {
  if (!pgBin) throw new Error("PostgreSQL is not installed (apt-get install postgresql)");
  const dir = await Deno.makeTempDir({ prefix: "qat-pg-" });
  const root = Deno.uid() === 0;
  if (root) {
    const id = await new Deno.Command("id", { args: ["-u", "postgres"], stdout: "piped" }).output();
    await Deno.chown(dir, Number(new TextDecoder().decode(id.stdout).trim()), null);
  }
  const run = async (cmd: string, args: string[]) => {
    const [c, a] = root
      ? ["runuser", ["-u", "postgres", "--", `${pgBin}/${cmd}`, ...args]]
      : [`${pgBin}/${cmd}`, args];
    const r = await new Deno.Command(c, { args: a, stdout: "piped", stderr: "piped" }).output();
    if (!r.success) throw new Error(`${cmd} failed: ${new TextDecoder().decode(r.stderr)}`);
  };
  const port = freePort();
  await run("initdb", ["-D", `${dir}/data`, "-A", "trust", "-U", "postgres", "--no-sync"]);
  await run("pg_ctl", [
    "-D",
    `${dir}/data`,
    "-o",
    `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off`,
    "-l",
    `${dir}/log`,
    "-w",
    "start",
  ]);
  const url = (db: string) => `postgres://postgres@127.0.0.1:${port}/${db}`;
  return {
    url: url("postgres"),
    database: async (name) => {
      await run("createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", name]);
      return url(name);
    },
    stop: async () => {
      await run("pg_ctl", ["-D", `${dir}/data`, "-m", "immediate", "stop"]).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
