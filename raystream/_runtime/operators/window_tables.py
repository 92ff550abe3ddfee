"""The state of tumbling and sliding windows over Arrow held window-major, as Arrow tables:
for each open window, the partials of its keys as one table per batch, merged by Arrow
when the window fires (docs/guide/columnar.md, "What runs per record, per key, per batch").

The per-key layout (operators/columnar_windows.py: `{key: {(start, end): [state,
emitted]}}`) folds every batch's partials into each (key, window)'s state in Python, and
keeps a timer per (key, window): Python once per distinct (key, window) of every batch,
and again when it fires. Here a batch's partials (one Arrow group-by per batch, as
before) are split by window and appended to the window's list of tables: no Python per
key. A window fires as one Arrow group-by over its tables, which merges the partials:
counts are summed, minimums, maximums, firsts and lasts taken again. This is exactly the
fold the per-key layout does, in the same order, for the aggregates and types where
Arrow's merge is Python's (`columnar_folds`, `fits_columnar`): count, min and max of
integers, strings, binaries, booleans, date32, times (not floats: NaN and -0.0 compare
otherwise), first and last of those and floats. The rows of a window's output come in
the order its keys first took rows, as the per-key layout's timers fire them (a null
key may come last: Arrow's group-by places it so).

It holds only windows that fire without lateness (allowed lateness 0, event time): a
window takes no rows once it has fired, so none is ever emitted twice (every `emitted`
is False). Snapshots, incremental snapshots and rescaling see the per-key state:
`as_dict()` makes it from the tables when the state is read (once per snapshot, cached
until the next change), so snapshots keep the per-key layout, key groups and all, and
`load` takes that layout back (a restore).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._arrow_values import python_values
from raystream._runtime.operators.aggregate import _KEYS_FIRST, Folds, unused_name
from raystream.aggregates import Count, First, Last, Max, Min

#: How Arrow merges each partial over the tables of a window.
_MERGE = {"count_all": "sum", "count": "sum", "min": "min", "max": "max", "first": "first", "last": "last"}
_COMPACT_AT = 12  # tables a window holds before they are merged into one


def columnar_folds(folds: Folds) -> bool:
    """Whether the aggregates can be held window-major: built-in count, min, max, first
    and last (exactly those classes), with their default partials."""
    return bool(folds.aggregates) and all(type(agg) in (Count, Min, Max, First, Last) for agg in folds.aggregates) \
        and all(p.options is None and p.function in _MERGE for p in folds.partials)


def _exact_order(kind: pa.DataType) -> bool:
    """Types whose values Arrow orders and groups as their Python values compare."""
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind) or pa.types.is_duration(kind):
        return kind.unit != "ns"  # nanoseconds: Python values may lose them
    return (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_boolean(kind)
            or pa.types.is_date32(kind))  # date64 may hold milliseconds a Python date drops


def fits_columnar(folds: Folds, key_types: Sequence[pa.DataType], partial_types: Sequence[pa.DataType]) -> bool:
    """Whether partials of these types merge in Arrow as in Python: keys and the values of
    min and max of `_exact_order` types; first and last also of floats."""
    if not all(_exact_order(k) for k in key_types):
        return False
    for partial, kind in zip(folds.partials, partial_types):
        if partial.function in ("min", "max") and not _exact_order(kind):
            return False
        if partial.function in ("first", "last") and not (_exact_order(kind) or pa.types.is_floating(kind)):
            return False
    return True


class WindowTables:
    """Per open window (by its start), its keys' partials as Arrow tables: the key
    columns, then one column per partial of `folds`, in the types of the first batch."""

    def __init__(self, key_columns: list[str], folds: Folds, assigner: Any):
        self.key_columns = key_columns
        self.folds = folds
        self.assigner = assigner
        partials = [unused_name(key_columns, f"__raystream_partial_{i}") for i in range(len(folds.partials))]
        self.names = list(key_columns) + partials
        self.specs = [(name, _MERGE[p.function]) for name, p in zip(partials, folds.partials)]
        self.types: list[pa.DataType] | None = None  # of every table's columns, from the first batch
        self.windows: dict[int, list[pa.Table]] = {}
        self._dict: dict[Any, Any] | None = None  # as_dict(), until the next change
        self._keys: int | None = None  # keys(), until the next change

    @property
    def size(self) -> int:
        """Every window's length (ms; the assigner knows it once the step is checked)."""
        return self.assigner._size

    def fits(self, types: list[pa.DataType]) -> bool:
        """Whether a batch with partials of these types (keys first) can be added."""
        if self.types is None:
            n = len(self.key_columns)
            if not fits_columnar(self.folds, types[:n], types[n:]):
                return False
            self.types = list(types)
        return self.types == list(types)

    # --- changes ------------------------------------------------------------------------

    def add(self, keys: list[pa.ChunkedArray], partials: list[pa.ChunkedArray], starts: np.ndarray) -> None:
        """A batch's partials, a row per (key, window start `starts[i]`), into the windows."""
        part = pa.Table.from_arrays(list(keys) + list(partials), names=self.names)
        found = np.unique(starts)
        pieces = [(int(found[0]), part)] if len(found) == 1 else [
            (int(s), part.filter(pa.array(starts == s))) for s in found]  # each window's rows, in order
        self._dict = self._keys = None
        for start, piece in pieces:
            tables = self.windows.get(start)
            if tables is None:
                self.windows[start] = [piece]
            else:
                tables.append(piece)
                if len(tables) >= _COMPACT_AT:
                    self.merged(start)

    def merged(self, start: int) -> pa.Table:
        """The window's keys, each once, with its partials merged (in the order the keys
        came), held so from now on."""
        tables = self.windows[start]
        if len(tables) > 1:
            table = pa.concat_tables(tables)
            grouped = table.group_by(self.key_columns, use_threads=False).aggregate(self.specs)
            n = len(self.key_columns)
            columns = grouped.columns
            columns = columns[:n] + columns[n:] if _KEYS_FIRST else columns[-n:] + columns[:-n]
            tables[:] = [pa.Table.from_arrays(columns, names=self.names).combine_chunks()]
        return tables[0]

    def due(self, watermark: int) -> list[tuple[int, pa.Table]]:
        """The windows whose end - 1 the watermark reached, in the order they end, merged
        and taken out."""
        starts = sorted(s for s in self.windows if s + self.size - 1 <= watermark)
        if not starts:
            return []
        self._dict = self._keys = None
        out = [(s, self.merged(s)) for s in starts]
        for s in starts:
            del self.windows[s]
        return out

    # --- the per-key layout ---------------------------------------------------------------

    def python_keys(self, table: pa.Table) -> list[Any]:
        """Each row's key as the per-record path has it: a value, or the tuple of several."""
        if len(self.key_columns) == 1:
            return python_values(table.column(0))
        return list(zip(*(python_values(table.column(i)) for i in range(len(self.key_columns)))))

    def keys(self) -> int:
        """How many distinct keys the windows hold (Arrow: one group-by over their keys)."""
        if self._dict is not None:
            return len(self._dict)
        if self._keys is None:
            tables = [t.select(self.key_columns) for tables in self.windows.values() for t in tables]
            self._keys = pa.concat_tables(tables).group_by(self.key_columns, use_threads=False).aggregate(
                []).num_rows if tables else 0
        return self._keys

    def as_dict(self) -> dict[Any, Any]:
        """The state in the per-key layout: `{key: {(start, end): [state, False]}}`, the
        state a tuple with one value per aggregate, as the per-key fold makes it."""
        if self._dict is not None:
            return self._dict
        state: dict[Any, Any] = {}
        for start in sorted(self.windows):
            self._add_rows(state, start, self.merged(start))
        self._dict = state
        return state

    def state_of(self, keys: set[Any]) -> dict[Any, Any] | None:
        """`as_dict()` of `keys` only (those with state), picked in Arrow: Python runs per
        key picked, not per key held. None where it cannot pick (several key columns,
        keys not of the column's type): take them from `as_dict()`."""
        if self._dict is not None or len(self.key_columns) != 1 or self.types is None:
            return None
        try:
            wanted = pa.array(list(keys), type=self.types[0])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return None
        state: dict[Any, Any] = {}
        for start in sorted(self.windows):
            table = self.merged(start)
            self._add_rows(state, start, table.filter(pc.is_in(table.column(0), value_set=wanted)))
        return state

    def _add_rows(self, state: dict[Any, Any], start: int, table: pa.Table) -> None:
        """The per-key entries of window `start` for the rows of `table` into `state`."""
        n = len(self.key_columns)
        partials = [python_values(table.column(n + i)) for i in range(len(self.folds.partials))]
        values = [partials[slot[0]] for slot in self.folds.slots]  # each aggregate has one partial
        w = (start, start + self.size)
        for key, states in zip(self.python_keys(table), zip(*values)):
            windows = state.get(key)
            if windows is None:
                windows = state[key] = {}
            windows[w] = [states, False]

    def load(self, state: dict[Any, Any], watermark: int, types: list[pa.DataType]) -> list[Any] | None:
        """Take the per-key state (restored) into empty tables of `types`: the keys of
        windows it drops (due already, as a restore's cleanup would drop them unfired), or
        None if the state does not fit (a window emitted or of another size, values of
        other types): then nothing changed."""
        if not self.fits(types):
            return None
        per_window: dict[int, tuple[list[Any], list[Any]]] = {}
        dropped = []
        for key, windows in state.items():
            for (start, end), (states, emitted) in windows.items():
                if emitted or end - start != self.size:
                    return None
                if end - 1 <= watermark:
                    dropped.append(key)
                    continue
                keys, values = per_window.setdefault(start, ([], []))
                keys.append(key)
                values.append(states)
        n = len(self.key_columns)
        loaded = {}
        try:
            for start, (keys, values) in per_window.items():
                key_values = [keys] if n == 1 else [list(c) for c in zip(*keys)]
                arrays = [pa.array(v, type=t) for v, t in zip(key_values, types[:n])]
                by_aggregate = list(zip(*values))
                for i, kind in enumerate(types[n:]):
                    j = next(j for j, slot in enumerate(self.folds.slots) if i in slot)
                    arrays.append(pa.array(list(by_aggregate[j]), type=kind))
                loaded[start] = [pa.Table.from_arrays(arrays, names=self.names)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return None
        self.windows = loaded
        self._dict = self._keys = None
        return dropped
