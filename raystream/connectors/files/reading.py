"""Reading what a FileSink committed: `read_files` (the rows, as Python dicts) and
`read_table` (one Arrow table, and so pandas or Polars). Both see committed output only:
names starting with `_` or `.` are skipped, and so are files a published compaction
replaced."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream import _files
from raystream._arrow_values import python_rows
from raystream._storage import open_storage
from raystream.connectors.files.compaction import visible_files
from raystream.connectors.files.rows import FORMATS, concat, from_json, table_of
from raystream.errors import JobDefinitionError

__all__ = ["read_files", "read_table"]


def read_files(directory: str, *, format: str = "jsonl") -> list[dict[Any, Any]]:
    """The rows committed in `directory` (or a glob), one dict per record as the sink wrote
    it (`raystream.connectors.files.rows`: a `(key, value)` pair is `{"key": ..., "value": ...}`)."""
    _check(format)
    rows: list[dict[Any, Any]] = []
    for data in _contents(directory):
        if format == "jsonl":
            rows.extend(_json_rows(data))
        else:
            rows.extend(python_rows(pq.read_table(pa.BufferReader(data))))
    return rows


def read_table(directory: str, *, format: str = "jsonl") -> pa.Table:
    """The rows committed in `directory` (or a glob) as one `pyarrow.Table`, for pandas
    (`.to_pandas()`), Polars (`polars.from_arrow`) or DuckDB. Parquet files are read as
    Arrow; JSON lines are typed from their values. Either way the columns are the union of
    the rows' fields (null where a row lacks one) and each column's type holds all its
    values (ints with floats are floats); datetimes in JSON lines stay ISO 8601 strings,
    as JSON has no datetime. SinkError when no type holds a column's values (ints and
    strings; an int past 64 bits): `read_files` reads such rows as dicts."""
    _check(format)
    if format == "parquet":
        tables = [pq.read_table(pa.BufferReader(data)) for data in _contents(directory)]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return pa.table({})
        return concat(tables, directory, _HINT)
    return table_of([row for data in _contents(directory) for row in _json_rows(data)], directory, _HINT)


_HINT = "read them as dicts with rs.sinks.read_files, or give every record the same fields and types"


def _check(format: str) -> None:
    if format not in FORMATS:
        raise JobDefinitionError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")


def _contents(directory: str) -> Iterator[bytes]:
    if any(ch in directory for ch in "*?["):
        for uri in _files.expand(directory):
            yield _files.read_bytes(_files.Location.parse(uri))
    else:  # a directory: its committed files, switching atomically to compacted ones
        storage = open_storage(directory)
        for key in visible_files(directory):
            yield storage.get(key)


def _json_rows(data: bytes) -> Iterator[dict[Any, Any]]:
    # json, not orjson: orjson reads an int past 64 bits as a float, silently
    return (from_json(json.loads(line)) for line in data.splitlines() if line.strip())
