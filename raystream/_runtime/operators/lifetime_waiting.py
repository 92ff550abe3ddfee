"""The rows a Lifetime window step holds until a window of their key takes them or the
watermark passes them (operators/columnar_lifetimes.py, L1 and L4), and how they go into
snapshots and come back.

They are held as Arrow, in segments: each a table in the types of the batch its rows
came in, with their times. Segments of other types are never cast to one another (a
batch of int8 keys after rows of int64 keys, a column of nulls after one of ints): each
is grouped on its own, and rows meet by their Python keys, as the per-key state does.

In a snapshot they are per key, under the key `PENDING` of its windows, as columns
(`Waiting`): Python runs per key and per column, the values are converted in bulk. A
restore takes them back by Arrow's inference of the values' types, one segment for all
where one type fits each column, else a segment per key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.transport.arrow_keys import distinct_keys

#: Where a key's waiting rows are in its windows' dict when a snapshot reads the state.
PENDING = "pending"

#: A key's waiting rows in a snapshot: (the column names, the times, one list per column).
Waiting = tuple[tuple[str, ...], list[int], list[list[Any]]]


@dataclass
class Segment:
    """Waiting rows of one Arrow schema, in the order they came, and their times."""

    table: pa.Table
    times: np.ndarray


class WaitingRows:
    """The waiting rows of one step, in the order they came."""

    def __init__(self, key_columns: tuple[str, ...]):
        self.key_columns = key_columns
        self.segments: list[Segment] = []

    def __len__(self) -> int:
        return sum(s.table.num_rows for s in self.segments)

    def replace(self, segments: list[Segment]) -> None:
        """Hold `segments` from now on; neighbours of one schema become one."""
        merged: list[Segment] = []
        for s in segments:
            if not s.table.num_rows:
                continue
            if merged and merged[-1].table.schema == s.table.schema:
                last = merged[-1]
                merged[-1] = Segment(pa.concat_tables([last.table, s.table]), np.concatenate([last.times, s.times]))
            else:
                merged.append(s)
        self.segments = merged

    def expire(self, limit: int) -> list[Any]:
        """Drop the rows whose time is at or before `limit`; the keys of the rows dropped."""
        keys: list[Any] = []
        kept = []
        for s in self.segments:
            gone = s.times <= limit
            if gone.any():
                keys += distinct_keys(s.table.filter(pa.array(gone)), self.key_columns).keys
                if not gone.all():
                    kept.append(Segment(s.table.filter(pa.array(~gone)), s.times[~gone]))
            else:
                kept.append(s)
        self.segments = kept
        return keys

    def by_key(self) -> dict[Any, Waiting]:
        """The waiting rows per key, each key's in the order they came, as columns."""
        out: dict[Any, Waiting] = {}
        for s in self.segments:
            distinct = distinct_keys(s.table, self.key_columns)
            order = np.argsort(distinct.rows, kind="stable")
            codes = distinct.rows[order]
            bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]).tolist() + [len(codes)]
            table = s.table.take(pa.array(order))
            names = tuple(table.column_names)
            columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
            times = s.times[order].tolist()
            for a, b in zip(bounds, bounds[1:]):
                key = distinct.keys[int(codes[a])]
                before = out.get(key)
                part = (names, times[a:b], [c[a:b] for c in columns])
                out[key] = part if before is None else \
                    (names, before[1] + part[1], [x + y for x, y in zip(before[2], part[2])])
        return out

    @classmethod
    def restored(cls, key_columns: tuple[str, ...], blocks: list[Waiting]) -> WaitingRows:
        """The waiting rows of restored keys (each key's `Waiting`)."""
        rows = cls(key_columns)
        if not blocks:
            return rows
        try:
            rows.segments = [_segment(blocks)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            rows.segments = [_segment([block]) for block in blocks]  # keys of types no one column holds
        return rows


def _segment(blocks: list[Waiting]) -> Segment:
    names = blocks[0][0]
    columns = [pa.array([v for _, _, block in blocks for v in block[i]]) for i in range(len(names))]
    times = np.asarray([t for _, ts, _ in blocks for t in ts], dtype=np.int64)
    return Segment(pa.Table.from_arrays(columns, names=list(names)), times)
