"""Sources: where records come from.

A source is split into partitions. Each partition reads in batches, reports its
offset with `snapshot()`, and is rebuilt from that offset after a failure
(`Source.build_partition(key, resume_state)`); nothing about its position is fixed in a
constructor that the resume state could contradict.

To write your own source, subclass `Source` and `SourcePartition`:

    class MySource(rs.sources.Source):
        def list_partitions(self) -> list[str]: ...
        def build_partition(self, key, resume_state, batch_size): ...

Partitions are assigned to the source step's subtasks round-robin in the order that
`list_partitions` returns them.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream.errors import JobDefinitionError, SourceError

logger = logging.getLogger(__name__)



class SourcePartition(ABC):
    """One independently readable, seekable slice of a source."""

    @abstractmethod
    def next_batch(self) -> list[Any] | pa.RecordBatch | None:
        """The next records: a non-empty batch, `[]` when none is ready yet, `None` at the end."""

    @abstractmethod
    def snapshot(self) -> Any:
        """The offset to resume from: the position just after the last returned record."""

    def next_awake(self) -> float | None:
        """When (time.time()) to ask again after `next_batch` returned `[]`; None means soon."""
        return None

    def checkpoint_complete(self, offset: Any) -> None:
        """A checkpoint holding `offset` of this partition is complete (e.g. to report it
        to the system read from). Nothing may depend on it: it is not called again after
        a failure."""

    def close(self) -> None:
        """Release files or connections."""


class Source(ABC):
    """A partitioned, replayable input."""

    @abstractmethod
    def list_partitions(self) -> list[str]:
        """Stable partition keys. Called before the job starts; errors here stop the job early."""

    @abstractmethod
    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        """Open partition `key` at `resume_state` (None: where the source starts, which is
        its beginning unless the source is told to start elsewhere)."""

    def build_new_partition(self, key: str, batch_size: int) -> SourcePartition:
        """Open partition `key`, which appeared after the job first started (the checkpoint
        a run restores has no offset for it), at its beginning: nothing of it was read. A
        source whose `build_partition(key, None, ...)` may start elsewhere (Kafka's
        `start="latest"`) overrides this."""
        return self.build_partition(key, None, batch_size)


def __getattr__(name: str) -> Any:
    """Sources whose libraries are optional load on first use: `rs.sources.KafkaSource`."""
    if name in ("KafkaSource", "KafkaRecord"):
        import raystream.kafka
        return getattr(raystream.kafka, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- SequenceSource ----------------------------------------------------------------------


class SequenceSource(Source):
    """The integers 0..n-1 (unbounded when n is None) in `partitions` partitions.

    Partition p emits p, p+P, p+2P, ... where P = partitions. `rate` limits the records
    per second of all partitions together.
    """

    def __init__(self, n: int | None = None, *, partitions: int = 1, rate: float | None = None):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise JobDefinitionError(f"SequenceSource n must be None or an integer >= 0; got {n!r}")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise JobDefinitionError(f"SequenceSource partitions must be an integer >= 1; got {partitions!r}")
        _check_rate("SequenceSource", rate)
        self.n = n
        self.partitions = partitions
        self.rate = rate

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        rate = None if self.rate is None else self.rate / self.partitions
        return _SequencePartition(int(key), self.partitions, self.n, rate, resume_state or 0, batch_size)


class _Pacer:
    """Limits a partition to `rate` records per second (None: no limit) from where it resumed."""

    def __init__(self, rate: float | None, emitted: int):
        self.rate = rate
        self.started = time.monotonic()
        self.emitted_at_start = emitted

    def allowed(self, emitted: int, want: int) -> int:
        if self.rate is None:
            return want
        return min(want, int((time.monotonic() - self.started) * self.rate) - (emitted - self.emitted_at_start))

    def next_awake(self, emitted: int) -> float | None:
        if self.rate is None:
            return None
        due = self.started + (emitted - self.emitted_at_start + 1) / self.rate
        return time.time() + max(0.0, due - time.monotonic())


def _check_rate(what: str, rate: Any) -> None:
    if rate is not None and (not isinstance(rate, (int, float)) or not rate > 0 or math.isinf(rate)):
        raise JobDefinitionError(f"{what} rate must be None or a positive number; got {rate!r}")


class _SequencePartition(SourcePartition):
    def __init__(self, first: int, step: int, n: int | None, rate: float | None, emitted: int, batch_size: int):
        self._first, self._step, self._n = first, step, n
        self._emitted = emitted  # records of this partition emitted so far: the offset
        self._batch_size = batch_size
        self._pacer = _Pacer(rate, emitted)

    def next_batch(self) -> list[int] | None:
        start = self._first + self._emitted * self._step
        if self._n is not None and start >= self._n:
            return None
        count = self._pacer.allowed(self._emitted, self._batch_size)
        if count <= 0:
            return []
        stop = start + count * self._step
        if self._n is not None:
            stop = min(stop, self._n)
        batch = list(range(start, stop, self._step))
        self._emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._emitted

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self._emitted)


# --- ListSource --------------------------------------------------------------------------


class ListSource(Source):
    """Records held in memory, in partitions: `ListSource([r1, r2, ...])` is one partition,
    `ListSource(partitions=[[...], [...]])` several, each read in its order. `rate` limits
    each partition's records per second. For tests, notebooks and examples: the records
    travel to the source's actors with the job."""

    def __init__(self, records: list[Any] | None = None, *, partitions: list[list[Any]] | None = None,
                 rate: float | None = None):
        if (records is None) == (partitions is None):
            raise JobDefinitionError("ListSource takes records or partitions=[...], one of them")
        self.partitions = [list(records)] if records is not None else [list(p) for p in partitions]
        _check_rate("ListSource", rate)
        self.rate = rate

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(len(self.partitions))]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        return _ListPartition(self.partitions[int(key)], resume_state or 0, batch_size, self.rate)


