"""FileSource: lines or rows of local or `s3://` files, one partition per file, resumed
from the position in the file (users reach it as `rs.sources.FileSource`)."""
from __future__ import annotations

import collections
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream.errors import JobDefinitionError, SourceError
from raystream.connectors.files.arrow_lines import ArrowLinePartition
from raystream.connectors.files.csv_rows import CsvPartition
from raystream.source_api import Source, SourcePartition

logger = logging.getLogger(__name__)


_FORMATS = ("text", "jsonl", "csv", "parquet")
_CHUNK = 256 * 1024


class FileSource(Source):
    """Lines or rows of local or `s3://` files; one partition per file.

    Formats: "text" (one str per line), "jsonl" (one JSON value per line), "csv" (one
    dict per row, keyed by the header) and "parquet" (Arrow record batches). Lines of text
    and JSON lines end at a newline (LF) only, as in Arrow's readers. CSV is read by
    Arrow's CSV reader: quoted fields may hold newlines, and values are typed as Arrow
    infers them from the file's first block (ints, floats, booleans, timestamps; only an
    empty value is null, and integers past 64 bits stay strings). `column_types` names the type of a column
    instead (`{"zip": "string"}`, or a `pyarrow.DataType`): give it for a column whose
    values change kind further down a file. `columnar=True` with "text" emits Arrow
    record batches of one string column, "line", for columnar steps (`map_batches`,
    `where`, `select`); Parquet is always columnar. A partition emits at most `batch_size`
    records at a time (RuntimeConfig.batch_size; Arrow batches, at most
    `arrow_batch_size` rows). The offset is the position in the
    file (for CSV, the rows emitted and the types settled on), so a restarted partition
    continues where its last checkpoint left it; text read as lines and text read as
    Arrow have the same offsets, so a savepoint of one resumes the other.
    """

    def __init__(self, path_or_glob: str, *, format: str = "text",
                 column_types: dict[str, pa.DataType | str] | None = None, columnar: bool = False):
        if not isinstance(path_or_glob, str) or not path_or_glob:
            raise JobDefinitionError(f"FileSource needs a path, glob or s3:// URI; got {path_or_glob!r}")
        if format not in _FORMATS:
            raise JobDefinitionError(f"FileSource format must be one of {', '.join(_FORMATS)}; got {format!r}")
        if columnar and format not in ("text", "parquet"):
            raise JobDefinitionError(f"FileSource columnar=True reads format='text' (a 'line' column) or "
                                     f"'parquet'; {format!r} comes as one record per line or row")
        # Resolved here, in the driver: actors may run in another working directory.
        self.path = path_or_glob if path_or_glob.startswith("s3://") else _files.Location.parse(path_or_glob).uri()
        self.format = format
        self.column_types = _column_types(column_types, format)
        self.arrow_lines = columnar and format == "text"

    @property
    def columnar(self) -> bool:  # Source.columnar: Parquet, and text when asked, come as Arrow record batches
        return self.format == "parquet" or getattr(self, "arrow_lines", False)

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
        if self.format == "csv":
            return CsvPartition(key, resume_state, batch_size, getattr(self, "column_types", {}))
        if getattr(self, "arrow_lines", False):
            return ArrowLinePartition(key, resume_state or (0, 0), batch_size)
        return _LinePartition(key, self.format, resume_state or (0, 0), batch_size)


def _column_types(types: dict[str, pa.DataType | str] | None, fmt: str) -> dict[str, pa.DataType]:
    if not types:
        return {}
    if fmt != "csv":
        raise JobDefinitionError(f"FileSource column_types is for format='csv'; this source reads {fmt!r}")
    out = {}
    for name, t in types.items():
        try:
            out[name] = t if isinstance(t, pa.DataType) else pa.type_for_alias(t)
        except (ValueError, TypeError):
            raise JobDefinitionError(f"FileSource column_types[{name!r}]: {t!r} is not an Arrow type; give a "
                                     "pyarrow.DataType or a name such as 'string', 'int64', 'float64'") from None
    return out


class _LinePartition(SourcePartition):
    """Reads a file in chunks of whole lines and emits at most `batch_size` records at a
    time; the offset is (byte position, line number) after the last line emitted. Lines
    end at a newline (LF) only, and a CR before it is dropped: U+2028 inside a JSON
    string or a form feed in a text line is part of its line, as in Arrow's readers."""

    def __init__(self, uri: str, fmt: str, offset: tuple[int, int], batch_size: int):
        self._uri, self._fmt, self._batch_size = uri, fmt, batch_size
        self._pos, self._line = offset
        self._reader = _files.open_read(uri, self._pos)
        self._carry = b""
        self._eof = False
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()  # (line, its bytes in the file)

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
