"""Arrow values as the Python values `to_pylist` gives, made faster where pyarrow is slow.

pyarrow makes a Python value per element through a scalar. For most types that is tens
of nanoseconds, but a timestamp costs 1.3 µs, and 3.6 µs with a time zone (pyarrow 26 on
this project's 2-core benchmark machine): columnar Nexmark q6 spent half of its per-record
step turning two timestamp columns of its winners into Python. Here numpy makes the
datetimes of a timestamp column in bulk, 0.05 µs each without a zone and 0.4 µs with one.
Every other type, and any column this cannot be sure of, goes to `to_pylist` as before.
"""
from __future__ import annotations

import datetime
import functools
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa

# what datetime.datetime can hold, in microseconds since the epoch
_MIN_US = (datetime.datetime(1, 1, 1) - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)
_MAX_US = (datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)
           - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}  # "ns" stays with pyarrow: it may give pandas Timestamps


def python_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """`column.to_pylist()`, the same values, each made in bulk where the type allows."""
    kind = column.type
    if pa.types.is_timestamp(kind) and kind.unit in _US_PER and len(column):
        values = _datetimes(column, kind)
        if values is not None:
            return values
    return column.to_pylist()


def python_rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """`batch.to_pylist()`: a dict per row, column name to value, through `python_values`."""
    names = batch.schema.names
    if not names:  # rows without columns: zip would make none of them
        return [{} for _ in range(batch.num_rows)]
    return list(map(dict, map(zip, repeat(names), zip(*map(python_values, batch.columns)))))


def _datetimes(column: pa.Array | pa.ChunkedArray, kind: pa.TimestampType) -> list[Any] | None:
    """The column's datetimes; None where pyarrow should make them (out of datetime's
    range, or a zone whose values do not match pyarrow's on a sample)."""
    ticks = column.cast(pa.int64()).fill_null(0).to_numpy()  # nulls set back below
    per = _US_PER[kind.unit]
    if ticks.min() < -(-_MIN_US // per) or ticks.max() > _MAX_US // per:
        return None  # pyarrow raises for these, or wraps them: leave it to say which
    us = ticks * per
    if kind.tz is None:
        values = us.astype("datetime64[us]").astype(object).tolist()
    else:
        zone = _zone(kind.tz)
        if zone is None:
            return None
        values = _zoned(us, zone)
    present = None
    if column.null_count:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(nulls).tolist():
            values[i] = None
        present = np.flatnonzero(~nulls)
    return values if _agrees(column, values, present) else None


def _zoned(us: np.ndarray, zone: datetime.tzinfo) -> list[datetime.datetime]:
    """Aware datetimes in `zone` of microseconds since the epoch (UTC): fields in numpy,
    one constructor call each, then the zone's wall time where it is not UTC."""
    stamps = us.astype("datetime64[us]")
    days = stamps.astype("datetime64[D]")
    months = stamps.astype("datetime64[M]")
    years = stamps.astype("datetime64[Y]")
    rest = (stamps - days).astype(np.int64)  # microseconds into the day
    fields = ((years.astype(np.int64) + 1970).tolist(),
              ((months - years).astype(np.int64) + 1).tolist(),
              ((days - months).astype(np.int64) + 1).tolist(),
              (rest // 3_600_000_000).tolist(), (rest // 60_000_000 % 60).tolist(),
              (rest // 1_000_000 % 60).tolist(), (rest % 1_000_000).tolist())
    utc = list(map(datetime.datetime, *fields, repeat(zone)))
    if zone.utcoffset(None) == datetime.timedelta(0):
        return utc
    return list(map(zone.fromutc, utc))


@functools.lru_cache(maxsize=64)
def _zone(tz: str) -> datetime.tzinfo | None:
    """The tzinfo pyarrow gives values of zone `tz`, so that values made here carry it."""
    try:
        return pa.scalar(0, type=pa.timestamp("us", tz=tz)).as_py().tzinfo
    except (pa.ArrowException, ValueError, ImportError):
        return None


def _agrees(column: pa.Array | pa.ChunkedArray, values: list[Any], present: np.ndarray | None) -> bool:
    """The first and last values that are not null (`present`: their positions, None for
    all) as pyarrow makes them now, time zone object included (a zone cache cleared since
    `_zone` ran gives new ones): a cheap guard on the bulk path."""
    if present is not None and not len(present):
        return True  # all null: nothing was made
    ends = (0, len(values) - 1) if present is None else (int(present[0]), int(present[-1]))
    for i in ends:
        expected = column[i].as_py()
        if expected != values[i] or getattr(expected, "tzinfo", None) != getattr(values[i], "tzinfo", None):
            return False
    return True
