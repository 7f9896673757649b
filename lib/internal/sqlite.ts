/**
 * An Effect `SqlClient` (`effect/sql/SqlClient`) over Deno's built-in `node:sqlite`: the embedded
 * store of a sweep on one machine, with no service to start.
 *
 * Why our own: npm has no `@effect/sql-sqlite-*` build for effect 4.1 (checked 2026-12: only
 * 4.0 betas, which import `effect/unstable/…`, and the Node one needs the native
 * `better-sqlite3`). This follows `@effect/sql-sqlite-node@4.0.0-beta.102`'s `SqliteClient`
 * (MIT), cut to what the cluster's `SqlMessageStorage`/`SqlRunnerStorage` and
 * `PersistedQueue.layerStoreSql` use: one connection shared through a semaphore
 * (`SqlClient.makeSqliteAcquirers`, which also rolls back a failed COMMIT), the SQLite compiler
 * (`Statement.makeCompilerSqlite`: `?` placeholders), prepared statements cached by text, WAL.
 * No streaming (`executeStream` dies), as in the original.
 *
 * One process per database file: SQLite would allow more, but the cluster's `SingleRunner`
 * assumes it owns every shard, so the sweep guards the store with a lock file.
 *
 * @module
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { Context, Effect, Layer, Scope, Semaphore, Stream } from "effect";
import * as Reactivity from "effect/reactivity/Reactivity";
import * as SqlClient from "effect/sql/SqlClient";
import type { Connection } from "effect/sql/SqlConnection";
import { classifySqliteError, SqlError } from "effect/sql/SqlError";
import * as Statement from "effect/sql/Statement";

/** Options of {@link layer}. */
export interface Options {
  /** The database file (created when missing). */
  readonly filename: string;
  /**
   * How long a statement waits for a lock held by another connection before failing (ms).
   * Only one process opens the file in a sweep; this covers tools reading it meanwhile.
   */
  readonly busyTimeoutMs?: number;
}

// node:sqlite reports the SQLite result code as `errcode`; the classifier reads `errno`.
const classify = (cause: unknown, message: string, operation: string) => {
  const c = cause as { errcode?: unknown; errno?: unknown } | null;
  if (c && typeof c === "object" && typeof c.errcode === "number" && c.errno === undefined) {
    Object.assign(c, { errno: c.errcode });
  }
  return new SqlError({ reason: classifySqliteError(cause, { message, operation }) });
};

const open = (o: Options) =>
  Effect.gen(function* () {
    const db = yield* Effect.try({
      try: () => new DatabaseSync(o.filename),
      catch: (e) => classify(e, `cannot open ${o.filename}`, "open"),
    });
    yield* Effect.addFinalizer(() => Effect.sync(() => db.close()));
    // WAL: a crash (SIGKILL) mid-write leaves the database as of its last commit.
    db.exec(`PRAGMA journal_mode = WAL; PRAGMA busy_timeout = ${o.busyTimeoutMs ?? 5000};`);
    const cache = new Map<string, StatementSync>();
    const prepare = (sql: string) =>
      Effect.try({
        try: () => {
          let s = cache.get(sql);
          if (!s) {
            s = db.prepare(sql);
            // Bounded: the stores build a few dozen distinct statements, some with inlined ids.
            if (cache.size >= 500) cache.delete(cache.keys().next().value!);
            cache.set(sql, s);
          }
          return s;
        },
        catch: (e) => classify(e, "Failed to prepare statement", "prepare"),
      });
    // Rows are objects (column → value) or, with `arrays`, value arrays: the caller says which.
    const runOn = <Row extends object>(
      s: StatementSync,
      params: ReadonlyArray<unknown>,
      arrays: boolean,
    ) =>
      Effect.withFiber<ReadonlyArray<Row>, SqlError>((fiber) =>
        Effect.try({
          try: () => {
            s.setReadBigInts(Context.get(fiber.context, SqlClient.SafeIntegers));
            // At run time since Node 24 / Deno 2.x, not yet in Deno's bundled node types.
            (s as StatementSync & { setReturnArrays(on: boolean): void }).setReturnArrays(arrays);
            // deno-lint-ignore no-explicit-any
            const args = params as any[];
            if (s.columns().length > 0) return s.all(...args) as unknown as ReadonlyArray<Row>;
            s.run(...args);
            return [];
          },
          catch: (e) => classify(e, "Failed to execute statement", "execute"),
        })
      );
    const connection: Connection = {
      execute: (sql, params, transformRows) =>
        Effect.flatMap(prepare(sql), (s) => runOn<Record<string, unknown>>(s, params, false)).pipe(
          Effect.map((rows) => (transformRows ? transformRows(rows) : rows)),
        ),
      executeRaw: (sql, params) =>
        Effect.flatMap(prepare(sql), (s) =>
          Effect.try({
            try: () => {
              // deno-lint-ignore no-explicit-any
              const r = s.run(...(params as any[]));
              return { changes: r.changes, lastInsertRowid: r.lastInsertRowid };
            },
            catch: (e) => classify(e, "Failed to execute statement", "execute"),
          })),
      executeValues: (sql, params) =>
        Effect.flatMap(prepare(sql), (s) => runOn<ReadonlyArray<unknown>>(s, params, true)),
      executeValuesUnprepared: (sql, params) =>
        Effect.suspend(() => runOn<ReadonlyArray<unknown>>(db.prepare(sql), params, true)),
      executeUnprepared: (sql, params, transformRows) =>
        Effect.suspend(() => runOn<Record<string, unknown>>(db.prepare(sql), params ?? [], false))
          .pipe(
            Effect.map((rows) => (transformRows ? transformRows(rows) : rows)),
          ),
      executeStream: () => Stream.die("executeStream is not implemented for node:sqlite"),
    };
    return { connection, isTransaction: () => db.isTransaction };
  });

/** A `SqlClient` on one SQLite file, closed with the scope. */
export const make = (o: Options): Effect.Effect<
  SqlClient.SqlClient,
  SqlError,
  Scope.Scope | Reactivity.Reactivity
> =>
  Effect.gen(function* () {
    const { connection, isTransaction } = yield* open(o);
    const semaphore = yield* Semaphore.make(1);
    const acquirers = SqlClient.makeSqliteAcquirers({
      connection: Effect.succeed(connection),
      semaphore,
      isTransaction,
    });
    return yield* SqlClient.make({
      ...acquirers,
      compiler: Statement.makeCompilerSqlite(),
      driver: "node:sqlite",
      spanAttributes: [["db.system.name", "sqlite"]],
    });
  });

/** The `SqlClient` service over one SQLite file. */
export const layer = (o: Options): Layer.Layer<SqlClient.SqlClient, SqlError> =>
  Layer.effect(SqlClient.SqlClient, make(o)).pipe(Layer.provide(Reactivity.layer));
