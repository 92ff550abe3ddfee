"""FileSink's writer with a rolling policy (the default): one part file open at a time
across checkpoints, rolled by size or age and committed with the checkpoint after."""
from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream._storage import Storage, open_storage
from raystream.connectors.files.commits import (FileTxn, SinkSettings, json_lines, promote, remove_dead_temps,
                                                run_names)
from raystream.connectors.files.names import SEP as _SEP
from raystream.connectors.files.names import ROLLED_PARQUET, committed_checkpoint, taken_over, writer_fields
from raystream.connectors.files.names import written_by as _written_by
from raystream.connectors.files.parquet_parts import ParquetPartWriter
from raystream.connectors.files.parts import Part, PartWriter, abort_uploads, adopt_part, commit_part, open_part, storage_of
from raystream.errors import RestoreError, SinkError, StagedDataMissingError
from raystream.sink_api import SinkContext, SinkWriter

logger = logging.getLogger(__name__)

#: The clock of `roll_interval` (the simulation in tests/simulation runs it on its own).
_clock = time.monotonic


@dataclass
class RolledTxn:
    """Part files rolled (closed) since the previous barrier, committed with its checkpoint."""

    parts: list[Part]


class RollingWriter(SinkWriter):
    """FileSink with a rolling policy: one open part file at a time (raystream.connectors.files.parts,
    and parquet_parts for Parquet).

    Names: the open file is `_inprogress-<step>@<subtask>@<run>@<attempt>@<token>-<seq>.jsonl`
    locally (Parquet: `...-<seq>-rolled.parquet`, its segments `_inprogress-...-<seq>-s<k>.parquet`);
    it becomes `part-<step>@<subtask>@<run>@<checkpoint>@<attempt>@<token>-<seq>.<fmt>`
    where <checkpoint> is the first checkpoint its data belongs to, so a fall-back to an older
    checkpoint retracts exactly the files whose every record is replayed.

    Exactly-once: rolled files are committed with the next checkpoint; the open file is in
    every snapshot as persisted at the barrier, and a restore commits it cut back to that
    length (T4). At-least-once: a rolled file is committed at once, and the open file of
    the checkpoint restored is committed when the writer starts.
    """

    def __init__(self, sink: SinkSettings, context: SinkContext):
        self._sink = sink
        self._ctx = context
        self._store: Storage = open_storage(sink.directory)
        self._tag, self._attempt = writer_fields(context.step_id, context.subtask, context.run_id, context.attempt)
        self._token = uuid.uuid4().hex[:8]
        self._seq = 0
        self._open: PartWriter | ParquetPartWriter | None = None
        self._rolled: list[Part] = []
        self._persisted: Part | None = None  # the open file as of the last barrier
        self._checkpoint = 1  # the checkpoint that the records written now belong to
        self._restored: list[Part] = list((context.resume_state or {}).get("in_progress", []))
        self.files_committed = 0
        if not context.transactional:
            for part in self._restored:
                self._restore_part(part, 0)

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        if not len(batch):
            return  # no empty part file is ever opened
        self._write(json_lines(batch) if self._sink.format == "jsonl" else batch)
        self._roll_at_new_schema()

    def _roll_at_new_schema(self) -> None:
        """A Parquet part's rows of another schema than its segments' (`carry`) start a
        new part, and the part rolls without them: no merge ever casts (it could fail
        after the checkpoint that recorded the rows completed)."""
        while isinstance(self._open, ParquetPartWriter) and self._open.carry:  # each roll writes a run at least
            self._roll()

    def _write(self, data: bytes | list[Any] | pa.RecordBatch) -> None:
        if self._open is None:
            stem = f"{self._token}-{self._seq:06d}" + (ROLLED_PARQUET if self._sink.format == "parquet" else ".jsonl")
            self._seq += 1
            stamp = f"{self._checkpoint:012d}{_SEP}{self._attempt}" if self._ctx.transactional else f"direct{_SEP}"
            self._open = self._guard(lambda: open_part(
                self._store, f"_inprogress-{self._tag}{self._attempt}{stem}", f"part-{self._tag}{stamp}{stem}",
                _clock(), format=self._sink.format, rows_per_file=self._sink.rows_per_file,
                where=f"sink step {self._ctx.step_id!r}"))
        self._guard(lambda: self._open.write(data))
        if self._sink.roll_size and self._open.size >= self._sink.roll_size:
            self._roll()

    def _roll(self) -> None:
        part = self._guard(self._open.close)
        carry = self._open.carry if isinstance(self._open, ParquetPartWriter) else []  # set by close too
        self._open = self._persisted = None
        if self._ctx.transactional:
            self._rolled.append(part)
        else:
            self._commit(part)
        for batch in carry:  # rows of another schema: the next part's
            self._write(batch)

    def pre_commit(self, checkpoint_id: int) -> RolledTxn | None:
        if self._open is not None and self._sink.roll_interval and \
                _clock() - self._open.opened_at >= self._sink.roll_interval:
            self._roll()
        if self._open is not None:  # on S3 its tail travels in the snapshot (connectors/files/parts.py, 2)
            self._persisted = self._guard(lambda: self._open.persist(checkpoint_id))
            while isinstance(self._open, ParquetPartWriter) and self._open.carry:  # runs of several schemas
                self._roll_at_new_schema()
                self._persisted = self._guard(lambda: self._open.persist(checkpoint_id))
        self._checkpoint = checkpoint_id + 1
        rolled, self._rolled = self._rolled, []
        return RolledTxn(rolled) if rolled and self._ctx.transactional else None

    def snapshot(self) -> dict[str, list[Part]] | None:
        return {"in_progress": [self._persisted]} if self._persisted is not None else None

    def commit(self, txn: RolledTxn | FileTxn) -> None:
        if isinstance(txn, FileTxn):  # of a checkpoint taken with roll="checkpoint" (before 0.5, the default)
            self.files_committed += promote(self._store, self._sink.directory, txn)
            return
        for part in txn.parts:
            self._commit(part)

    def _commit(self, part: Part) -> None:
        self._guard_missing(part, lambda: commit_part(storage_of(part, self._store), part))
        self.files_committed += 1

    def _restore_part(self, part: Part, checkpoint_id: int) -> None:
        """A part open at the restored checkpoint: committed as it was then if this run
        wrote it; another run's (a start from its checkpoint) is never touched, its
        recorded bytes copied into a file of this run if it is not committed."""
        if part.final.split(_SEP)[2] == (self._ctx.run_id or "run"):
            self._commit(part)
            return
        name = self._copy_name(part, checkpoint_id)
        self._guard_missing(part, lambda: adopt_part(storage_of(part, self._store), part, self._store, name))

    def _guard_missing(self, part: Part, fn: Any) -> None:
        try:
            fn()
        except FileNotFoundError as exc:
            raise StagedDataMissingError(
                f"FileSink cannot commit {storage_of(part, self._store).uri(part.final)}: {exc.strerror or exc}") from None
        except RestoreError:
            raise
        except Exception as exc:
            raise SinkError(f"FileSink could not commit {storage_of(part, self._store).uri(part.final)}: {exc}") from exc

    def _copy_name(self, part: Part, checkpoint_id: int) -> str:
        """This run's file for the recorded bytes of another run's open part (_part_files, 5)."""
        digest = hashlib.sha256(part.final.encode()).hexdigest()[:12]
        end = ROLLED_PARQUET if self._sink.format == "parquet" else ".jsonl"
        return f"part-{self._tag}{checkpoint_id:012d}{_SEP}{0:06d}{_SEP}copy-{digest}{end}"

    def _guard(self, fn: Any) -> Any:
        try:
            return fn()
        except SinkError:
            raise  # says what is wrong already (rows that make no Parquet table)
        except Exception as exc:
            raise SinkError(f"FileSink could not write under {self._store.uri()}: {exc}") from exc

    def recover(self, txns: list[RolledTxn | FileTxn], checkpoint_id: int) -> None:
        """T4, for this subtask and the old subtasks it takes over (j % parallelism).
        Transactions of `roll="checkpoint"` (`FileTxn`: a checkpoint taken before the sink
        rolled) are committed too, and older attempts' pending files aborted."""
        for txn in txns:
            self.commit(txn)
        for part in self._restored:  # open at the restored checkpoint: committed as it was then
            self._restore_part(part, checkpoint_id)
        self._checkpoint = checkpoint_id + 1
        rolled = [t for t in txns if isinstance(t, RolledTxn)]
        files = [t for t in txns if isinstance(t, FileTxn)]
        keep = {p.final for p in self._restored} | {p.final for t in rolled for p in t.parts}
        pending = {name for t in files for name, _ in t.files}
        mine = self._ctx.attempt
        stale = [n for n in run_names(self._store, "_inprogress-", self._ctx) if _written_by(n, 3) < mine]
        stale += [n for n in run_names(self._store, "_pending-", self._ctx) if n not in pending and _written_by(n, 3) < mine]
        later = [n for n in run_names(self._store, "part-", self._ctx)
                 if (committed_checkpoint(n) or 0) > checkpoint_id and _written_by(n, 4) < mine and n not in keep]
        self._store.delete(stale + later)
        stale += remove_dead_temps(self._store, self._ctx)
        ctx = self._ctx
        aborted = abort_uploads(self._store, f"part-{ctx.step_id}{_SEP}", keep, lambda n: _written_by(n, 4) < mine
                                and taken_over(n, ctx.run_id, ctx.subtask, ctx.parallelism))
        if stale or later or aborted:
            logger.info("FileSink %s aborted %d open files and %d uploads, retracted %d files of checkpoints after %d",
                        self._tag, len(stale), aborted, len(later), checkpoint_id)

    def close(self) -> dict[str, int]:
        if self._ctx.transactional and (self._rolled or (
                self._open is not None and not self._open.covers(self._persisted))):
            raise SinkError(f"FileSink {self._tag} closed with data that no checkpoint covered")
        while self._open is not None:  # covered by the last checkpoint, which is complete
            part = self._guard(self._open.close)
            carry = self._open.carry if isinstance(self._open, ParquetPartWriter) else []  # not transactional only
            self._open = None
            self._commit(part)
            for batch in carry:  # rows of other schemas: parts of their own
                self._write(batch)
        return {"files": self.files_committed}
