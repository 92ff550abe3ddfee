"""Records as rows: what a FileSink writes for each record, so that every JSON line is an
object and every Parquet row has named columns, and Arrow's readers (and so pandas, Polars
and DuckDB) take the output as it is.

| record                                   | row                                  |
|------------------------------------------|--------------------------------------|
| a dict                                   | the dict                             |
| a dataclass, a NamedTuple                | its fields by name                   |
| a `(key, value)` pair (a plain 2-tuple)  | `{"key": key, "value": value}`       |
| anything else (a number, a string, ...)  | `{"value": record}`                  |

Values inside a row are written as JSON writes them; dataclasses and NamedTuples nested in
a value become objects too (`json_default`). raystream 0.2 wrote pairs as 2-element arrays
and other records as they were; `from_json` reads such lines as the rows above.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pyarrow as pa

from raystream.errors import SinkError

__all__ = ["FORMATS", "arrow_row", "as_row", "from_json", "json_default", "table_of", "concat"]

FORMATS = ("jsonl", "parquet")  # what a FileSink writes


def as_row(record: Any) -> dict[Any, Any]:
    """The row a FileSink writes for `record` (the table in the module docstring)."""
    if isinstance(record, dict):
        return record
    if isinstance(record, tuple):
        if hasattr(record, "_asdict"):  # a NamedTuple
            return record._asdict()
        if len(record) == 2:
            return {"key": record[0], "value": record[1]}
    elif dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return {"value": record}


def arrow_row(record: Any) -> dict[Any, Any]:
    """`as_row` with dataclasses and NamedTuples inside it made dicts too, for
    `pa.RecordBatch.from_pylist` (a Parquet file); datetimes stay datetimes, which Arrow
    stores as timestamps."""
    return {k: _plain(v) for k, v in as_row(record).items()}


_SAME = "give every record the same fields and types"


def table_of(rows: list[dict[Any, Any]], where: str, hint: str = _SAME) -> pa.Table:
    """One table of `rows`, its columns the union of their fields (a field a row lacks is
    null there) and each column's type one that holds every value (ints with floats are
    floats); SinkError naming `where`, and saying `hint`, when no type holds a column's values."""
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        reason = "an int past 64 bits, which Arrow cannot hold" if isinstance(exc, OverflowError) else str(exc)
        raise SinkError(f"the rows of {where} do not make one table: {reason}; {hint}") from None


def concat(tables: list[pa.Table], where: str, hint: str = _SAME) -> pa.Table:
    """Tables as one, by column name, with types widened as `table_of` widens them."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SinkError(f"the rows of {where} do not make one table: {exc}; {hint}") from None


def plain(value: Any) -> Any:
    """`value` with the dataclasses and NamedTuples inside it made dicts, as JSON writes them."""
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return _plain(value._asdict())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def from_json(value: Any) -> dict[Any, Any]:
    """The row of a decoded JSON line: an object as it is; a line of raystream 0.2 (a
    2-element array for a pair, a bare value otherwise) as `as_row` writes it today."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and len(value) == 2:
        return {"key": value[0], "value": value[1]}
    return {"value": value}


def json_default(value: Any) -> Any:
    """JSON for what JSON does not know: dataclasses (a WindowResult) and NamedTuples as
    objects, datetimes in ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return value._asdict()
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON; map records to dicts, lists, "
                    "strings and numbers before the sink")


def joined_schema(a: pa.Schema, b: pa.Schema) -> pa.Schema | None:
    """The schema of `a`'s and `b`'s rows in one table where no value changes type: their
    columns, each column they share of one type (a column of nulls takes the other's), or
    None. Arrow's permissive promotion would merge what a step kept apart: a string key
    and a binary one ("a" and b"a"), an int and a float (5 and 5.0)."""
    fields = {f.name: f for f in a}
    for f in b:
        known = fields.get(f.name)
        if known is None or pa.types.is_null(known.type):
            fields[f.name] = f
        elif known.type != f.type and not pa.types.is_null(f.type):
            return None
    return pa.schema(list(fields.values()))
