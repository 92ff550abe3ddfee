"""Micro-batch representations and conversions between them.

A micro-batch is one of:
- a list of Python records;
- a `pyarrow.RecordBatch` (vectorized steps, Parquet);
- a `KeyedBatch`: a list of `(key, value)` pairs stored as two columns. Keyed steps
  produce and consume it, and keyed exchanges send it, because two flat lists pickle
  and unpickle much faster than a list of tuples;
- an `ArrowKeyed` batch: a `pyarrow.RecordBatch` keyed by some of its columns
  (`key_by(step_id, "col")`). Keyed exchanges split it by key group as Arrow
  (arrow_keys.py); to a per-record keyed step it is `(key, row as a dict)` records;
- a `Timed` batch: one of the above with the event time of each record (milliseconds
  since the epoch) in a parallel list, or, for Arrow batches, an int64 numpy array:
  columnar steps keep times as arrays (no Python int per row), per-record steps take
  them as a list (`time_list`). Records of a stream with event time
  (docs/event_time.md) travel this way, and each step keeps the time of the record an
  output came from.

A step's call may also put out `Batches`: several of the above that cannot be one (see
there). They never cross actors: `run_chain` pushes each through the steps after, and
the emitter sends each.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np
import pyarrow as pa

from raystream._arrow_values import python_rows
from raystream._runtime.transport.arrow_keys import distinct_keys


class KeyedBatch:
    """`(key, value)` records as parallel lists."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[Any], values: list[Any]):
        self.keys = keys
        self.values = values

    def __len__(self) -> int:
        return len(self.keys)

    def __reduce__(self):
        return (KeyedBatch, (self.keys, self.values))

    def records(self) -> list[tuple[Any, Any]]:
        return list(zip(self.keys, self.values))


class ArrowKeyed:
    """A record batch whose key is in `key_columns`: one column's value, or the tuple of
    several (arrow_keys.py)."""

    __slots__ = ("batch", "key_columns")

    def __init__(self, batch: pa.RecordBatch, key_columns: tuple[str, ...]):
        self.batch = batch
        self.key_columns = key_columns

    def __len__(self) -> int:
        return self.batch.num_rows

    def __reduce__(self):
        return (ArrowKeyed, (self.batch, self.key_columns))


#: Event times of a batch's records, in milliseconds: a list, or an int64 array (Arrow batches).
Times = Union[list[int], np.ndarray]


class Timed:
    """A batch whose records carry event times: `times[i]` is record i's, in milliseconds."""

    __slots__ = ("batch", "times")

    def __init__(self, batch: Any, times: Times):
        self.batch = batch
        self.times = times

    def __len__(self) -> int:
        return len(self.times)

    def __reduce__(self):
        return (Timed, (self.batch, self.times))


class Batches:
    """Several batches one call of a step put out together, since one could not hold
    them: windows fired at once whose keys came in key columns of types no one Arrow
    column holds ("5" and 5; -1 and 2**63), a batch per kind of key."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Any]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(batch_len(part) for part in self.parts)


def parts(batch: Any) -> list[Any]:
    """The batches in `batch`: its parts if it is `Batches`, else itself."""
    return batch.parts if isinstance(batch, Batches) else [batch]


def timed(batch: Any, times: Times | None) -> Any:
    """`batch` with `times`, or `batch` itself when there are none."""
    return batch if times is None else Timed(batch, times)


def untimed(batch: Any) -> tuple[Any, Times | None]:
    """The batch without its times, and the times (None when it has none)."""
    if isinstance(batch, Timed):
        return batch.batch, batch.times
    return batch, None


def time_list(times: Times | None) -> list[int] | None:
    """Times as a list of ints, for steps that run per record."""
    return times.tolist() if isinstance(times, np.ndarray) else times


def time_array(times: Times | None) -> np.ndarray | None:
    """Times as an int64 array, for steps that run per batch."""
    return None if times is None else np.asarray(times, dtype=np.int64)


def batch_len(batch: Any) -> int:
    return batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)


def as_records(batch: Any) -> list[Any]:
    """Any micro-batch as a list of Python records."""
    if isinstance(batch, list):
        return batch
    if isinstance(batch, Timed):
        return as_records(batch.batch)
    if isinstance(batch, (KeyedBatch, ArrowKeyed)):
        return as_keyed(batch).records()
    return python_rows(batch)


def as_keyed(batch: Any) -> KeyedBatch:
    """Any micro-batch of `(key, value)` records as a KeyedBatch; raises ValueError otherwise."""
    if isinstance(batch, KeyedBatch):
        return batch
    if isinstance(batch, Timed):
        return as_keyed(batch.batch)
    if isinstance(batch, ArrowKeyed):  # what key_by(step_id, lambda row: row[column]) would give
        return KeyedBatch(distinct_keys(batch.batch, batch.key_columns).per_row(), python_rows(batch.batch))
    records = as_records(batch)
    try:
        keys = [k for k, _ in records]
        values = [v for _, v in records]
    except (TypeError, ValueError):
        bad = next(r for r in records if not (isinstance(r, (tuple, list)) and len(r) == 2))
        raise ValueError(f"a keyed step takes (key, value) records; got {bad!r}") from None
    return KeyedBatch(keys, values)


def to_arrow(batch: Any) -> pa.RecordBatch:
    """Dict records become columns by key: one column per key of any record of the batch,
    in the order they first appear, null where a record lacks it, typed by Arrow from the
    batch's values. Other records become one column named "value"; a keyed Arrow batch
    is its rows."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, (Timed, ArrowKeyed)):
        return to_arrow(batch.batch)
    records = as_records(batch)
    if records and isinstance(records[0], dict):
        first = records[0]
        if len(set().union(*records)) > len(first):  # Arrow takes the first record's keys: give it every key
            names = dict.fromkeys(first)
            for record in records:
                if record.keys() - names.keys():
                    names.update(dict.fromkeys(record))
            records = [dict.fromkeys(names) | first] + records[1:]
        return pa.RecordBatch.from_pylist(records)
    return pa.RecordBatch.from_pydict({"value": records})
