"""Sinks: where records go, exactly once.

A sink builds one writer per subtask of its step, from a `SinkContext`. The runtime
calls `write_batch` with micro-batches (a list of records or a `pyarrow.RecordBatch`).

Under exactly-once the writer takes part in a two-phase commit with the checkpoints
(docs/protocol.md, T1-T4):

- T1 `pre_commit(checkpoint_id)` at the checkpoint barrier: make everything written
  since the previous pre-commit durable but invisible, and return a small picklable
  transaction describing it (None when there is nothing). The transaction goes into
  the checkpoint.
- T3 `commit(txn)` once that checkpoint is complete: make the transaction visible. It
  may run more than once for the same transaction (after a failure), so it is
  idempotent.
- T4 `recover(txns, checkpoint_id)` when a subtask is restored from checkpoint
  `checkpoint_id`: commit `txns` (its transactions that may not have been committed),
  abort everything else this subtask staged in earlier attempts (`context.attempt`),
  and retract what earlier attempts of this subtask committed for later checkpoints of
  the same run. Data of this attempt or a later one is never touched: a recover that
  lands late (a slow request of a process already replaced) destroys nothing.
  Retraction matters only when a newer checkpoint was refused (a snapshot failed its
  checksum) and the job falls back past it: its output is recomputed, so the committed
  copy must go. A sink that cannot retract output duplicates that range in this one
  case. Touch only this writer's own (step, subtask, run) data. When a transaction in
  `txns` can no longer be committed because its staged data is gone, raise
  `StagedDataMissingError`: the job then falls back to the checkpoint before and
  retracts.

Under at-least-once (`context.transactional` is False) writers write directly, and
`pre_commit` at each barrier must make everything written so far durable and return
None: the checkpoint's source offsets are past those records, so a buffer still in
memory would be lost in a crash. `snapshot()` may return writer state that is
checkpointed and handed back as `context.resume_state`. Whatever `close()` returns at
the end of the stream goes into the job result under the sink's step id.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream._storage import Storage, open_storage
from raystream.errors import JobDefinitionError, RestoreError, SinkError, StagedDataMissingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkContext:
    """What a writer is built for: its step, its subtask, and how to behave."""

    step_id: str
    subtask: int
    parallelism: int
    transactional: bool = False
    resume_state: Any = None
    run_id: str = ""  # the job run this writer belongs to: names its output for retraction
    attempt: int = 0  # the attempt of the run this writer belongs to; later attempts recover its data
    job_name: str = ""  # names the writer's transactions in an external system (PostgresSink's gids)


class SinkWriter(ABC):
    """Writes the records of one subtask of a sink step."""

    @abstractmethod
    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        """Take a micro-batch of records."""

    def pre_commit(self, checkpoint_id: int) -> Any:
        """At a barrier. Transactional: seal what was written since the last pre-commit and
        return its transaction (or None). Otherwise: flush everything buffered; return None."""
        return None

    def commit(self, txn: Any) -> None:
        """Make a pre-committed transaction visible. Idempotent."""

    def recover(self, txns: list[Any], checkpoint_id: int) -> None:
        """After a restore from `checkpoint_id`: commit `txns`, abort whatever else this
        subtask staged, retract what it committed for later checkpoints of this run."""
        for txn in txns:
            self.commit(txn)

    def snapshot(self) -> Any:
        """Writer state to checkpoint (handed back as `SinkContext.resume_state`)."""
        return None

    def close(self) -> Any:
        """Flush at the end of the stream; the return value goes into the job result."""
        return None


class Sink(ABC):
    """An output of the job."""

    @abstractmethod
    def build_writer(self, context: SinkContext) -> SinkWriter:
        """The writer of one subtask."""

    def check(self, *, job_name: str, step_id: str, parallelism: int, exactly_once: bool) -> None:
        """Called in the driver before the job starts: raise SinkError saying what to fix
        when the sink cannot work (an unreachable server, a missing table)."""

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        """The resume state of one writer that takes over several old subtasks' writers
        (after the sink's parallelism changed). A sink whose writers keep state overrides
        this; the default accepts at most one state that is not None."""
        present = [s for s in states if s is not None]
        if len(present) > 1:
            raise RestoreError(
                f"sink {step_id!r} ({type(self).__name__}) keeps writer state per subtask and does not combine "
                f"{len(present)} of them: restore it at the parallelism it was checkpointed with, or implement "
                f"{type(self).__name__}.combine_writer_states")
        return present[0] if present else None


def as_records(batch: Any) -> list[Any]:
    return batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch


def __getattr__(name: str) -> Any:
    """Sinks whose libraries are optional load on first use: `rs.sinks.PostgresSink`."""
    if name == "PostgresSink":
        from raystream.postgres import PostgresSink
        return PostgresSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- FileSink ----------------------------------------------------------------------------

_SINK_FORMATS = ("jsonl", "parquet")


@dataclass
class FileTxn:
    """Staged files of one checkpoint: (staging name, final name) pairs."""

    files: list[tuple[str, str]] = field(default_factory=list)


class FileSink(Sink):
    """Files of records in a local directory or under an `s3://` prefix.

    Each file appears whole (atomic rename locally, one PUT on S3). Under exactly-once,
    data of a checkpoint is first written as `_pending-...` files and renamed to
    `part-...` only when the checkpoint is complete, so a reader that lists the
    directory and ignores names starting with `_` or `.` (`read_files` does) sees
    committed output only.
    """

    def __init__(self, directory: str, *, format: str = "jsonl", rows_per_file: int = 500_000):
        if not isinstance(directory, str) or not directory:
            raise JobDefinitionError(f"FileSink needs a directory path or s3:// URI; got {directory!r}")
        if format not in _SINK_FORMATS:
            raise JobDefinitionError(f"FileSink format must be one of {', '.join(_SINK_FORMATS)}; got {format!r}")
        if not isinstance(rows_per_file, int) or rows_per_file < 1:
            raise JobDefinitionError(f"FileSink rows_per_file must be an integer >= 1; got {rows_per_file!r}")
        # Resolved here, in the driver: actors may run in another working directory.
        self.directory = _files.Location.parse(directory).uri()
        self.format = format
        self.rows_per_file = rows_per_file

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _FileWriter(self, context)


#: Separates the fields of FileSink names; step ids and run ids never contain it, so a
#: prefix of (step, subtask, run) matches that writer's files and no other's.
_SEP = "@"


def committed_checkpoint(name: str) -> int | None:
    """The checkpoint id in a committed FileSink file name (None for at-least-once files)."""
    fields = name.split(_SEP)
    return int(fields[3]) if name.startswith("part-") and len(fields) > 5 and fields[3].isdigit() else None


def _written_by(name: str, field_index: int) -> int:
    fields = name.split(_SEP)
    return int(fields[field_index]) if len(fields) > field_index and fields[field_index].isdigit() else 0


class _FileWriter(SinkWriter):
    """Names: `_pending-<step>@<subtask>@<run>@<attempt>@<token>-<seq>.<fmt>` while
    staged, `part-<step>@<subtask>@<run>@<checkpoint>@<attempt>@<token>-<seq>.<fmt>` once
    committed, and `part-<step>@<subtask>@<run>@direct@...` when written directly
    (at-least-once). <attempt> is the attempt that wrote the data."""

    def __init__(self, sink: FileSink, context: SinkContext):
        self._sink = sink
        self._ctx = context
        self._store: Storage = open_storage(sink.directory)
        self._tag = _SEP.join((context.step_id, f"{context.subtask:04d}", context.run_id or "run")) + _SEP
        self._attempt = f"{context.attempt:06d}{_SEP}"
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
        data = b"".join(self._parts) if self._sink.format == "jsonl" else parquet_bytes(self._parts)
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
        return FileTxn(files) if files else None

    def commit(self, txn: FileTxn) -> None:
        try:
            self._store.promote(txn.files)  # durable before the commit counts
        except FileNotFoundError as exc:
            raise StagedDataMissingError(
                f"FileSink cannot commit {exc.filename}: neither it nor its staged file exists") from None
        except Exception as exc:
            raise SinkError(f"FileSink could not commit into {self._store.uri()}: {exc}") from exc
        self.files_committed += len(txn.files)

    def recover(self, txns: list[FileTxn], checkpoint_id: int) -> None:
        for txn in txns:
            self.commit(txn)
        keep = {pending for txn in txns for pending, _ in txn.files}
        mine = self._ctx.attempt
        stale = [n for n in self._store.list(f"_pending-{self._tag}")
                 if n not in keep and _written_by(n, 3) < mine]
        later = [n for n in self._store.list(f"part-{self._tag}")
                 if (committed_checkpoint(n) or 0) > checkpoint_id and _written_by(n, 4) < mine]
        self._store.delete(stale + later)
        if stale or later:
            logger.info("FileSink %s aborted %d staged files and retracted %d files of checkpoints after %d",
                        self._tag, len(stale), len(later), checkpoint_id)

    def close(self) -> dict[str, int]:
        if not self._ctx.transactional:
            self._write_file()
        elif self._rows or self._txn.files:
            raise SinkError(f"FileSink {self._tag} closed with data that no checkpoint covered")
        return {"files": self.files_committed}


def _json_default(value: Any) -> Any:
    """JSON for what json does not know: dataclasses (a WindowResult) as objects, datetimes
    in ISO 8601 (orjson writes both itself)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON; map records to dicts, lists, "
                    "strings and numbers before the sink")


