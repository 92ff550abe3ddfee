"""PostgresSink's tables: connecting, reading a table's columns from the catalog,
checking that records fit it (in the driver before the job starts, and at a writer's
first batch), and creating it from the first batch's types."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from raystream.errors import SinkError
from raystream.retry import first_line

logger = logging.getLogger(__name__)

#: Errors a later try may not see: the server is down, restarting, or the connection dropped.
TRANSIENT = (psycopg.OperationalError,)


def address(dsn: str) -> str:
    """host:port/database of a DSN, with the PG* defaults: what logs and errors show."""
    params = conninfo_to_dict(dsn)
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    db = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or os.environ.get("PGUSER") or ""
    return f"{host}:{port}/{db}"


def as_rows(batch: list[Any] | pa.RecordBatch, columns: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[tuple]]:
    """Column names and row tuples of a micro-batch."""
    if isinstance(batch, pa.RecordBatch):
        names = columns or tuple(batch.schema.names)
        data = [batch.column(n).to_pylist() for n in names]
        return names, list(zip(*data))
    first = batch[0]
    if isinstance(first, dict):
        names = columns or tuple(first)
        return names, [tuple(r.get(n) for n in names) for r in batch]
    if isinstance(first, (tuple, list)):
        if columns is None:
            raise SinkError(f"PostgresSink got {type(first).__name__} records: name their fields with columns=(...)")
        bad = next((r for r in batch if len(r) != len(columns)), None)
        if bad is not None:
            raise SinkError(f"PostgresSink record {bad!r} has {len(bad)} fields; columns= names {len(columns)}")
        return columns, [tuple(r) for r in batch]
    raise SinkError(f"PostgresSink writes dicts, tuples (with columns=) or Arrow batches; got a {type(first).__name__}")


def jsonb_rows(rows: list[tuple], json_cols: list[int]) -> list[tuple]:
    """Rows with the values of json/jsonb columns wrapped for psycopg."""
    if not json_cols:
        return rows
    out = []
    for row in rows:
        row = list(row)
        for i in json_cols:
            if row[i] is not None:
                row[i] = Jsonb(row[i])
        out.append(tuple(row))
    return out


@dataclass
class Table:
    """A table's columns as the catalog describes them."""

    name: str  # as given: "t" or "schema.t"
    types: dict[str, str]  # column -> format_type(...)
    required: set[str]  # NOT NULL without a default
    unique: list[set[str]]  # column sets of unique indexes

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(*self.name.split("."))


def connect(sink: Any, purpose: str) -> psycopg.Connection:
    """An autocommit connection (transactions are begun explicitly), retried per `sink.retry`."""
    where = address(sink.dsn)

    def attempt() -> psycopg.Connection:
        return psycopg.connect(sink.dsn, autocommit=True, connect_timeout=10,
                               application_name=f"raystream {purpose}"[:63])
    try:
        return sink.retry.call(f"connecting to PostgreSQL at {where}", attempt, TRANSIENT)
    except psycopg.Error as exc:
        raise SinkError(f"PostgresSink could not connect to PostgreSQL at {where}: {first_line(exc)}; "
                        "check that the server runs there and the DSN, PGUSER and PGPASSWORD are right") from None


def read_table(conn: psycopg.Connection, name: str) -> Table | None:
    ident = sql.Identifier(*name.split(".")).as_string(conn)
    oid = conn.execute("SELECT to_regclass(%s)::oid", (ident,)).fetchone()[0]
    if oid is None:
        return None
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull AND NOT atthasdef FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,)).fetchall()
    unique = conn.execute(
        "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s AND i.indisunique GROUP BY i.indexrelid", (oid,)).fetchall()
    return Table(name, {c: t for c, t, _ in cols}, {c for c, _, req in cols if req}, [set(u[0]) for u in unique])


def check_columns(sink: Any, table: Table, names: tuple[str, ...], where: str) -> None:
    """SinkError unless records with fields `names` fit `table` in the sink's mode."""
    missing = [n for n in names if n not in table.types]
    if missing:
        raise SinkError(
            f"PostgresSink: table {table.name} at {where} has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(table.types)}); add the columns, or map the records to the table's columns")
    unfilled = sorted(table.required - set(names))
    if unfilled:
        raise SinkError(
            f"PostgresSink: table {table.name} at {where} needs a value for {', '.join(map(repr, unfilled))} "
            f"(NOT NULL, no default) and the records do not have it")
    if sink.mode == "upsert" and set(sink.key) not in table.unique:
        raise SinkError(
            f"PostgresSink upsert: table {table.name} at {where} has no unique index on exactly "
            f"({', '.join(sink.key)}); add one (e.g. a primary key) so rows can be updated by key")


def check_server(sink: Any, *, step_id: str, need: int) -> None:
    """In the driver, before the job starts: the server answers, can hold the `need`
    prepared transactions the job may hold at once (0: not exactly-once), and the table
    fits (when it exists or cannot be created)."""
    where = address(sink.dsn)
    with connect(sink, f"check {step_id}") as conn:
        if need:
            have = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
            if have < need:
                raise SinkError(
                    f"PostgresSink {step_id!r}: the server at {where} has max_prepared_transactions = {have}; this "
                    f"job can hold {need} prepared transactions at once there under exactly-once (tolerable_failures "
                    "+ 2 per subtask of each PostgresSink on this server). Set max_prepared_transactions = "
                    f"{max(need, 64)} or more in postgresql.conf and restart the server, or lower the sinks' "
                    "parallelism or CheckpointConfig.tolerable_failures")
        table = read_table(conn, sink.table)
        if table is None:
            if not sink.create_table:
                raise SinkError(f"PostgresSink {step_id!r}: table {sink.table} does not exist at {where}; "
                                "create it, or pass create_table=True to create it from the first records")
        elif sink.columns is not None:
            check_columns(sink, table, sink.columns, where)


_PG_TYPES = [
    (pa.types.is_boolean, "boolean"), (pa.types.is_integer, "bigint"), (pa.types.is_floating, "double precision"),
    (pa.types.is_string, "text"), (pa.types.is_large_string, "text"), (pa.types.is_binary, "bytea"),
    (pa.types.is_date, "date"), (pa.types.is_decimal, "numeric"),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, "timestamptz"), (pa.types.is_timestamp, "timestamp"),
    (lambda t: pa.types.is_nested(t) or pa.types.is_dictionary(t), "jsonb"),
]


def column_types(names: tuple[str, ...], rows: list[tuple]) -> dict[str, str]:
    """PostgreSQL types for columns holding these values, inferred by Arrow."""
    types = {}
    for i, name in enumerate(names):
        try:
            arrow = pa.array([r[i] for r in rows]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrow = pa.null()  # mixed values: stored as JSON
            types[name] = "jsonb"
            continue
        types[name] = next((pg for test, pg in _PG_TYPES if test(arrow)), "text")
    return types


def create_table(conn: psycopg.Connection, sink: Any, names: tuple[str, ...], rows: list[tuple]) -> None:
    types = column_types(names, rows)
    cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names]
    if sink.key:
        cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, sink.key))))
    stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(*sink.table.split(".")), sql.SQL(", ").join(cols))
    try:
        conn.execute(stmt)
    except psycopg.errors.UniqueViolation:
        pass  # another subtask created it at the same moment
    logger.info("PostgresSink created table %s at %s: %s", sink.table, address(sink.dsn),
                ", ".join(f"{n} {types[n]}" for n in names))
