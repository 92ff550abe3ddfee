"""A PostgreSQL edge for the simulation: an in-memory server with the semantics that
PostgresSink's protocol depends on, behind the methods of `PgSession`, so the real
`PostgresWriter` runs against it.

- Transactions: a session's open transaction holds its writes until COMMIT; PREPARE
  TRANSACTION turns it into a prepared one that survives its session, until COMMIT
  PREPARED or ROLLBACK PREPARED (from any session). Gids are unique on the server.
- Row locks: an upsert of a key takes the key's row lock until its transaction ends;
  a prepared transaction keeps its locks. A write to a key another transaction holds
  would wait (for lock_timeout): here it fails at once and is recorded, and the
  simulation treats any such wait as a defect (the job never legitimately shares keys).
- A prepared-transaction limit (max_prepared_transactions): PREPARE beyond it fails, and
  is recorded too: the simulation sets the limit to what the driver's check asks for.
- Transaction status (pg_xact_status): committed, aborted, in progress, or unknown
  (None) for transaction ids older than the commit log, which `truncate_log` drops.
- A session whose process dies loses its open transaction (the server rolls it back),
  and a dead client cannot write or COMMIT any more: only a single statement it sent
  before it died can still land (COMMIT PREPARED, ROLLBACK PREPARED), as the simulation's
  late calls do.

`SimPostgresSink` is the real PostgresSink with writers that talk to this server.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from raystream.connectors.postgres.session import LockTimeout, PreparedLimit
from raystream.connectors.postgres.sink import PostgresSink
from raystream.connectors.postgres.writer import PostgresWriter
from raystream.sinks import SinkContext
from raystream.errors import SinkError


@dataclass
class _Txn:
    xid: int
    state: str = "in progress"  # "committed", "aborted"
    gid: str | None = None
    writes: list[tuple[str, Any, dict]] = field(default_factory=list)  # (table, key or None, row)
    locks: set[tuple[str, Any]] = field(default_factory=set)


class SimPgServer:
    def __init__(self, max_prepared: int = 64):
        self.max_prepared = max_prepared
        self.tables: dict[str, dict[str, Any]] = {}  # name -> {"key": columns, "rows": list | dict}
        self.txns: dict[int, _Txn] = {}
        self.locks: dict[tuple[str, Any], int] = {}  # (table, key) -> the xid holding its row lock
        self.prepared: dict[str, int] = {}  # gid -> xid
        self.log_floor = 0  # transaction ids below this are older than the commit log
        self._xids = itertools.count(100)
        self.lock_waits: list[str] = []  # what a write would have waited for
        self.limit_hits: list[str] = []

    def begin(self) -> _Txn:
        txn = _Txn(next(self._xids))
        self.txns[txn.xid] = txn
        return txn

    def end(self, txn: _Txn, commit: bool) -> None:
        if commit:
            for table, key, row in txn.writes:
                rows = self.tables[table]["rows"]
                if key is None:
                    rows.append(row)
                else:  # INSERT ... ON CONFLICT DO UPDATE sets the columns the row names
                    rows[key] = {**rows.get(key, {}), **row}
        for lock in txn.locks:
            self.locks.pop(lock, None)
        txn.state = "committed" if commit else "aborted"
        if txn.gid is not None:
            self.prepared.pop(txn.gid, None)

    def truncate_log(self) -> None:
        """Forget the fate of every transaction that has ended (as VACUUM FREEZE and a
        truncated commit log eventually do): pg_xact_status says NULL for them."""
        self.log_floor = max((x for x, t in self.txns.items() if t.state != "in progress"), default=0) + 1

    def rows(self, table: str) -> list[dict]:
        rows = self.tables.get(table, {"rows": []})["rows"]
        return list(rows.values()) if isinstance(rows, dict) else list(rows)


class SimPgSession:
    """The writer's connection to a SimPgServer, with PgSession's methods."""

    def __init__(self, server: SimPgServer, sink: Any, name: str, proc: Any):
        self.server, self._sink, self._name, self._proc = server, sink, name, proc
        self.where = "sim-pg"
        self.names: tuple[str, ...] = ()
        self._txn: _Txn | None = None

    @property
    def begun(self) -> bool:
        return self._txn is not None

    def use(self, names: tuple[str, ...], rows: list[tuple]) -> None:
        if self._sink.table not in self.server.tables:
            if not self._sink.create_table:
                raise SinkError(f"no table {self._sink.table}")
            self.server.tables[self._sink.table] = {"key": self._sink.key, "rows": {} if self._sink.key else []}
        self.names = names

    def _alive(self) -> None:
        if not self._proc.alive:
            self.close()
            raise SinkError(f"{self._name}: the connection is closed (its process is gone)")

    def write(self, rows: list[tuple]) -> None:
        self._alive()
        server = self.server
        if self._txn is None:
            self._txn = server.begin()
        txn, table = self._txn, self._sink.table
        for values in rows:
            row = dict(zip(self.names, values))
            if self._sink.mode == "append":
                txn.writes.append((table, None, row))
                continue
            key = tuple(row[k] for k in self._sink.key)
            holder = server.locks.get((table, key))
            if holder is not None and holder != txn.xid:
                held_by = server.txns[holder].gid or f"open transaction {holder}"
                server.lock_waits.append(f"{self._name} waited for the lock of {table} {key} held by {held_by}")
                raise LockTimeout("30s")
            server.locks[(table, key)] = txn.xid
            txn.locks.add((table, key))
            txn.writes.append((table, key, row))

    def commit(self) -> None:
        self._alive()
        if self._txn is not None:
            self.server.end(self._txn, commit=True)
            self._txn = None

    def prepare(self, gid: str) -> str:
        self._alive()
        server, txn = self.server, self._txn
        self._txn = None
        if gid in server.prepared:
            server.end(txn, commit=False)
            raise SinkError(f'transaction identifier "{gid}" is already in use')
        if len(server.prepared) >= server.max_prepared:
            server.limit_hits.append(f"{self._name}: PREPARE {gid} with {len(server.prepared)} prepared")
            server.end(txn, commit=False)
            raise PreparedLimit("maximum number of prepared transactions reached")
        txn.gid = gid
        server.prepared[gid] = txn.xid
        return str(txn.xid)

    def max_prepared(self) -> int:
        return self.server.max_prepared

    def commit_prepared(self, gid: str) -> bool:
        return self._resolve(gid, commit=True)

    def rollback_prepared(self, gid: str) -> bool:
        return self._resolve(gid, commit=False)

    def _resolve(self, gid: str, commit: bool) -> bool:
        xid = self.server.prepared.get(gid)
        if xid is None:
            return False
        self.server.end(self.server.txns[xid], commit=commit)
        return True

    def prepared(self, prefix: str) -> list[str]:
        return sorted(g for g in self.server.prepared if g.startswith(prefix))

    def status(self, xid: str) -> str | None:
        x = int(xid)
        if x < self.server.log_floor:
            return None
        return self.server.txns[x].state

    def close(self) -> None:
        """The connection closes (or its process died): the open transaction is rolled back."""
        if self._txn is not None:
            self.server.end(self._txn, commit=False)
            self._txn = None


class SimPostgresSink(PostgresSink):
    """PostgresSink whose writers talk to the simulated server, each through the process
    of the subtask that builds it (`procs`)."""

    def __init__(self, server: SimPgServer, procs: dict, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.server, self.procs = server, procs

    def build_writer(self, context: SinkContext) -> PostgresWriter:
        proc = self.procs[(context.run_id, context.subtask, context.attempt)]
        return PostgresWriter(self, context, session=lambda sink, name: SimPgSession(self.server, sink, name, proc))