_ORJSON = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _json_line(record: Any) -> bytes:
    try:
        return orjson.dumps(record, default=_json_default, option=_ORJSON)
    except TypeError:  # what orjson cannot write (an int past 64 bits): the standard library can, or says why not
        return json.dumps(record, separators=(",", ":"), default=_json_default).encode("utf-8") + b"\n"


def json_lines(batch: list[Any] | pa.RecordBatch) -> bytes:
    """A micro-batch as JSON lines, in UTF-8."""
    return b"".join(map(_json_line, as_records(batch)))


def parquet_bytes(parts: list[list[Any] | pa.RecordBatch]) -> bytes:
    """Micro-batches as one Parquet file (JSON lines are encoded as they come: `json_lines`)."""
    batches = [p if isinstance(p, pa.RecordBatch) else pa.RecordBatch.from_pylist(p) for p in parts if len(p)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_batches(batches), buf)
    return buf.getvalue()


def read_files(directory: str, *, format: str = "jsonl") -> list[Any]:
    """All records a reader of `directory` sees: names starting with `_` or `.` are skipped."""
    if format not in _SINK_FORMATS:
        raise JobDefinitionError(f"read_files format must be one of {', '.join(_SINK_FORMATS)}; got {format!r}")
    records: list[Any] = []
    for uri in _files.expand(directory):
        data = _files.read_bytes(_files.Location.parse(uri))
        if format == "jsonl":
            records.extend(json.loads(line) for line in data.decode("utf-8").splitlines() if line)
        else:
            records.extend(pq.read_table(pa.BufferReader(data)).to_pylist())
    return records


