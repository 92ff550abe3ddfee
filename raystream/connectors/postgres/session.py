"""What PostgresSink's writer needs from a PostgreSQL server, over psycopg: rows written
in one open transaction, prepared and committed, and the prepared transactions of the
server listed, committed, rolled back and looked up.

The writer (`writer.py`) holds the protocol and talks to the server only
through a `PgSession`, so the protocol simulation (tests/simulation) runs the same writer
against an in-memory server with the same methods. Errors come out as `Transient` (the
server is down or the connection dropped: a later try may work), `LockTimeout`,
`PreparedLimit`, or `SinkError` saying what is wrong.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from raystream.connectors.postgres.tables import (TRANSIENT, Table, address, check_columns, connect, create_table, jsonb_rows,
                                        read_table)
from raystream.errors import SinkError
from raystream.retry import first_line

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a write waits for a row lock before it gives up with a clear error.
LOCK_TIMEOUT = "30s"
#: The server's own words when its prepared-transaction table is full (SQLSTATE 53200).
PREPARED_LIMIT = "maximum number of prepared transactions reached"


# Signals from the session to the writer, which turns each into the SinkError users see.


class Transient(SinkError):
    """The connection dropped or the server is not there: a later try may work."""


class LockTimeout(SinkError):
    """A row stayed locked by another transaction for LOCK_TIMEOUT."""


class PreparedLimit(SinkError):
    """The server holds max_prepared_transactions prepared transactions already."""


class PgSession:
    """One writer's connections to the server: a data connection holding the open
    transaction, and a control connection (opened when needed) for COMMIT PREPARED and
    ROLLBACK PREPARED, which cannot run inside a transaction."""

    def __init__(self, sink: Any, name: str):
        self._sink = sink
        self._name = name
        self.where = address(sink.dsn)
        self._conn = connect(sink, name)
        self._conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        self._control: psycopg.Connection | None = None
        self._table: Table | None = None
        self._statement: sql.Composable | None = None
        self._json: list[int] = []
        self.names: tuple[str, ...] = ()  # the columns the statement writes
        self.begun = False  # whether a transaction is open

    # --- the open transaction ----------------------------------------------------------

    def use(self, names: tuple[str, ...], rows: list[tuple]) -> None:
        """Write rows with columns `names` from now on: check the table (creating it from
        `rows` when asked) and build the statement."""
        table = self._table or read_table(self._conn, self._sink.table)
        if table is None and self._sink.create_table:
            create_table(self._conn, self._sink, names, rows)
            table = read_table(self._conn, self._sink.table)
        if table is None:
            raise SinkError(f"PostgresSink: table {self._sink.table} does not exist at {self.where}")
        check_columns(self._sink, table, names, self.where)
        self._table, self.names = table, names
        self._json = [i for i, n in enumerate(names) if table.types[n] in ("json", "jsonb")]
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        if self._sink.mode == "append":
            self._statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, cols)
            return
        # One statement per batch: a column array per column, unnested into rows.
        arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(table.types[n])) for n in names)
        rest = [n for n in names if n not in self._sink.key]
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in rest)) if rest else sql.SQL("DO NOTHING")
        self._statement = sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) {}").format(
            table.ident, cols, arrays, sql.SQL(", ").join(map(sql.Identifier, self._sink.key)), action)

    def write(self, rows: list[tuple]) -> None:
        """Rows (named as `use` said) into the open transaction, begun if there is none."""
        try:
            if not self.begun:
                self._conn.execute("BEGIN")
                self.begun = True
            rows = jsonb_rows(rows, self._json)
            with self._conn.cursor() as cur:
                if self._sink.mode == "append":
                    with cur.copy(self._statement) as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cur.execute(self._statement, [list(c) for c in zip(*rows)])
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(LOCK_TIMEOUT) from None
        except psycopg.Error as exc:
            raise self._error("write to " + self._sink.table, exc) from None

    def commit(self) -> None:
        """COMMIT the open transaction."""
        self.begun = False
        try:
            self._conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._error("commit to " + self._sink.table, exc) from None

    def prepare(self, gid: str) -> str:
        """PREPARE TRANSACTION the open one as `gid`; returns its transaction id."""
        self.begun = False
        try:
            xid = self._conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
            self._conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except psycopg.Error as exc:
            if PREPARED_LIMIT in str(exc):
                raise PreparedLimit(first_line(exc)) from None
            raise self._error("write to " + self._sink.table, exc) from None
        return xid

    def max_prepared(self) -> int:
        return int(self._conn.execute("SHOW max_prepared_transactions").fetchone()[0])

    # --- prepared transactions, on the control connection ------------------------------

    def commit_prepared(self, gid: str) -> bool:
        """COMMIT PREPARED `gid`; False when no prepared transaction has that gid (any more)."""
        return self._resolve("COMMIT PREPARED {}", gid)

    def rollback_prepared(self, gid: str) -> bool:
        """ROLLBACK PREPARED `gid`; False when no prepared transaction has that gid (any more)."""
        return self._resolve("ROLLBACK PREPARED {}", gid)

    def _resolve(self, statement: str, gid: str) -> bool:
        def run(conn: psycopg.Connection) -> bool:
            try:
                conn.execute(sql.SQL(statement).format(sql.Literal(gid)))
                return True
            except psycopg.errors.UndefinedObject:
                return False

        return self._on_control(statement.format(gid), run)

    def prepared(self, prefix: str) -> list[str]:
        """Gids of this database's prepared transactions that start with `prefix`."""
        return [g for (g,) in self._control_query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, %s)",
            (prefix,))]

    def status(self, xid: str) -> str | None:
        """pg_xact_status of a transaction id: "committed", "aborted", "in progress", or
        None when it is older than what the server still knows."""
        return self._control_query("SELECT pg_xact_status(%s::xid8)", (xid,))[0][0]

    def _control_query(self, query: str, params: tuple) -> list[tuple]:
        return self._on_control("reading prepared transactions",
                                lambda conn: conn.execute(query, params).fetchall())

    def _on_control(self, what: str, fn: Callable[[psycopg.Connection], T]) -> T:
        """`fn` on the control connection; a dropped connection is Transient (and reopened
        next time), any other server error a SinkError saying `what` failed."""
        try:
            return fn(self._control_conn())
        except TRANSIENT as exc:
            self._drop_control()
            raise Transient(first_line(exc)) from None
        except psycopg.Error as exc:
            raise SinkError(f"PostgresSink {self._name}: {what} failed at {self.where}: {first_line(exc)}") from None

    def _control_conn(self) -> psycopg.Connection:
        if self._control is None or self._control.closed:
            self._control = connect(self._sink, self._name + " commit")  # retried there; SinkError at last
        return self._control

    def _drop_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def _error(self, what: str, exc: psycopg.Error) -> Exception:
        if isinstance(exc, TRANSIENT):
            return SinkError(f"PostgresSink {self._name} lost its connection to {self.where} while writing "
                             f"({first_line(exc)}); the job recovers from its last checkpoint")
        return SinkError(f"PostgresSink {self._name} could not {what} at {self.where}: {first_line(exc)}")

    def close(self) -> None:
        self._conn.close()
        self._drop_control()
