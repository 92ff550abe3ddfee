"""FileSink: files of records in a local directory or under an S3 prefix, exactly once."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream._storage import Storage, open_storage
from raystream.errors import JobDefinitionError, SinkError, StagedDataMissingError
from raystream.sink_api import Sink, SinkContext, SinkWriter, as_records

logger = logging.getLogger(__name__)


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
