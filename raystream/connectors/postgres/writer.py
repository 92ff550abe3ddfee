"""The PostgresSink writer: one subtask's open transaction, and the prepared transactions
it commits and aborts (the steps are in raystream/connectors/postgres/sink.py). It talks to the server
through a `PgSession` (`session.py`) and holds no SQL of its own, so the
protocol simulation runs it against an in-memory server."""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from raystream.connectors.postgres.session import LOCK_TIMEOUT, PREPARED_LIMIT, LockTimeout, PgSession, PreparedLimit, Transient
from raystream.connectors.postgres.tables import as_rows
from raystream.errors import SinkError, StagedDataMissingError
from raystream.retry import first_line
from raystream.sink_api import SinkContext, SinkWriter

logger = logging.getLogger(__name__)

#: Every prepared transaction of raystream starts with this; the fields follow, split by "|",
#: which job names, step ids and run ids never contain.
_GID_PREFIX = "rs"
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


Row = tuple[tuple[str, ...], tuple]  # (column names, values)


def _merged(older: Row, newer: Row) -> Row:
    """One upsert row for what `older` and then `newer` would leave in the table: records
    may name different columns, and an upsert sets only the columns it names."""
    if older[0] == newer[0]:
        return newer
    values = dict(zip(*older))
    values.update(zip(*newer))
    return tuple(values), tuple(values.values())


