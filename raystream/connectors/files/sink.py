"""FileSink: files of records in a local directory or under an S3 prefix, exactly once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from raystream import _files
from raystream.connectors.files.parquet_parts import ParquetPartWriter, parquet_bytes
from raystream.connectors.files.parts import Part, PartWriter, abort_uploads, adopt_part, commit_part, open_part, storage_of
from raystream._storage import LocalStorage, Storage, open_storage
from raystream.connectors.files.names import SEP as _SEP
from raystream.connectors.files.names import ROLLED_PARQUET, committed_checkpoint, taken_over, writer_fields
from raystream.connectors.files.names import written_by as _written_by
from raystream.connectors.files.reading import read_files  # noqa: F401 (its home in 0.2.0; rs.sinks.read_files)
from raystream.connectors.files.rows import FORMATS, arrow_row, as_row, concat, json_default, plain, table_of
from raystream.errors import JobDefinitionError, RestoreError, SinkError, StagedDataMissingError
from raystream.sink_api import Sink, SinkContext, SinkWriter, as_records

logger = logging.getLogger(__name__)

#: FileSink's default rolling policy: a part file rolls at 128 MiB or after 60 s open.
DEFAULT_ROLL_SIZE = 128 * 1024 * 1024
DEFAULT_ROLL_INTERVAL = 60.0

#: The clock of `roll_interval` (the simulation in tests/simulation runs it on its own).
_clock = time.monotonic


@dataclass
class FileTxn:
    """Staged files of one checkpoint: (staging name, final name) pairs, in `directory`
    ("" for the writer's: a run from a savepoint may write elsewhere, and commits the
    savepoint's files where they are)."""

    files: list[tuple[str, str]] = field(default_factory=list)
    directory: str = ""


class FileSink(Sink):
    """Files of records in a local directory or under an `s3://` prefix.

    Each file appears whole (atomic rename locally, one PUT or a completed multipart
    upload on S3). Under exactly-once, data of a checkpoint is first written as
    `_pending-...` files and renamed to `part-...` only when the checkpoint is complete,
    so a reader that lists the directory and ignores names starting with `_` or `.`
    (`read_files` and `read_table` do) sees committed output only.

    Every record is written as a row with named fields (`raystream.connectors.files.rows`):
    a dict as it is, a dataclass or NamedTuple by its fields, a `(key, value)` pair as
    `{"key": ..., "value": ...}`, anything else as `{"value": ...}`; so each JSON line is an
    object that `pyarrow.json`, pandas or Polars can read, and Parquet columns are named.

    By default each sink subtask keeps one part file open across checkpoints and rolls it
    (closes it, to be committed with the next checkpoint) once it holds `roll_size` bytes
    or has been open `roll_interval` seconds: 128 MiB or 60 s, so at most about 60 files
    an hour per sink subtask, each visible up to `roll_interval` plus one checkpoint
    interval after its first record. Either limit may be None (the other one rolls).
    `roll="checkpoint"` (or both limits None, how it was spelled before 0.5) commits one
    file per subtask and checkpoint instead, of at most `rows_per_file` rows: visible a
    checkpoint after they are written, but 3,600 files an hour per subtask at 1 s
    checkpoints. See `raystream.connectors.files.parts` (JSON lines) and
    `raystream.connectors.files.parquet_parts` (Parquet: the open part is kept as
    per-checkpoint segments, merged into one file when it rolls) for how the open part
    survives a crash.
    """

    def __init__(self, directory: str, *, format: str = "jsonl", rows_per_file: int = 500_000,
                 roll_size: int | None = DEFAULT_ROLL_SIZE, roll_interval: float | None = DEFAULT_ROLL_INTERVAL,
                 roll: str = "policy"):
        if not isinstance(directory, str) or not directory:
            raise JobDefinitionError(f"FileSink needs a directory path or s3:// URI; got {directory!r}")
        if format not in FORMATS:
            raise JobDefinitionError(f"FileSink format must be one of {', '.join(FORMATS)}; got {format!r}")
        if not isinstance(rows_per_file, int) or rows_per_file < 1:
            raise JobDefinitionError(f"FileSink rows_per_file must be an integer >= 1; got {rows_per_file!r}")
        # Resolved here, in the driver: actors may run in another working directory.
        self.directory = _files.Location.parse(directory).uri()
        self.format = format
        self.rows_per_file = rows_per_file
        if roll_size is not None and (not isinstance(roll_size, int) or isinstance(roll_size, bool) or roll_size < 1):
            raise JobDefinitionError(f"FileSink roll_size must be a number of bytes >= 1; got {roll_size!r}")
        if roll_interval is not None and (not isinstance(roll_interval, (int, float)) or isinstance(roll_interval, bool)
                                          or not roll_interval > 0):
            raise JobDefinitionError(f"FileSink roll_interval must be a number of seconds > 0; got {roll_interval!r}")
        if roll not in ("policy", "checkpoint"):
            raise JobDefinitionError(f"FileSink roll must be 'policy' (roll_size, roll_interval) or 'checkpoint' (one "
                                     f"file per subtask and checkpoint); got {roll!r}")
        if roll == "checkpoint" and (roll_size, roll_interval) != (DEFAULT_ROLL_SIZE, DEFAULT_ROLL_INTERVAL) \
                and (roll_size, roll_interval) != (None, None):
            raise JobDefinitionError("FileSink roll='checkpoint' commits a file at every checkpoint: drop "
                                     "roll_size and roll_interval, or leave roll out to roll by them")
        per_checkpoint = roll == "checkpoint" or (roll_size is None and roll_interval is None)
        self.roll_size = None if per_checkpoint else roll_size
        self.roll_interval = None if per_checkpoint else roll_interval

    def check(self, *, job_name: str, step_id: str, parallelism: int, exactly_once: bool, job: Any = None) -> None:
        """A local directory that cannot be made or written is refused before the job starts."""
        problem = _files.unwritable(self.directory)
        if problem is not None:
            raise SinkError(f"step {step_id!r}: FileSink cannot write {self.directory}: {problem}")

    @property
    def rolling(self) -> bool:
        """Whether part files roll by size or age (else one file per subtask and checkpoint)."""
        return bool(self.roll_size or self.roll_interval)

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _RollingWriter(self, context) if self.rolling else _FileWriter(self, context)

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        """A rescaled rolling writer takes over the open part files of every old subtask."""
        parts = [p for state in states if state for p in state["in_progress"]]
        return {"in_progress": parts} if parts else None


class _FileWriter(SinkWriter):
    """Names: `_pending-<step>@<subtask>@<run>@<attempt>@<token>-<seq>.<fmt>` while
    staged, `part-<step>@<subtask>@<run>@<checkpoint>@<attempt>@<token>-<seq>.<fmt>` once
    committed, and `part-<step>@<subtask>@<run>@direct@...` when written directly
    (at-least-once). <attempt> is the attempt that wrote the data."""

    def __init__(self, sink: FileSink, context: SinkContext):
        self._sink = sink
        self._ctx = context
        self._store: Storage = open_storage(sink.directory)
        self._tag, self._attempt = writer_fields(context.step_id, context.subtask, context.run_id, context.attempt)
        self._token = uuid.uuid4().hex[:8]  # this writer's files never collide with another's
        self._parts: list[bytes | list[Any] | pa.RecordBatch] = []  # JSON lines already encoded
        self._rows = 0
        self._seq = 0
        self._txn = FileTxn()
        self.files_committed = 0

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        # JSON lines are encoded batch by batch, so a pre-commit only joins and writes them
        self._parts.append(json_lines(batch) if self._sink.format == "jsonl" else batch)
        self._rows += batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
        if self._rows >= self._sink.rows_per_file:
            self._write_file()

    def _write_file(self) -> None:
        """Write the buffer: staged under `_pending-` (transactional) or final at once."""
        if not self._rows:
            return
        stem = f"{self._token}-{self._seq:06d}.{self._sink.format}"
        self._seq += 1
        data = b"".join(self._parts) if self._sink.format == "jsonl" else parquet_bytes(self._parts, f"sink step {self._ctx.step_id!r}")
        self._parts, self._rows = [], 0
        if self._ctx.transactional:
            name = f"_pending-{self._tag}{self._attempt}{stem}"
            self._put(name, data)
            self._txn.files.append((name, stem))
        else:
            self._put(f"part-{self._tag}direct{_SEP}{stem}", data)
            self.files_committed += 1

    def _put(self, name: str, data: bytes) -> None:
        try:
            self._store.put(name, data)
        except Exception as exc:
            raise SinkError(f"FileSink could not write {self._store.uri(name)}: {exc}") from exc

    def pre_commit(self, checkpoint_id: int) -> FileTxn | None:
        self._write_file()
        if not self._ctx.transactional:
            return None
        # The final names carry run and checkpoint, so a fall-back can retract them.
        files = [(pending, f"part-{self._tag}{checkpoint_id:012d}{_SEP}{self._attempt}{stem}")
                 for pending, stem in self._txn.files]
        self._txn = FileTxn()
        return FileTxn(files, self._sink.directory) if files else None

    def commit(self, txn: FileTxn) -> None:
        self.files_committed += _promote(self._store, self._sink.directory, txn)

    def recover(self, txns: list[Any], checkpoint_id: int) -> None:
        """T4, for this subtask and the old subtasks it takes over (j % parallelism): as a
        rolling writer recovers, which also takes the transactions and open files of a
        checkpoint taken with rolling on (the default: this sink was switched to
        roll="checkpoint" since)."""
        rolling = _RollingWriter(self._sink, self._ctx)
        rolling.recover(txns, checkpoint_id)
        self.files_committed += rolling.files_committed

    def close(self) -> dict[str, int]:
        if not self._ctx.transactional:
            self._write_file()
        elif self._rows or self._txn.files:
            raise SinkError(f"FileSink {self._tag} closed with data that no checkpoint covered")
        return {"files": self.files_committed}


def _promote(default: Storage, directory: str, txn: FileTxn) -> int:
    """Commit a `roll="checkpoint"` transaction: its pending files renamed; how many."""
    store = default if txn.directory in ("", directory) else open_storage(txn.directory)
    try:
        store.promote(txn.files)  # durable before the commit counts
    except FileNotFoundError as exc:
        raise StagedDataMissingError(
            f"FileSink cannot commit {exc.filename}: neither it nor its staged file exists") from None
    except Exception as exc:
        raise SinkError(f"FileSink could not commit into {store.uri()}: {exc}") from exc
    return len(txn.files)


def _names(store: Storage, kind: str, ctx: SinkContext) -> list[str]:
    """Names of kind `kind` (`part-`, `_pending-`, `_inprogress-`) written in this run by
    this subtask or the old subtasks it takes over."""
    return [n for n in store.list(f"{kind}{ctx.step_id}{_SEP}")
            if taken_over(n, ctx.run_id, ctx.subtask, ctx.parallelism)]


_TEMP = re.compile(r"\.((?:part-|_inprogress-|_pending-).+)\.[0-9a-f]{32}\.tmp")


def _remove_dead_temps(store: Storage, ctx: SinkContext) -> list[str]:
    """Locally: remove the temporary files (`.<name>.<uuid>.tmp`, `LocalStorage.put`) of
    FileSink names that earlier attempts of this run's subtask (or the old subtasks it
    takes over) were writing when they died; never another run's or subtask's. Returns
    their names."""
    if not isinstance(store, LocalStorage):
        return []  # an S3 PUT leaves no partial object
    try:
        listed = os.listdir(store.root)
    except FileNotFoundError:
        return []
    dead = []
    for name in listed:
        match = _TEMP.fullmatch(name)
        if match is None:
            continue
        key = match.group(1)
        if key.startswith(f"part-{ctx.step_id}{_SEP}") or key.startswith((f"_inprogress-{ctx.step_id}{_SEP}",
                                                                             f"_pending-{ctx.step_id}{_SEP}")):
            attempt = _written_by(key, 4 if key.startswith("part-") else 3)
            if taken_over(key, ctx.run_id, ctx.subtask, ctx.parallelism) and attempt < ctx.attempt:
                try:
                    os.unlink(os.path.join(store.root, name))
                except FileNotFoundError:
                    pass
                dead.append(name)
    return dead


_ORJSON = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _json_line(record: Any) -> bytes:
    row = as_row(record)
    try:
        return orjson.dumps(row, default=json_default, option=_ORJSON)
    except TypeError:  # what orjson cannot write (an int past 64 bits): the standard library can, or says why not
        # json writes a NamedTuple as an array without asking json_default: make it a dict first
        return json.dumps(plain(row), separators=(",", ":"), default=json_default).encode("utf-8") + b"\n"


def json_lines(batch: list[Any] | pa.RecordBatch) -> bytes:
    """A micro-batch as JSON lines in UTF-8, one object per record (`rows.as_row`)."""
    return b"".join(map(_json_line, as_records(batch)))


@dataclass
class RolledTxn:
    """Part files rolled (closed) since the previous barrier, committed with its checkpoint."""

    parts: list[Part]


class _RollingWriter(SinkWriter):
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

    def __init__(self, sink: FileSink, context: SinkContext):
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
        if isinstance(self._open, ParquetPartWriter) and self._open.carry:
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
            if isinstance(self._open, ParquetPartWriter) and self._open.carry:
                self._roll_at_new_schema()
                self._persisted = self._guard(lambda: self._open.persist(checkpoint_id))
        self._checkpoint = checkpoint_id + 1
        rolled, self._rolled = self._rolled, []
        return RolledTxn(rolled) if rolled and self._ctx.transactional else None

    def snapshot(self) -> dict[str, list[Part]] | None:
        return {"in_progress": [self._persisted]} if self._persisted is not None else None

    def commit(self, txn: RolledTxn | FileTxn) -> None:
        if isinstance(txn, FileTxn):  # of a checkpoint taken with roll="checkpoint" (before 0.5, the default)
            self.files_committed += _promote(self._store, self._sink.directory, txn)
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
        stale = [n for n in _names(self._store, "_inprogress-", self._ctx) if _written_by(n, 3) < mine]
        stale += [n for n in _names(self._store, "_pending-", self._ctx) if n not in pending and _written_by(n, 3) < mine]
        later = [n for n in _names(self._store, "part-", self._ctx)
                 if (committed_checkpoint(n) or 0) > checkpoint_id and _written_by(n, 4) < mine and n not in keep]
        self._store.delete(stale + later)
        stale += _remove_dead_temps(self._store, self._ctx)
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
        if self._open is not None:  # covered by the last checkpoint, which is complete
            part = self._guard(self._open.close)
            self._open = None
            self._commit(part)
        return {"files": self.files_committed}
