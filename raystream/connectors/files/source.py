"""FileSource: lines or rows of local or `s3://` files, one partition per file, resumed
from the position in the file (users reach it as `rs.sources.FileSource`)."""
from __future__ import annotations

import collections
import csv
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream.errors import JobDefinitionError, SourceError
from raystream.source_api import Source, SourcePartition

logger = logging.getLogger(__name__)


_FORMATS = ("text", "jsonl", "csv", "parquet")
_CHUNK = 256 * 1024


class FileSource(Source):
    """Lines or rows of local or `s3://` files; one partition per file.

    Formats: "text" (one str per line), "jsonl" (one JSON value per line), "csv" (one
    dict of strings per row, keyed by the header; quoted fields may not contain newlines)
    and "parquet" (Arrow record batches). Lines end at a newline (LF) only. A partition
    emits at most `batch_size` records at a time (RuntimeConfig.batch_size). The offset is
    the position in the file, so a restarted partition continues where its last
    checkpoint left it.
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
        return _LinePartition(key, self.format, resume_state or (0, 0), batch_size)


class _LinePartition(SourcePartition):
    """Reads a file in chunks of whole lines and emits at most `batch_size` records at a
    time; the offset is (byte position, line number) after the last line emitted. Lines
    end at a newline (LF) only, and a CR before it is dropped: U+2028 inside a JSON
    string or a form feed in a text line is part of its line, as in Arrow's readers."""

    def __init__(self, uri: str, fmt: str, offset: tuple[int, int], batch_size: int):
        self._uri, self._fmt, self._batch_size = uri, fmt, batch_size
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
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()  # (line, its bytes in the file)

    def _read_header(self) -> list[str]:
        with _files.open_read(self._uri) as f:
            first = f.readline().decode("utf-8").rstrip("\r\n")
        if not first:
            raise SourceError(f"{self._uri}:1: CSV file has no header line")
        return next(csv.reader([first]))

    def _fill(self) -> bool:
        """Read until whole lines are pending; False at the end of the file."""
        while not self._pending:
            if self._eof:
                return False
            data = self._reader.read(_CHUNK)
            if not data:
                self._eof = True
                if self._carry:  # the last line, without a "\n"
                    self._pending.append((self._carry, len(self._carry)))
                    self._carry = b""
                continue
            data = self._carry + data
            cut = data.rfind(b"\n")
            if cut < 0:  # a line longer than a chunk: keep reading
                self._carry = data
                continue
            self._pending.extend((line, len(line) + 1) for line in data[:cut].split(b"\n"))
            self._carry = data[cut + 1:]
        return True

    def next_batch(self) -> list[Any] | None:
        while self._fill():  # a batch of blank lines only is skipped, not returned empty
            lines = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
            first_line = self._line + 1
            self._pos += sum(size for _, size in lines)
            self._line += len(lines)
            records = self._parse([line for line, _ in lines], first_line)
            if records:
                return records
        return None

    def _decode(self, raw: list[bytes], first_line: int) -> list[str]:
        try:  # the batch at once; line by line only to name a line that is not UTF-8
            lines = b"\n".join(raw).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for i, line in enumerate(raw):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SourceError(f"{self._uri}:{first_line + i}: not valid UTF-8 ({exc.reason})") from None
            raise
        return [line.removesuffix("\r") for line in lines]

    def _parse(self, raw: list[bytes], first_line: int) -> list[Any]:
        lines = self._decode(raw, first_line)
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
        for i, row in enumerate(csv.reader(lines)):  # one row per line: quoted fields hold no newline
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