class _ListPartition(SourcePartition):
    def __init__(self, records: list[Any], offset: int, batch_size: int, rate: float | None):
        self._records, self._offset, self._batch_size = records, offset, batch_size
        self._pacer = _Pacer(rate, offset)

    def next_batch(self) -> list[Any] | None:
        if self._offset >= len(self._records):
            return None
        count = self._pacer.allowed(self._offset, self._batch_size)
        if count <= 0:
            return []
        batch = self._records[self._offset:self._offset + count]
        self._offset += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._offset

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self._offset)


# --- FileSource --------------------------------------------------------------------------

_FORMATS = ("text", "jsonl", "csv", "parquet")
_CHUNK = 256 * 1024


class FileSource(Source):
    """Lines or rows of local or `s3://` files; one partition per file.

    Formats: "text" (one str per line), "jsonl" (one JSON value per line), "csv" (one
    dict per row, keyed by the header; quoted fields may not contain newlines) and
    "parquet" (Arrow record batches). The offset is the position in the file, so a
    restarted partition continues where its last checkpoint left it.
    """

    def __init__(self, path_or_glob: str, *, format: str = "text"):
        if not isinstance(path_or_glob, str) or not path_or_glob:
            raise JobDefinitionError(f"FileSource needs a path, glob or s3:// URI; got {path_or_glob!r}")
        if format not in _FORMATS:
            raise JobDefinitionError(f"FileSource format must be one of {', '.join(_FORMATS)}; got {format!r}")
        # Resolved here, in the driver: actors may run in another working directory.
        self.path = path_or_glob if path_or_glob.startswith("s3://") else _files.Location.parse(path_or_glob).uri()
        self.format = format

    def list_partitions(self) -> list[str]:
        try:
            files = _files.expand(self.path)
        except Exception as exc:  # S3 unreachable, no such bucket, no permission
            raise SourceError(f"FileSource could not list {self.path!r}: {exc}") from exc
        if not files:
            raise SourceError(
                f"FileSource found no file matching {self.path!r}; check the path "
                "(relative paths are resolved against the working directory)"
            )
        return files

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        if self.format == "parquet":
            return _ParquetPartition(key, resume_state or 0, batch_size)
        return _LinePartition(key, self.format, resume_state or (0, 0))