class PostgresWriter(SinkWriter):
    """One sink subtask's writer.

    Upsert mode never writes a key that a prepared transaction of this writer still
    holds: waiting for that row lock on the subtask's event loop would stall it for
    good. Within an epoch, the newest row of such a key is *carried* (kept in the writer)
    until the lock is gone: the previous checkpoint's transaction is committed when its
    notification comes (C6). Before the next pre-commit every earlier transaction is
    settled (C6a): committed, or, when its checkpoint was aborted, rolled back here and
    its rows taken into the open epoch (`abort`), so a pre-commit writes every carried
    row and nothing is carried past a barrier: a snapshot holds no rows, and a restore
    writes none outside a transaction of its own checkpoints (F4).

    `session` makes the writer's PgSession (the simulation passes a fake)."""

    def __init__(self, sink: Any, context: SinkContext, session: Callable[[Any, str], Any] = PgSession):
        self._sink = sink
        self._ctx = context
        self._owner = gid_owner(context.job_name, context.step_id)
        self._name = f"{context.job_name}/{context.step_id}/{context.subtask}"
        self._db = session(sink, self._name)
        self._where = self._db.where
        self._key_at: list[int] = []
        self._latest: dict[tuple, tuple] = {}  # upsert: each key's latest row (named by the session) not yet written
        self._carried: dict[tuple, Row] = {}  # upsert: rows of keys held by a prepared transaction, this epoch
        self._open: dict[tuple, Row] = {}  # upsert: what the open transaction wrote per key
        self._held: dict[str, dict[tuple, Row]] = {}  # upsert: gid -> the rows its prepared transaction holds
        self._held_lock = threading.Lock()  # commit() runs in a thread of its own
        self._open_rows = 0  # records taken since the last barrier
        self.rows_committed = 0

    # --- writing -------------------------------------------------------------------------

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        if not len(batch):
            return
        names, rows = as_rows(batch, self._sink.columns)
        if self._sink.mode == "upsert":
            if names != self._db.names:
                self._flush()
                self._use(names, rows)
            # Only a key's latest row of a checkpoint matters, and a row updated again and
            # again in one transaction grows a chain of versions that slows every update.
            self._latest.update((tuple(r[i] for i in self._key_at), r) for r in rows)
            self._open_rows += len(rows)
            if len(self._latest) >= _UPSERT_BUFFER:
                self._flush()
            return
        if names != self._db.names:
            self._use(names, rows)
        self._write(rows)
        self._open_rows += len(rows)

    def _use(self, names: tuple[str, ...], rows: list[tuple]) -> None:
        self._db.use(names, rows)
        if self._sink.mode == "upsert":
            self._key_at = [names.index(k) for k in self._sink.key]

    def _flush(self) -> None:
        """Upsert: write the buffered rows, except those of keys a prepared transaction of
        this writer holds, which are carried until it is committed or taken back."""
        if not self._latest and not self._carried:
            return
        with self._held_lock:
            held = list(self._held.values())
        names = self._db.names  # the buffered rows' columns
        rows: dict[tuple, Row] = {k: (names, r) for k, r in self._latest.items()}
        self._latest = {}
        for key, row in self._carried.items():  # a buffered row is newer than a carried one
            rows[key] = _merged(row, rows[key]) if key in rows else row
        self._carried = {k: r for k, r in rows.items() if any(k in h for h in held)}
        writable = {k: r for k, r in rows.items() if k not in self._carried}
        self._write_rows(list(writable.values()))
        for key, row in writable.items():  # what the open transaction holds per key, column by column
            self._open[key] = _merged(self._open[key], row) if key in self._open else row

    def _write_rows(self, rows: list[Row]) -> None:
        """Rows named by their own columns (a carried row may name others than the buffered)."""
        by_names: dict[tuple[str, ...], list[tuple]] = {}
        for names, row in rows:
            by_names.setdefault(names, []).append(row)
        for names, values in by_names.items():
            if names != self._db.names:
                self._use(names, values)
            self._write(values)

    def _write(self, rows: list[tuple]) -> None:
        try:
            self._db.write(rows)
        except LockTimeout:
            others = self._other_runs()
            raise SinkError(
                f"PostgresSink {self._name}: rows of {self._sink.table} at {self._where} stayed locked for "
                f"{LOCK_TIMEOUT}. Another transaction holds them: two sink subtasks write the same key (key_by the "
                "upsert key before the sink), or another job or run writes this table"
                + (f"; prepared transactions of other runs of this step hold rows here: {', '.join(others[:5])}. If "
                   "their runs are over, roll them back (ROLLBACK PREPARED '<gid>'), or resume those runs"
                   if others else "")) from None

    def _other_runs(self) -> list[str]:
        """Prepared gids of this job and step that belong to other runs."""
        try:
            return [g for g in self._db.prepared(self._owner + "|")
                    if (parsed := Gid.parse(g)) is not None and parsed.run_id != self._ctx.run_id]
        except SinkError:
            return []

    # --- the two phases ------------------------------------------------------------------

    def pre_commit(self, checkpoint_id: int) -> PgTxn | None:
        """T1: prepare the open transaction (exactly-once) or commit it (at-least-once).
        Every earlier transaction is settled by now (C6a), so nothing stays carried."""
        self._flush()
        if self._carried:
            raise SinkError(f"PostgresSink {self._name}: checkpoint {checkpoint_id} began before an earlier prepared "
                            "transaction of this writer was committed or aborted (docs/protocol.md, C6a)")
        if not self._db.begun:
            return None
        rows, self._open_rows = self._open_rows, 0
        written, self._open = self._open, {}
        if not self._ctx.transactional:
            self._db.commit()
            self.rows_committed += rows
            return None
        gid = str(Gid(self._owner, self._ctx.subtask, self._ctx.run_id, self._ctx.attempt, checkpoint_id))
        try:
            xid = self._db.prepare(gid)
        except PreparedLimit:  # not a lost connection: trying again cannot help
            raise SinkError(
                f"PostgresSink {self._name}: the server at {self._where} says {PREPARED_LIMIT!r} "
                f"(max_prepared_transactions = {self._db.max_prepared()}, for all its databases). An exactly-once "
                "sink subtask holds up to tolerable_failures + 2 prepared transactions at once; if others hold them "
                "(SELECT gid FROM pg_prepared_xacts), resolve those, else set max_prepared_transactions higher in "
                "postgresql.conf and restart the server") from None
        if written:
            with self._held_lock:
                self._held[gid] = written
        return PgTxn(gid, xid, rows)

    def commit(self, txn: PgTxn) -> None:
        """T3: COMMIT PREPARED; idempotent (a transaction already committed is done)."""
        def attempt() -> None:
            if self._db.commit_prepared(txn.gid):
                self.rows_committed += txn.rows
            else:  # no prepared transaction has this gid (any more)
                status = self._db.status(txn.xid)
                if status is None:
                    # Older than the server's commit log: committed long ago. A transaction of a
                    # checkpoint that can be restored is only ever committed (T2, T4): a recover
                    # rolls back only gids of its own run that the checkpoint it restores lacks.
                    logger.info("PostgresSink %s: %s at %s is older than the server's commit log; it was committed",
                                self._name, txn.gid, self._where)
                elif status != "committed":
                    raise StagedDataMissingError(
                        f"PostgresSink {self._name}: prepared transaction {txn.gid} at {self._where} is gone and "
                        f"was not committed (its status: {status})")
            with self._held_lock:
                self._held.pop(txn.gid, None)  # its keys may be written again

        self._retrying(f"committing {txn.gid}", attempt)

    def abort(self, txn: PgTxn) -> bool:
        """C6a, upsert: the checkpoint of `txn` was aborted, so no manifest will ever name
        it: roll it back and take its rows into the open epoch (a row written since is
        newer and stays). Append mode keeps it pending instead: it holds no lock, and its
        rows are not kept here; the next complete checkpoint commits it."""
        if self._sink.mode != "upsert":
            return False
        with self._held_lock:
            rows = self._held.pop(txn.gid, {})
        if not self._retrying(f"rolling back {txn.gid}", lambda: self._db.rollback_prepared(txn.gid)):
            if self._db.status(txn.xid) == "committed":
                return True  # committed already: its rows are there
        for key, row in rows.items():  # under what came since, oldest first: written with the next flush
            since = self._carried.get(key) or self._open.get(key)  # a key is in one of them at most
            if since is not None:
                row = _merged(row, since)
            if key in self._latest:
                row = _merged(row, (self._db.names, self._latest.pop(key)))
            self._carried[key] = row
        self._open_rows += txn.rows
        return True

    def recover(self, txns: list[PgTxn], checkpoint_id: int) -> None:
        """T4: commit the restored checkpoint's transactions; roll back every other
        prepared transaction this subtask owns in this run (its own and those of the old
        subtasks it takes over), except those of this attempt or later."""
        for txn in txns:
            self.commit(txn)
        keep = {t.gid for t in txns}
        me = self._ctx

        def abort_stale() -> int:
            aborted = 0
            for gid in self._db.prepared(self._owner + "|"):
                parsed = Gid.parse(gid)
                if gid in keep or parsed is None or parsed.subtask % me.parallelism != me.subtask:
                    continue
                if parsed.run_id != me.run_id:
                    continue  # another run's (two runs from one savepoint): never touched (F4)
                if parsed.attempt >= me.attempt:
                    continue  # this attempt's or a later one's: a late recover destroys nothing
                aborted += self._db.rollback_prepared(gid)  # False: resolved meanwhile
            return aborted

        aborted = self._retrying("rolling back stale prepared transactions", abort_stale)
        if aborted:
            logger.info("PostgresSink %s rolled back %d prepared transactions not in checkpoint %d",
                        self._name, aborted, checkpoint_id)
        others = self._other_runs() if self._sink.mode == "upsert" and me.subtask == 0 else []
        if others:
            logger.warning("PostgresSink %s: %d prepared transactions of other runs of this step are on %s (%s); "
                           "they hold their rows' locks until their runs commit or roll them back, and this run "
                           "waits for any key they hold", self._name, len(others), self._where, ", ".join(others[:3]))

    def _retrying(self, what: str, fn: Any) -> Any:
        try:
            return self._sink.retry.call(f"PostgresSink {self._name} {what} at {self._where}", fn, (Transient,))
        except Transient as exc:
            raise SinkError(f"PostgresSink {self._name} failed {what} at {self._where}: {first_line(exc)}") from None

    def close(self) -> dict[str, int]:
        if not self._ctx.transactional:
            self.pre_commit(0)  # at-least-once: commits the rest
        elif self._db.begun or self._latest or self._carried:
            raise SinkError(f"PostgresSink {self._name} closed with rows that no checkpoint covered")
        elif self._held:
            raise SinkError(f"PostgresSink {self._name} closed with prepared transactions not committed")
        self._db.close()
        return {"rows": self.rows_committed}
