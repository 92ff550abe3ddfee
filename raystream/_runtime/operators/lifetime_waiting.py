"""The rows a Lifetime window step holds until a window of their key takes them or the
watermark passes them (operators/columnar_lifetimes.py, L1 and L4), and how they go into
snapshots and come back.

They are held as Arrow, in segments: each a table in the types of the batch its rows
came in, with their times, and its rows' Python keys once worked out. Segments of other
types are never cast to one another (a batch of int8 keys after rows of int64 keys, a
column of nulls after one of ints): each is grouped on its own, and rows meet by their
Python keys, as the per-key state does.

In a snapshot they are per key, under the key `PENDING` of its windows: a tuple of
`Piece`s, (the segment as Arrow IPC bytes with its rows sorted by key and a time column,
the segment's number, unique across processes, the key's first row, one past its
last). A segment's bytes are
one object that all of its keys' pieces share, so a snapshot pickles them once (pickle
keeps one copy of an object it meets again), and Python runs per key, not per row or
column. A segment makes its bytes once (it is never changed, only replaced), when a
snapshot first needs them. A restore decodes each segment's bytes once (IPC: the types
the rows had, no unpickling) and takes its keys' rows, segments in the order of their
numbers (review 37b: numbers counted per process collided when a rescale merged two
subtasks' rows), so each key's rows keep the order they came in.
"""
from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import unused_name
from raystream._runtime.transport.arrow_keys import DistinctKeys, distinct_keys

#: Where a key's waiting rows are in its windows' dict when a snapshot reads the state.
PENDING = "pending"

MAX_SEGMENTS = 16  # segments held before neighbours of one schema are merged

#: A key's waiting rows in one segment, in a snapshot: (the segment's IPC bytes, its
#: number, the key's rows from, to).
Piece = tuple[bytes, tuple[str, int], int, int]

#: A segment's number: this process's token, then a count. Unique across the subtasks a
#: rescale merges (each counts from 0); ordered within one process, all a key needs.
_PROCESS = uuid.uuid4().hex
_numbers = itertools.count()


def _number() -> tuple[str, int]:
    return f"{_PROCESS}-{os.getpid()}", next(_numbers)  # the pid too: a forked process has the parent's token


@dataclass
class Segment:
    """Waiting rows of one Arrow schema, in the order they came, and their times."""

    table: pa.Table
    times: np.ndarray
    number: tuple[str, int] = field(default_factory=_number)  # within a process, segments come in this order
    _distinct: DistinctKeys | None = None
    _pieces: dict[Any, Piece] | None = None

    def distinct(self, key_columns: tuple[str, ...]) -> DistinctKeys:
        """The rows' Python keys (worked out once: a segment is never changed, only replaced)."""
        if self._distinct is None:
            self._distinct = distinct_keys(self.table, key_columns)
        return self._distinct

    def without(self, rows: np.ndarray) -> Segment | None:
        """The segment less `rows` (a mask), or None if none is left."""
        if rows.all():
            return None
        return Segment(self.table.filter(pa.array(~rows)), self.times[~rows], self.number) if rows.any() else self

    def pieces(self, key_columns: tuple[str, ...]) -> dict[Any, Piece]:
        """Each key's Piece of this segment (made once)."""
        if self._pieces is None:
            distinct = self.distinct(key_columns)
            order = np.argsort(distinct.rows, kind="stable")
            codes = distinct.rows[order]
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            stops = np.append(starts[1:], len(codes))
            table = self.table.take(pa.array(order))
            table = table.append_column(unused_name(table.column_names, "__raystream_time"),
                                        pa.array(self.times[order]))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            data, number = sink.getvalue().to_pybytes(), self.number
            self._pieces = {distinct.keys[c]: (data, number, a, b)
                            for c, a, b in zip(codes[starts].tolist(), starts.tolist(), stops.tolist())}
        return self._pieces


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
                                         np.concatenate([last.times, s.times]), last.number)
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

    def by_key(self) -> dict[Any, tuple[Piece, ...]]:
        """Each key's pieces, in the order of the segments."""
        out: dict[Any, tuple[Piece, ...]] = {}
        for s in self.segments:
            pieces = s.pieces(self.key_columns)
            if not out:
                out = {key: (piece,) for key, piece in pieces.items()}
                continue
            get = out.get
            for key, piece in pieces.items():
                before = get(key)
                out[key] = (piece,) if before is None else before + (piece,)
        return out

    @classmethod
    def restored(cls, key_columns: tuple[str, ...], entries: list[tuple[Piece, ...]]) -> WaitingRows:
        """The waiting rows of restored keys (each key's pieces), a segment per segment
        they came from, in the order of the segments' numbers."""
        ranges: dict[tuple[str, int], tuple[bytes, list[tuple[int, int]]]] = {}
        for pieces in entries:
            for data, number, a, b in pieces:
                ranges.setdefault(number, (data, []))[1].append((a, b))
        rows = cls(key_columns)
        for number in sorted(ranges):
            data, spans = ranges[number]
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            spans.sort()
            taken = table.take(pa.array(np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans])))
            times = taken.column(taken.num_columns - 1).to_numpy().astype(np.int64)
            rows.segments.append(Segment(taken.remove_column(taken.num_columns - 1).combine_chunks(), times))
        return rows
