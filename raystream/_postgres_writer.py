"""The PostgresSink writer: one subtask's connection, its open transaction, and the
prepared transactions it commits and aborts (the steps are in raystream/postgres.py)."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from raystream._postgres_tables import (TRANSIENT, Table, address, as_rows, check_columns, connect, create_table,
                                        jsonb_rows, read_table)
from raystream.errors import SinkError, StagedDataMissingError
from raystream.retry import first_line
from raystream.sink_api import SinkContext, SinkWriter

logger = logging.getLogger(__name__)

#: Every prepared transaction of raystream starts with this; the fields follow, split by "|",
#: which job names, step ids and run ids never contain.
_GID_PREFIX = "rs"
#: How long a write waits for a row lock before it gives up with a clear error.
_LOCK_TIMEOUT = "30s"
#: Upsert mode writes a checkpoint's rows once per key, buffering at most this many keys.
_UPSERT_BUFFER = 20_000


@dataclass(frozen=True)
class PgTxn:
    """One prepared transaction: its gid and transaction id (to learn its fate)."""

    gid: str
    xid: str
    rows: int


@dataclass(frozen=True)
class Gid:
    """The fields of a prepared transaction's global id."""

    owner: str  # gid_owner(job, step)
    subtask: int
    run_id: str
    attempt: int
    checkpoint_id: int

    def __str__(self) -> str:
        return "|".join((self.owner, str(self.subtask), self.run_id, str(self.attempt), str(self.checkpoint_id)))

    @classmethod
    def parse(cls, gid: str) -> Gid | None:
        fields = gid.rsplit("|", 4)
        if len(fields) != 5 or not (fields[1].isdigit() and fields[3].isdigit() and fields[4].isdigit()):
            return None
        return cls(fields[0], int(fields[1]), fields[2], int(fields[3]), int(fields[4]))


def gid_owner(job_name: str, step_id: str) -> str:
    """The gid prefix of one sink step of one job; long names are hashed to fit in 200 bytes."""
    owner = f"{job_name}|{step_id}"
    if len(owner) > 100:
        owner = hashlib.sha256(owner.encode()).hexdigest()[:32]
    return f"{_GID_PREFIX}|{owner}"