class _LinePartition(SourcePartition):
    """Reads a file in chunks of whole lines; the offset is (byte position, line number)."""

    def __init__(self, uri: str, fmt: str, offset: tuple[int, int]):
        self._uri, self._fmt = uri, fmt
        self._pos, self._line = offset
        self._header: list[str] | None = None
        if fmt == "csv":
            self._header = self._read_header()
            if self._pos == 0:  # skip the header line itself
                with _files.open_read(uri) as f:
                    first = f.readline()
                self._pos, self._line = len(first), 1
        self._reader = _files.open_read(uri, self._pos)
        self._carry = b""
        self._eof = False

    def _read_header(self) -> list[str]:
        with _files.open_read(self._uri) as f:
            first = f.readline().decode("utf-8").rstrip("\r\n")
        if not first:
            raise SourceError(f"{self._uri}:1: CSV file has no header line")
        return next(csv.reader([first]))

    def next_batch(self) -> list[Any] | None:
        while True:
            if self._eof and not self._carry:
                return None
            data = b"" if self._eof else self._reader.read(_CHUNK)
            if not data:
                self._eof = True
                data, self._carry = self._carry, b""
                if not data:
                    return None
            else:
                data, self._carry = self._carry + data, b""
                cut = data.rfind(b"\n")
                if cut < 0:  # a line longer than a chunk: keep reading
                    self._carry = data
                    continue
                data, self._carry = data[: cut + 1], data[cut + 1:]
            first_line = self._line + 1
            self._pos += len(data)
            self._line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            return self._parse(data, first_line)

    def _parse(self, data: bytes, first_line: int) -> list[Any]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + data[: exc.start].count(b"\n")
            raise SourceError(f"{self._uri}:{line}: not valid UTF-8 ({exc.reason})") from None
        lines = text.splitlines()
        if self._fmt == "text":
            return lines
        if self._fmt == "jsonl":
            out = []
            loads = json.loads
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    out.append(loads(line))
                except ValueError as exc:
                    raise SourceError(
                        f"{self._uri}:{first_line + i}: malformed JSON line ({exc}); fix or remove the line"
                    ) from None
            return out
        header = self._header or []
        out = []
        for i, row in enumerate(csv.reader(lines)):
            if not row:
                continue
            if len(row) != len(header):
                raise SourceError(
                    f"{self._uri}:{first_line + i}: malformed CSV row: {len(row)} fields where the "
                    f"header has {len(header)}; fix or remove the line"
                )
            out.append(dict(zip(header, row)))
        return out

    def snapshot(self) -> tuple[int, int]:
        return (self._pos, self._line)

    def close(self) -> None:
        self._reader.close()


class _ParquetPartition(SourcePartition):
    """Arrow record batches of a Parquet file; the offset is the number of rows emitted."""

    def __init__(self, uri: str, rows: int, batch_size: int):
        self._uri, self._rows = uri, rows
        try:
            self._file = pq.ParquetFile(_files.open_read(uri, seekable=True))
        except Exception as exc:
            raise SourceError(f"{uri}: not a readable Parquet file ({exc})") from exc
        self._batches = self._file.iter_batches(batch_size=batch_size)
        self._skip = rows

    def next_batch(self) -> pa.RecordBatch | None:
        for batch in self._batches:
            if self._skip:
                if batch.num_rows <= self._skip:
                    self._skip -= batch.num_rows
                    continue
                batch, self._skip = batch.slice(self._skip), 0
            self._rows += batch.num_rows
            return batch
        return None

    def snapshot(self) -> int:
        return self._rows