# --- PrintSink and CollectSink -----------------------------------------------------------


class PrintSink(Sink):
    """Prints each record on the standard output of its subtask (Ray forwards it to the driver).

    Printing cannot be taken back: records replayed after a failure print again.
    """

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _PrintWriter(context.step_id)


class _PrintWriter(SinkWriter):
    def __init__(self, step_id: str):
        self._step_id = step_id

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        print("\n".join(f"{self._step_id}: {r!r}" for r in as_records(batch)), flush=True)


class CollectSink(Sink):
    """Collects records into the job result: `result.outputs[step_id]`.

    keep="all" collects every record; keep="last" takes `(key, value)` records and keeps
    the latest value per key (a table of the final state). The collection is writer
    state, checkpointed with the job, so it is exactly-once too. Meant for tests and
    notebooks: everything is held in memory and sent to the driver at the end.
    """

    def __init__(self, *, keep: str = "all"):
        if keep not in ("all", "last"):
            raise JobDefinitionError(f"CollectSink keep must be 'all' or 'last'; got {keep!r}")
        self.keep = keep

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        if self.keep == "last":  # key groups never overlap, so no key is in two states
            return {k: v for state in states if state for k, v in state.items()}
        return [r for state in states if state for r in state]

    def build_writer(self, context: SinkContext) -> SinkWriter:
        if self.keep == "last":
            return _LatestWriter(context.resume_state)
        return _CollectWriter(context.resume_state)


class _CollectWriter(SinkWriter):
    def __init__(self, resume_state: list[Any] | None):
        self._records: list[Any] = list(resume_state or [])

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self._records.extend(as_records(batch))

    def snapshot(self) -> list[Any]:
        return self._records

    def close(self) -> list[Any]:
        return self._records


class _LatestWriter(SinkWriter):
    def __init__(self, resume_state: dict[Any, Any] | None):
        self._latest: dict[Any, Any] = dict(resume_state or {})

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        try:
            self._latest.update(as_records(batch))
        except (TypeError, ValueError) as exc:
            raise SinkError(f"CollectSink(keep='last') takes (key, value) records: {exc}") from None

    def snapshot(self) -> dict[Any, Any]:
        return self._latest

    def close(self) -> list[tuple[Any, Any]]:
        return list(self._latest.items())
