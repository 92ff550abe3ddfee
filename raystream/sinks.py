"""Sinks: where records go.

A sink builds one writer per subtask of its step. The runtime calls
`write_batch` with micro-batches (a list of records or a `pyarrow.RecordBatch`) and
`close` at the end of the stream; whatever `close` returns is collected into the job
result under the sink's step id.

To write your own sink, subclass `Sink` and `SinkWriter`.
"""
from __future__ import annotations

import io
import json
import logging
import uuid
from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from raystream import _files
from raystream.errors import JobDefinitionError, SinkError

logger = logging.getLogger(__name__)


class SinkWriter(ABC):
    """Writes the records of one subtask of a sink step."""

    @abstractmethod
    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        """Take a micro-batch of records."""

    def close(self) -> Any:
        """Flush everything at the end of the stream; the return value goes into the result."""
        return None


class Sink(ABC):
    """An output of the job."""

    @abstractmethod
    def build_writer(self, step_id: str, subtask: int, parallelism: int) -> SinkWriter:
        """The writer of subtask `subtask` (0-based) of `parallelism`."""


def as_records(batch: Any) -> list[Any]:
    return batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch


# --- FileSink ----------------------------------------------------------------------------

_SINK_FORMATS = ("jsonl", "parquet")


class FileSink(Sink):
    """Files of records in a local directory or under an `s3://` prefix.

    Each subtask writes part files `part-<step>-<subtask>-<n>-<token>.<format>`; a file
    appears whole (atomic rename locally, one PUT on S3). A reader lists the
    directory and ignores names that start with `_` or `.` (`read_files` does that).
    """

    def __init__(self, directory: str, *, format: str = "jsonl", rows_per_file: int = 500_000):
        if not isinstance(directory, str) or not directory:
            raise JobDefinitionError(f"FileSink needs a directory path or s3:// URI; got {directory!r}")
        if format not in _SINK_FORMATS:
            raise JobDefinitionError(f"FileSink format must be one of {', '.join(_SINK_FORMATS)}; got {format!r}")
        if not isinstance(rows_per_file, int) or rows_per_file < 1:
            raise JobDefinitionError(f"FileSink rows_per_file must be an integer >= 1; got {rows_per_file!r}")
        self.directory = directory
        self.format = format
        self.rows_per_file = rows_per_file

    def build_writer(self, step_id: str, subtask: int, parallelism: int) -> SinkWriter:
        return _FileWriter(self, step_id, subtask)


class _FileWriter(SinkWriter):
    def __init__(self, sink: FileSink, step_id: str, subtask: int):
        self._sink = sink
        self._dir = _files.Location.parse(sink.directory)
        self._prefix = f"part-{step_id}-{subtask:04d}"
        self._token = uuid.uuid4().hex[:8]  # never overwrite the files of an earlier run
        self._parts: list[list[Any] | pa.RecordBatch] = []
        self._rows = 0
        self._files = 0

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self._parts.append(batch)
        self._rows += batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
        if self._rows >= self._sink.rows_per_file:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"{self._prefix}-{self._files:06d}-{self._token}.{self._sink.format}"
        data = encode(self._parts, self._sink.format)
        try:
            _files.write_bytes(self._dir.join(name), data)
        except Exception as exc:
            raise SinkError(f"FileSink could not write {self._dir.join(name).uri()}: {exc}") from exc
        self._files += 1
        self._parts, self._rows = [], 0

    def close(self) -> dict[str, int]:
        self._flush()
        return {"files": self._files}


def encode(parts: list[list[Any] | pa.RecordBatch], fmt: str) -> bytes:
    """Serialize micro-batches as one JSON-lines or Parquet file."""
    if fmt == "jsonl":
        dumps = json.dumps
        lines = [dumps(r, separators=(",", ":")) for part in parts for r in as_records(part)]
        return ("\n".join(lines) + "\n").encode("utf-8")
    import pyarrow.parquet as pq

    batches = [p if isinstance(p, pa.RecordBatch) else pa.RecordBatch.from_pylist(p) for p in parts if len(p)]
    table = pa.Table.from_batches(batches)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def read_files(directory: str, *, format: str = "jsonl") -> list[Any]:
    """All records a reader of `directory` sees: files whose names start with `_` or `.` are skipped."""
    records: list[Any] = []
    for uri in _files.expand(directory):
        data = _files.read_bytes(_files.Location.parse(uri))
        if format == "jsonl":
            records.extend(json.loads(line) for line in data.decode("utf-8").splitlines() if line)
        elif format == "parquet":
            import pyarrow.parquet as pq

            records.extend(pq.read_table(pa.BufferReader(data)).to_pylist())
        else:
            raise JobDefinitionError(f"read_files format must be one of {', '.join(_SINK_FORMATS)}; got {format!r}")
    return records


# --- PrintSink and CollectSink -----------------------------------------------------------


class PrintSink(Sink):
    """Prints each record on the standard output of its subtask (Ray forwards it to the driver)."""

    def build_writer(self, step_id: str, subtask: int, parallelism: int) -> SinkWriter:
        return _PrintWriter(step_id)


class _PrintWriter(SinkWriter):
    def __init__(self, step_id: str):
        self._step_id = step_id

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        print("\n".join(f"{self._step_id}: {r!r}" for r in as_records(batch)), flush=True)


class CollectSink(Sink):
    """Collects records into the job result: `result.outputs[step_id]`.

    keep="all" collects every record; keep="last" takes `(key, value)` records and keeps
    the latest value per key, as `(key, value)` pairs (a table of the final state).
    Meant for tests and notebooks: the records travel to the driver in memory.
    """

    def __init__(self, *, keep: str = "all"):
        if keep not in ("all", "last"):
            raise JobDefinitionError(f"CollectSink keep must be 'all' or 'last'; got {keep!r}")
        self.keep = keep

    def build_writer(self, step_id: str, subtask: int, parallelism: int) -> SinkWriter:
        return _LatestWriter() if self.keep == "last" else _CollectWriter()


class _CollectWriter(SinkWriter):
    def __init__(self) -> None:
        self._records: list[Any] = []

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self._records.extend(as_records(batch))

    def close(self) -> list[Any]:
        return self._records


class _LatestWriter(SinkWriter):
    def __init__(self) -> None:
        self._latest: dict[Any, Any] = {}

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        try:
            self._latest.update(as_records(batch))
        except (TypeError, ValueError) as exc:
            raise SinkError(f"CollectSink(keep='last') takes (key, value) records: {exc}") from None

    def close(self) -> list[tuple[Any, Any]]:
        return list(self._latest.items())
