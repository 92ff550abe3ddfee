"""The rows a Lifetime window step holds until a window of their key takes them or the
watermark passes them (operators/columnar_lifetimes.py, L1 and L4), and how they go into
snapshots and come back.

They are held as Arrow, in segments: each a table in the types of the batch its rows
came in, with their times, and its rows' Python keys once worked out. Segments of other
types are never cast to one another (a batch of int8 keys after rows of int64 keys, a
column of nulls after one of ints): each is grouped on its own, and rows meet by their
Python keys, as the per-key state does.

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

from raystream._runtime.transport.arrow_keys import DistinctKeys, distinct_keys

#: Where a key's waiting rows are in its windows' dict when a snapshot reads the state.
PENDING = "pending"

MAX_SEGMENTS = 16  # segments held before neighbours of one schema are merged

#: A key's waiting rows in a snapshot: (the column names, the times, one list per column).
Waiting = tuple[tuple[str, ...], list[int], list[list[Any]]]


@dataclass
class Segment:
    """Waiting rows of one Arrow schema, in the order they came, and their times."""

    table: pa.Table
    times: np.ndarray
    _distinct: DistinctKeys | None = None

    def distinct(self, key_columns: tuple[str, ...]) -> DistinctKeys:
        """The rows' Python keys (worked out once: a segment is never changed, only replaced)."""
        if self._distinct is None:
            self._distinct = distinct_keys(self.table, key_columns)
        return self._distinct

    def without(self, rows: np.ndarray) -> Segment | None:
        """The segment less `rows` (a mask), or None if none is left."""
        if rows.all():
            return None
        return Segment(self.table.filter(pa.array(~rows)), self.times[~rows]) if rows.any() else self


class WaitingRows:
    """The waiting rows of one step, in the order they came."""

    def __init__(self, key_columns: tuple[str, ...]):
        self.key_columns = key_columns
        self.segments: list[Segment] = []

    def __len__(self) -> int:
        return sum(s.table.num_rows for s in self.segments)

    def replace(self, segments: list[Segment]) -> None:
        """Hold `segments` from now on. Past MAX_SEGMENTS, neighbours of one schema
        become one (their keys are worked out again then)."""
        segments = [s for s in segments if s.table.num_rows]
        if len(segments) > MAX_SEGMENTS:
            merged: list[Segment] = []
            for s in segments:
                if merged and merged[-1].table.schema == s.table.schema:
                    last = merged[-1]
                    merged[-1] = Segment(pa.concat_tables([last.table, s.table]),
                                         np.concatenate([last.times, s.times]))
                else:
                    merged.append(s)
            segments = merged
        self.segments = segments

    def expire(self, limit: int) -> list[Any]:
        """Drop the rows whose time is at or before `limit`; the keys of the rows dropped."""
        keys: list[Any] = []
        kept = []
        for s in self.segments:
            gone = s.times <= limit
            if gone.any():
                distinct = s.distinct(self.key_columns)
                keys += [distinct.keys[c] for c in np.unique(distinct.rows[gone]).tolist()]
                rest = s.without(gone)
                if rest is not None:
                    kept.append(rest)
            else:
                kept.append(s)
        self.segments = kept
        return keys

    def by_key(self) -> dict[Any, Waiting]:
        """The waiting rows per key, each key's in the order they came, as columns."""
        out: dict[Any, Waiting] = {}
        for s in self.segments:
            distinct = s.distinct(self.key_columns)
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
