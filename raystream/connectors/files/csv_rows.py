"""FileSource's CSV partition: rows of a CSV file as dicts keyed by its header, parsed by
Arrow's streaming CSV reader, resumed by the rows emitted (source.py builds it)."""
from __future__ import annotations

import base64
import io
import logging
import re
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc  # noqa: F401 (pa.ipc.read_schema)

from raystream import _files
from raystream._arrow_values import python_rows
from raystream.errors import SourceError
from raystream.source_api import SourcePartition

logger = logging.getLogger(__name__)

class CsvPartition(SourcePartition):
    """Rows of a CSV file as dicts keyed by its header, parsed by Arrow's streaming CSV
    reader: quoted fields may hold newlines; only an empty value is null.

    Types are settled when the partition first opens the file: `column_types`, and for the
    other columns what Arrow infers from the first block, except that a column of
    integers past 64 bits (which Arrow would make lossy floats) stays strings. The offset
    is `{"rows": rows emitted, "schema": those types}`: a restored partition reads past
    the rows again with the same types, even if the file grew meanwhile (`column_types`
    given then still wins, to fix a column that failed). An offset of raystream 0.2
    ((byte position, line number), one row per line, every value a string) resumes at the
    same row, still with strings, so a run's records keep their kind.
    """

    def __init__(self, uri: str, offset: int | dict[str, Any] | list[int] | tuple[int, int] | None,
                 batch_size: int, column_types: dict[str, pa.DataType]):
        self._uri, self._batch_size = uri, batch_size
        self._schema: pa.Schema | None = None
        self._reader: pacsv.CSVStreamingReader | None = None
        self._file: _Tail | None = None
        self._pending: pa.RecordBatch | None = None
        self._ahead: pa.RecordBatch | None = None
        if isinstance(offset, dict):  # this version's offset
            self._rows = offset["rows"]
            self._schema = _schema_of(offset["schema"])
        elif offset:  # 0.2's
            self._rows = _rows_before(uri, offset[0])
            self._schema = self._inferred({}, strings=True)
        else:
            self._rows = 0
            self._schema = self._inferred(column_types, strings=False)
        if self._schema is None:  # a header and no row
            return
        types = {**dict(zip(self._schema.names, self._schema.types)), **column_types}
        self._schema = pa.schema([(n, types[n]) for n in self._schema.names])
        if self._reader is None or self._reader.schema != self._schema:  # else: the fresh start's reader
            self._reader = self._open(types)
        self._skip = self._rows
        self._ahead = self._read() if self._reader is not None else None

    # --- opening: the types, then the reader --------------------------------------------

    def _open(self, types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader | None:
        """A reader of the file with `types`, in place of any earlier one; None when it
        holds a header only (Arrow cannot open a file whose header has no newline after it)."""
        bad: list[Any] = []  # the handler keeps no reference to self: no cycle through Arrow

        def invalid(row: Any) -> str:
            bad.append(row)
            return "error"

        self._bad = bad
        self.close()
        self._file = _Tail(_files.open_read(self._uri))
        parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid)
        convert = pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False)
        try:
            return pacsv.open_csv(self._file, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc) and not bad and self._header_only():
                return None
            raise self._error(exc, self._schema) from None

    def _inferred(self, column_types: dict[str, pa.DataType], *, strings: bool) -> pa.Schema | None:
        """The types of a fresh start (None: the file holds a header only)."""
        self._reader = self._open(column_types)  # kept for the run when the types stay as inferred
        if self._reader is None:
            return None
        schema = self._reader.schema
        if strings:
            return pa.schema([(n, pa.string()) for n in schema.names])
        floats = [f.name for f in schema if f.type == pa.float64() and f.name not in column_types]
        if floats:  # integers past 64 bits look like floats to Arrow: keep those columns exact
            as_text = self._open({**column_types, **{n: pa.string() for n in floats}})
            assert as_text is not None  # the same file, opened a moment ago
            first = as_text.read_next_batch()
            as_text.close()  # a batch was read: the run opens its own reader
            big = {n for n in floats if any(v is not None and _BIG_INT.fullmatch(v) for v in first.column(n).to_pylist())}
            schema = pa.schema([(f.name, pa.string() if f.name in big else f.type) for f in schema])
        return schema

    def _header_only(self) -> bool:
        with _files.open_read(self._uri) as f:
            return bool(f.read(1 << 16).removeprefix(b"\xef\xbb\xbf").strip())  # a BOM is not a header

    def _error(self, exc: Exception, schema: pa.Schema | None) -> SourceError:
        if self._bad:
            row = self._bad[-1]
            return SourceError(f"{self._uri}: malformed CSV row {row.text!r}: {row.actual_columns} fields where the "
                               f"header has {row.expected_columns}; fix or remove the row")
        if "Empty CSV file" in str(exc):
            return SourceError(f"{self._uri}:1: CSV file has no header line")
        column = re.search(r"CSV column #(\d+)", str(exc))
        if column and schema is not None:
            name = schema.names[int(column.group(1))]
            return SourceError(f"{self._uri}: column {name!r}: {exc}. Its type was inferred from the file's first "
                               f"rows; give FileSource(..., column_types={{{name!r}: 'string'}}) or the type it has")
        return SourceError(f"{self._uri}: not a readable CSV file ({exc})")

    # --- reading ------------------------------------------------------------------------

    def _read(self) -> pa.RecordBatch | None:
        """The reader's next batch, past the rows to skip; None at the end of the file."""
        assert self._reader is not None
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return None
            except pa.ArrowInvalid as exc:
                raise self._error(exc, self._schema) from None
            if self._skip:  # rows emitted before the restore
                skipped = min(self._skip, batch.num_rows)
                batch, self._skip = batch.slice(skipped), self._skip - skipped
            if batch.num_rows:
                return batch

    def next_batch(self) -> list[dict[str, Any]] | None:
        if self._pending is None or self._pending.num_rows == 0:
            if self._ahead is None:
                return None
            self._pending, self._ahead = self._ahead, self._read()  # one batch ahead, to know the last
            if self._ahead is None:
                self._check_end(self._pending)
        out, self._pending = self._pending.slice(0, self._batch_size), self._pending.slice(self._batch_size)
        self._rows += out.num_rows
        return python_rows(out)

    def _check_end(self, last: pa.RecordBatch) -> None:
        """A quote opened in the last row and never closed makes the rest of the file one
        value, silently: refuse it. (A closed quoted value ends the file with a quote; an
        unquoted value holds no newline.)"""
        value = last.column(last.num_columns - 1)[last.num_rows - 1].as_py() if last.num_columns else None
        assert self._file is not None
        if isinstance(value, str) and "\n" in value and not self._file.tail.rstrip(b"\r\n").endswith(b'"'):
            raise SourceError(f"{self._uri}: the file ends inside a quoted value: a quote opened in its last row "
                              "was never closed, so the lines after it would be read as one value; fix the quote")

    def snapshot(self) -> dict[str, Any]:
        return {"rows": self._rows, "schema": _schema_text(self._schema)}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._file is not None:
            self._file.close()
            self._file = None


_BIG_INT = re.compile(r"[+-]?\d{19,}")  # 19 digits or more: maybe past int64, which Arrow reads as a float


class _Tail(io.RawIOBase):
    """A file read through, keeping its last bytes (for `CsvPartition._check_end`)."""

    def __init__(self, raw: Any):
        self._raw, self.tail = raw, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        if data:
            self.tail = (self.tail + data)[-8:]
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _schema_text(schema: pa.Schema | None) -> str | None:
    """A schema as JSON-safe text: offsets are saved as JSON under at-most-once."""
    return None if schema is None else base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _schema_of(text: str | None) -> pa.Schema | None:
    return None if text is None else pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _rows_before(uri: str, position: int) -> int:
    """Rows of a CSV file before byte `position`, as raystream 0.2 read it: one row per
    non-blank line, the header not counted."""
    if position == 0:
        return 0
    with _files.open_read(uri) as f:
        head = f.read(position)
    return sum(1 for line in head.split(b"\n") if line.strip(b"\r")) - 1
