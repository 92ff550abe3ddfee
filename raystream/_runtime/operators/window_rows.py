"""The rows into and out of a window step over Arrow, shared by the window steps
(operators/columnar_windows.py) and the window joins (operators/columnar_join.py): which
windows each row of a batch is in, the rows found late, the fired windows as columns, and
the types that restored output types unify to (the key columns fired:
operators/fired_keys.py)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._runtime.operators.columnar import as_batch
from raystream._runtime.transport.batch import ArrowKeyed, Timed
from raystream.windows import Sliding

WINDOW_TIME = pa.timestamp("ms", tz="UTC")  # what WindowResult.start and .end are


@dataclass
class Assigned:
    """The (row, window) pairs of a batch, a row's pairs together and rows in order."""

    rows: np.ndarray  # int64: the row of each pair
    starts: np.ndarray  # int64: the start of its window (ms)
    size: int  # every window's length (ms)


def assign(assigner: Any, times: np.ndarray) -> Assigned:
    """The tumbling or sliding windows of every row, as `assigner.assign(t)` gives them."""
    if isinstance(assigner, Sliding):
        size, slide, offset = assigner._size, assigner._slide, assigner._offset
        k = -(-size // slide)  # the most windows a row can be in (size/slide, rounded up)
        first = times - np.mod(times - offset, slide)
        starts = first[:, None] - np.arange(k, dtype=np.int64) * slide
        kept = (starts > (times - size)[:, None]).ravel()
        return Assigned(np.repeat(np.arange(len(times), dtype=np.int64), k)[kept], starts.ravel()[kept], size)
    size, offset = assigner._size, assigner._offset
    return Assigned(np.arange(len(times), dtype=np.int64), times - np.mod(times - offset, size), size)


@dataclass
class Fired:
    """Windows to emit, as columns, until they become one Arrow batch."""

    keys: list[Any] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    entries: list[Any] = field(default_factory=list)  # what the window holds (a state, or a join's rows)
    updates: list[bool] = field(default_factory=list)

    def add(self, key: Any, w: tuple[int, int], held: Any, update: bool) -> None:
        self.keys.append(key)
        self.starts.append(w[0])
        self.ends.append(w[1])
        self.entries.append(held)
        self.updates.append(update)

    def picked(self, rows: np.ndarray) -> Fired:
        """The windows at `rows`, in their order."""
        take = rows.tolist()
        return Fired(*([column[i] for i in take] for column in (self.keys, self.starts, self.ends, self.entries,
                                                                 self.updates)))

    def window_columns(self, repeats: np.ndarray | None = None) -> list[pa.Array]:
        """window_start and window_end, each row's repeated `repeats[i]` times if given."""
        starts, ends = np.asarray(self.starts, dtype=np.int64), np.asarray(self.ends, dtype=np.int64)
        if repeats is not None:
            starts, ends = np.repeat(starts, repeats), np.repeat(ends, repeats)
        return [pa.array(starts).cast(WINDOW_TIME), pa.array(ends).cast(WINDOW_TIME)]


class LateRows:
    """Rows found late, kept as Arrow until the emitter takes them for the late output."""

    def __init__(self) -> None:
        self.parts: list[tuple[ArrowKeyed, np.ndarray]] = []

    def add(self, keyed: ArrowKeyed, times: np.ndarray, late: np.ndarray) -> int:
        """Keep the rows of `keyed` where `late`; returns how many."""
        n = int(late.sum())
        if n:
            rows = keyed.batch.filter(pa.array(late))
            self.parts.append((ArrowKeyed(rows, keyed.key_columns), times[late]))
        return n

    def take(self) -> list[Any]:
        """The rows kept since the last call: one timed batch per run of equal schemas."""
        parts, self.parts = self.parts, []
        out = []
        for (_, columns), run in itertools.groupby(parts, key=lambda p: (p[0].batch.schema, p[0].key_columns)):
            run = list(run)
            rows = as_batch(pa.Table.from_batches([keyed.batch for keyed, _ in run]))
            out.append(Timed(ArrowKeyed(rows, columns), np.concatenate([t for _, t in run])))
        return out


def python_holds(column: pa.ChunkedArray) -> None:
    """Raise (OverflowError) if a date, time, timestamp or duration of `column` has no
    Python value (a year past 9999): the per-key layout converts every value at once, the
    window-major tables only for a snapshot, where the error would fail every checkpoint."""
    kind = column.type
    if not (pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or pa.types.is_date(kind)
            or pa.types.is_time(kind)) or len(column) == column.null_count:
        return
    storage = pa.int32() if kind.bit_width == 32 else pa.int64()
    bounds = pc.min_max(column.cast(storage))
    pa.array([bounds["min"].as_py(), bounds["max"].as_py()], storage).cast(kind).to_pylist()


def unified(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """A type both fit in (Arrow's permissive promotion), or None: infer from the values."""
    if a == b:
        return a
    try:
        return pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive")[0].type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