class PostgresWriter(SinkWriter):
    """One sink subtask's writer: a data connection holding the open transaction, and a
    control connection (opened when needed) for COMMIT PREPARED and ROLLBACK PREPARED,
    which cannot run inside a transaction."""

    def __init__(self, sink: Any, context: SinkContext):
        self._sink = sink
        self._ctx = context
        self._where = address(sink.dsn)
        self._owner = gid_owner(context.job_name, context.step_id)
        self._name = f"{context.job_name}/{context.step_id}/{context.subtask}"
        self._conn = connect(sink, self._name)
        self._conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(_LOCK_TIMEOUT)))
        self._control: psycopg.Connection | None = None
        self._table: Table | None = None
        self._names: tuple[str, ...] = ()
        self._statement: sql.Composable | None = None
        self._json: list[int] = []
        self._key_at: list[int] = []
        self._latest: dict[tuple, tuple] = {}  # upsert: each key's latest row not yet written
        self._open_rows = 0  # records taken since the last barrier
        self._begun = False  # whether a transaction is open
        self.rows_committed = 0

    # --- writing -------------------------------------------------------------------------

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        if not len(batch):
            return
        names, rows = as_rows(batch, self._sink.columns)
        if names != self._names:
            self._flush()
            self._prepare_statement(names, rows)
        if self._sink.mode == "upsert":
            # Only a key's latest row of a checkpoint matters, and a row updated again and
            # again in one transaction grows a chain of versions that slows every update.
            self._latest.update((tuple(r[i] for i in self._key_at), r) for r in rows)
            self._open_rows += len(rows)
            if len(self._latest) >= _UPSERT_BUFFER:
                self._flush()
            return
        self._write(rows)
        self._open_rows += len(rows)

    def _flush(self) -> None:
        if self._latest:
            rows, self._latest = list(self._latest.values()), {}
            self._write(rows)

    def _write(self, rows: list[tuple]) -> None:
        try:
            if not self._begun:
                self._conn.execute("BEGIN")
                self._begun = True
            rows = jsonb_rows(rows, self._json)
            with self._conn.cursor() as cur:
                if self._sink.mode == "append":
                    with cur.copy(self._statement) as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cur.execute(self._statement, [list(c) for c in zip(*rows)])
        except psycopg.errors.LockNotAvailable:
            raise SinkError(
                f"PostgresSink {self._name}: rows of {self._sink.table} at {self._where} stayed locked for "
                f"{_LOCK_TIMEOUT}. If a prepared transaction of this job holds them, two sink subtasks write "
                "the same key: key_by the upsert key before the sink") from None
        except psycopg.Error as exc:
            raise self._write_error(exc) from None

    def _write_error(self, exc: psycopg.Error) -> SinkError:
        if isinstance(exc, TRANSIENT):
            return SinkError(f"PostgresSink {self._name} lost its connection to {self._where} while writing "
                             f"({first_line(exc)}); the job recovers from its last checkpoint")
        return SinkError(f"PostgresSink {self._name} could not write to {self._sink.table} at {self._where}: "
                         f"{first_line(exc)}")

    def _prepare_statement(self, names: tuple[str, ...], rows: list[tuple]) -> None:
        """Check the table (creating it when asked) and build the write statement."""
        table = self._table or read_table(self._conn, self._sink.table)
        if table is None and self._sink.create_table:
            create_table(self._conn, self._sink, names, rows)
            table = read_table(self._conn, self._sink.table)
        if table is None:
            raise SinkError(f"PostgresSink: table {self._sink.table} does not exist at {self._where}")
        check_columns(self._sink, table, names, self._where)
        self._table, self._names = table, names
        self._json = [i for i, n in enumerate(names) if table.types[n] in ("json", "jsonb")]
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        if self._sink.mode == "append":
            self._statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, cols)
            return
        self._key_at = [names.index(k) for k in self._sink.key]
        # One statement per batch: a column array per column, unnested into rows.
        arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(table.types[n])) for n in names)
        rest = [n for n in names if n not in self._sink.key]
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in rest)) if rest else sql.SQL("DO NOTHING")
        self._statement = sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) {}").format(
            table.ident, cols, arrays, sql.SQL(", ").join(map(sql.Identifier, self._sink.key)), action)

    # --- the two phases ------------------------------------------------------------------

    def pre_commit(self, checkpoint_id: int) -> PgTxn | None:
        """T1: prepare the open transaction (exactly-once) or commit it (at-least-once)."""
        self._flush()
        if not self._begun:
            return None
        rows, self._open_rows, self._begun = self._open_rows, 0, False
        try:
            if not self._ctx.transactional:
                self._conn.execute("COMMIT")
                self.rows_committed += rows
                return None
            xid = self._conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
            gid = str(Gid(self._owner, self._ctx.subtask, self._ctx.run_id, self._ctx.attempt, checkpoint_id))
            self._conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except psycopg.Error as exc:
            raise self._write_error(exc) from None
        return PgTxn(gid, xid, rows)

    def commit(self, txn: PgTxn) -> None:
        """T3: COMMIT PREPARED; idempotent (a transaction already committed is done)."""
        def attempt() -> None:
            conn = self._control_conn()
            try:
                conn.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(txn.gid)))
            except psycopg.errors.UndefinedObject:  # no prepared transaction has this gid (any more)
                status = conn.execute("SELECT pg_xact_status(%s::xid8)", (txn.xid,)).fetchone()[0]
                if status != "committed":
                    raise StagedDataMissingError(
                        f"PostgresSink {self._name}: prepared transaction {txn.gid} at {self._where} is gone and "
                        f"was not committed (its status: {status or 'unknown, too old'})") from None
                return
            self.rows_committed += txn.rows

        self._retrying(f"committing {txn.gid}", attempt)

    def recover(self, txns: list[PgTxn], checkpoint_id: int) -> None:
        """T4: commit the restored checkpoint's transactions; roll back every other
        prepared transaction this subtask owns, except those of this attempt or later."""
        for txn in txns:
            self.commit(txn)
        keep = {t.gid for t in txns}
        me = self._ctx

        def abort_stale() -> int:
            conn = self._control_conn()
            gids = [g for (g,) in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, %s)",
                (self._owner + "|",)).fetchall()]
            aborted = 0
            for gid in gids:
                parsed = Gid.parse(gid)
                if gid in keep or parsed is None or parsed.subtask % me.parallelism != me.subtask:
                    continue
                if parsed.run_id == me.run_id and parsed.attempt >= me.attempt:
                    continue  # this attempt's or a later one's: a late recover destroys nothing
                try:
                    conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
                    aborted += 1
                except psycopg.errors.UndefinedObject:
                    pass  # resolved meanwhile
            return aborted

        aborted = self._retrying("rolling back stale prepared transactions", abort_stale)
        if aborted:
            logger.info("PostgresSink %s rolled back %d prepared transactions not in checkpoint %d",
                        self._name, aborted, checkpoint_id)

    def _retrying(self, what: str, fn: Any) -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except TRANSIENT:
                self._drop_control()
                raise
        try:
            return self._sink.retry.call(f"PostgresSink {self._name} {what} at {self._where}", attempt, TRANSIENT)
        except psycopg.Error as exc:
            raise SinkError(f"PostgresSink {self._name} failed {what} at {self._where}: {first_line(exc)}") from None

    def _control_conn(self) -> psycopg.Connection:
        if self._control is None or self._control.closed:
            self._control = connect(self._sink, self._name + " commit")
        return self._control

    def _drop_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def close(self) -> dict[str, int]:
        if (self._begun or self._latest) and self._ctx.transactional:
            raise SinkError(f"PostgresSink {self._name} closed with rows that no checkpoint covered")
        self.pre_commit(0)  # at-least-once: commits the rest
        self._conn.close()
        self._drop_control()
        return {"rows": self.rows_committed}
