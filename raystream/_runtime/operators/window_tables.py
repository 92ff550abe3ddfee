"""The state of tumbling and sliding windows over Arrow held window-major, as Arrow tables:
for each window, the partials of its keys as one table per batch, merged by Arrow when
the window fires (docs/guide/columnar.md, "What runs per record, per key, per batch").

The per-key layout (operators/columnar_windows.py: `{key: {(start, end): [state,
emitted]}}`) folds every batch's partials into each (key, window)'s state in Python, and
keeps a timer per (key, window): Python once per distinct (key, window) of every batch,
and again when it fires. Here a batch's partials (one Arrow group-by per batch, as
before) are split by window and appended to the window's list of tables: no Python per
key. A window fires as one Arrow group-by over its tables, which merges the partials:
counts and sums are summed, minimums, maximums, firsts and lasts taken again. This is
exactly the fold the per-key layout does, in the same order, for the aggregates and types
where Arrow's merge is Python's (`columnar_folds`, `fits_columnar`): count, sum of
integers, min and max of integers, strings, binaries, booleans, date32, times (not
floats: NaN and -0.0 compare otherwise), first and last of those and floats. Arrow's
integer sum wraps around past int64 where Python's goes on, so a window keeps a bound on
its keys' sums (`bounded`), and a batch that could pass it moves the state to the
per-key layout. The rows of a window's output come in the order its keys first took rows,
as the per-key layout's timers fire them (a null key may come last: Arrow's group-by
places it so).

With allowed lateness, a window that fired is kept, merged, until the watermark passes
its end - 1 + lateness, and takes the rows that come for it until then. Each such batch
merges into it in one group-by, which also tells which of the batch's keys the window
held before: their rows are updates (`update=True`), the others' first results, as the
per-key layout's `emitted` says. So every key of a fired window has been emitted, and no
key of a window that has not fired.

Snapshots hold the tables' rows as Arrow (`entries`, `changed_entries`:
state/window_entries.py), and whoever reads a snapshot back gets the per-key layout made
from them, key groups and all; `load` takes that layout back (a restore). `as_dict()`
makes it from the tables for whatever reads the state itself (cached until the next
change).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._runtime.operators.aggregate import _KEYS_FIRST, Folds, unused_name
from raystream._runtime.state.window_entries import WindowEntries, python_keys
from raystream.aggregates import Count, First, Last, Max, Min, Sum

#: Zones without summer time, whose clock times order as their instants do.
_FIXED_ZONE = re.compile(r"UTC|Etc/UTC|Z|[+-]\d\d:\d\d")

#: How Arrow merges each partial over the tables of a window.
_MERGE = {"count_all": "sum", "count": "sum", "sum": "sum", "min": "min", "max": "max", "first": "first",
          "last": "last"}
_COMPACT_AT = 12  # tables a window holds before they are merged into one
_SUM_LIMIT = 2 ** 63 - 1  # a bound on a window's sums past this: the per-key layout


def columnar_folds(folds: Folds) -> bool:
    """Whether the aggregates can be held window-major: built-in count, sum, min, max,
    first and last (exactly those classes), with their default partials."""
    return bool(folds.aggregates) and all(type(agg) in (Count, Sum, Min, Max, First, Last)
                                          for agg in folds.aggregates) \
        and all(p.options is None and p.function in _MERGE for p in folds.partials)


def _exact_order(kind: pa.DataType) -> bool:
    """Types whose values Arrow orders and groups as their Python values compare."""
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind) or pa.types.is_duration(kind):
        return kind.unit != "ns"  # nanoseconds: Python values may lose them
    return (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_boolean(kind)
            or pa.types.is_date32(kind))  # date64 may hold milliseconds a Python date drops


def _summer_time(kind: pa.DataType) -> bool:
    """Timestamps of a zone that may have summer time: Python orders two times of one zone
    by the clock, not the instant, so in the hour the clocks go back Arrow's min and max
    are not Python's (review 46)."""
    return pa.types.is_timestamp(kind) and kind.tz is not None and not _FIXED_ZONE.fullmatch(kind.tz)


def fits_columnar(folds: Folds, key_types: Sequence[pa.DataType], partial_types: Sequence[pa.DataType]) -> bool:
    """Whether partials of these types merge in Arrow as in Python: keys and the values of
    min and max of `_exact_order` types; first and last also of floats."""
    if not all(_exact_order(k) for k in key_types):
        return False
    for partial, kind in zip(folds.partials, partial_types):
        if partial.function == "sum" and not pa.types.is_integer(kind):
            return False  # a float sum's order and -0.0 are Python's only in the per-key fold
        if partial.function in ("min", "max") and (not _exact_order(kind) or _summer_time(kind)):
            return False
        if partial.function in ("first", "last") and not (_exact_order(kind) or pa.types.is_floating(kind)):
            return False
    return True


@dataclass
class Updates:
    """Rows a batch added to windows that had fired: each (key, window)'s merged partials,
    whether the window held the key before (an update), and each row's place among the
    batch's groups (to emit them in the batch's order)."""

    pieces: list[tuple[int, pa.Table]]  # (window start, its rows the batch touched)
    updates: np.ndarray  # bool, a row per row of the pieces
    places: np.ndarray  # int64, a row per row of the pieces


class WindowTables:
    """Per window (by its start), its keys' partials as Arrow tables: the key columns, then
    one column per partial of `folds`, in the types of the first batch. A window that fired
    (`fired`) is one merged table, kept for the allowed lateness."""

    def __init__(self, key_columns: list[str], folds: Folds, assigner: Any, lateness: int = 0):
        self.key_columns = key_columns
        self.folds = folds
        self.assigner = assigner
        self.lateness = lateness
        partials = [unused_name(key_columns, f"__raystream_partial_{i}") for i in range(len(folds.partials))]
        self.names = list(key_columns) + partials
        self.specs = [(name, _MERGE[p.function]) for name, p in zip(partials, folds.partials)]
        self._row = unused_name(self.names, "__raystream_row")
        self._sums = [i for i, p in enumerate(folds.partials) if p.function == "sum"]
        self.types: list[pa.DataType] | None = None  # of every table's columns, from the first batch
        self.windows: dict[int, list[pa.Table]] = {}
        self.fired: set[int] = set()  # windows that fired, kept until end - 1 + lateness
        self.bounds: dict[int, int] = {}  # per window with sums: no key's |sum| passes it
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

    def bounded(self, partials: list[pa.ChunkedArray], starts: np.ndarray) -> int | None:
        """The largest |partial| of the batch's sums (0 without sums), or None if a window
        it adds to could pass int64 with it: a window's bound is the sum of the largest
        |partial| of each batch it took, so while it stays within int64, no key's sum (and
        no sum on the way to it, in any order) does, and Arrow's sum is Python's."""
        if not self._sums:
            return 0
        largest = 0
        for i in self._sums:
            extremes = pc.min_max(partials[i])
            for end in ("min", "max"):
                value = extremes[end].as_py()
                if value is not None:
                    largest = max(largest, abs(value))
        if any(self.bounds.get(s, 0) + largest > _SUM_LIMIT for s in np.unique(starts).tolist()):
            return None
        return largest

    # --- changes ------------------------------------------------------------------------

    def add(self, keys: list[pa.ChunkedArray], partials: list[pa.ChunkedArray], starts: np.ndarray,
            watermark: int, largest: int = 0) -> Updates | None:
        """A batch's partials, a row per (key, window start `starts[i]`), into the windows
        (`largest`: from `bounded`). Returns the rows of windows that had reached the
        watermark (fired, or late within the lateness), or None if there are none."""
        part = pa.Table.from_arrays(list(keys) + list(partials), names=self.names)
        order = np.argsort(starts, kind="stable")  # each window's rows together, in order
        found, firsts = np.unique(starts[order], return_index=True)
        self._dict = self._keys = None
        late: list[tuple[int, pa.Table, np.ndarray]] = []
        for start, low, high in zip(found.tolist(), firsts.tolist(), firsts[1:].tolist() + [len(order)]):
            rows = order[low:high]
            # a copy, not a slice: a slice would keep the whole batch's buffers alive for
            # as long as any one window holds its piece
            piece = part if len(found) == 1 else part.take(pa.array(rows))
            if self._sums:
                self.bounds[start] = self.bounds.get(start, 0) + largest
            if start in self.fired or start + self.size - 1 <= watermark:
                late.append((start, piece, rows))
                continue
            tables = self.windows.get(start)
            if tables is None:
                self.windows[start] = [piece]
            else:
                tables.append(piece)
                if len(tables) >= _COMPACT_AT:
                    self.merged(start)
        return self._taken_late(late) if late else None

    def _taken_late(self, late: list[tuple[int, pa.Table, np.ndarray]]) -> Updates:
        """Pieces of windows that reached the watermark, merged into them, as `Updates`."""
        pieces, updates, places = [], [], []
        for start, piece, rows in late:
            table, was_held = self._merged_with(start, piece)
            pieces.append((start, table))
            updates.append(was_held)
            places.append(rows)
        return Updates(pieces, np.concatenate(updates), np.concatenate(places))

    def _merged_with(self, start: int, piece: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Merge `piece` (a key once each) into window `start`, which is fired from now on.
        Returns the window's rows of the piece's keys, in the piece's order, and whether
        the window held each before. One group-by does it: the piece's rows carry their
        place, the window's none, and a key with two rows was held."""
        row = self._row
        tables = [piece.append_column(row, pa.array(np.arange(piece.num_rows, dtype=np.int64)))]
        if start in self.windows:
            held = self.merged(start)
            tables.insert(0, held.append_column(row, pa.nulls(held.num_rows, pa.int64())))
        grouped = self._group(pa.concat_tables(tables), self.specs + [(row, "max"), ([], "count_all")])
        n, m = len(self.key_columns), len(self.specs)
        self.windows[start] = [pa.Table.from_arrays(grouped[:n + m], names=self.names).combine_chunks()]
        self.fired.add(start)
        touched = np.flatnonzero(grouped[n + m].is_valid().to_numpy(zero_copy_only=False))
        places = grouped[n + m].fill_null(-1).to_numpy()
        order = touched[np.argsort(places[touched], kind="stable")]
        taken = pa.array(order, type=pa.int64())
        table = pa.Table.from_arrays([c.take(taken) for c in grouped[:n + m]], names=self.names)
        return table, grouped[n + m + 1].take(taken).to_numpy(zero_copy_only=False) == 2

    def _group(self, table: pa.Table, specs: list[tuple[Any, ...]], first: Sequence[str] = ()
               ) -> list[pa.ChunkedArray]:
        """The columns `first` and the key columns, then one column per spec, of `table`
        grouped by those columns, the groups in the order of their first rows. (Arrow's
        group-by numbers the groups of one key column so, but not always those of several.)"""
        by = list(first) + self.key_columns
        order = unused_name(table.column_names, "__raystream_order")
        table = table.append_column(order, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        grouped = table.group_by(by, use_threads=False).aggregate(list(specs) + [(order, "min")])
        n = len(by)
        columns = grouped.columns
        columns = columns[:n] + columns[n:] if _KEYS_FIRST else columns[-n:] + columns[:-n]
        firsts = columns.pop().to_numpy()
        ranked = np.argsort(firsts, kind="stable")
        if np.array_equal(ranked, np.arange(len(ranked))):
            return columns
        taken = pa.array(ranked)
        return [c.take(taken) for c in columns]

    def merged(self, start: int) -> pa.Table:
        """The window's keys, each once, with its partials merged (in the order the keys
        came), held so from now on."""
        tables = self.windows[start]
        if len(tables) > 1:
            grouped = self._group(pa.concat_tables(tables), self.specs)
            tables[:] = [pa.Table.from_arrays(grouped, names=self.names).combine_chunks()]
        return tables[0]

    def merged_all(self, starts: list[int]) -> list[pa.Table]:
        """`merged(s)` of each window of `starts`. Those of several tables are merged in
        one group-by, by (window, keys): an Arrow group-by costs much the same for the
        rows of one window as for those of many, so firing or snapshotting hundreds of
        windows is one call, not hundreds."""
        many = [s for s in starts if len(self.windows[s]) > 1]
        if len(many) > 1:
            start = unused_name(self.names, "__raystream_start")
            table = pa.concat_tables([t.append_column(start, pa.array(np.full(t.num_rows, s, dtype=np.int64)))
                                      for s in many for t in self.windows[s]])
            grouped = self._group(table, self.specs, first=[start])
            merged = pa.Table.from_arrays(grouped[1:], names=self.names).combine_chunks()
            # the groups in the order of their first rows: each window's keys together, in
            # window order, and in the order they came
            at = grouped[0].to_numpy()
            lows = [0] + (np.flatnonzero(at[1:] != at[:-1]) + 1).tolist()
            for low, high in zip(lows, lows[1:] + [len(at)]):  # copies, for the reason `add` gives
                self.windows[int(at[low])][:] = [merged.take(pa.array(np.arange(low, high)))]
        return [self.merged(s) for s in starts]

    def due(self, watermark: int) -> tuple[list[tuple[int, pa.Table]], list[pa.Table]]:
        """(The windows whose end - 1 the watermark reached, in the order they end,
        merged; the windows it passed by the lateness too, dropped, that did not fire now).
        Windows without lateness are dropped as they fire."""
        starts = sorted(s for s in self.windows if s not in self.fired and s + self.size - 1 <= watermark)
        out = list(zip(starts, self.merged_all(starts)))
        self.fired.update(starts)
        gone = sorted(s for s in self.fired if s + self.size - 1 + self.lateness <= watermark)
        if not starts and not gone:
            return [], []
        self._dict = self._keys = None
        dropped = [self.windows[s][0] for s in gone if s not in starts]
        for s in gone:
            del self.windows[s]
            self.fired.discard(s)
            self.bounds.pop(s, None)
        return out, dropped

    # --- the per-key layout ---------------------------------------------------------------

    def python_keys(self, table: pa.Table) -> list[Any]:
        """Each row's key as the per-record path has it: a value, or the tuple of several."""
        return python_keys(table, len(self.key_columns))

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
        """The state in the per-key layout: `{key: {(start, end): [state, emitted]}}`, the
        state a tuple with one value per aggregate, as the per-key fold makes it; emitted
        is whether the window fired."""
        if self._dict is None:
            self._dict = self.entries().as_dict()
        return self._dict

    def entries(self) -> WindowEntries:
        """Every (key, window)'s row, as a snapshot holds the state (state/window_entries.py)."""
        return self._entries(None)

    def changed_entries(self, keys: set[Any]) -> tuple[WindowEntries, list[Any]] | None:
        """The rows of `keys` (those with state) and the keys of `keys` without any, picked
        in Arrow: Python runs per key asked for, not per key held. None where it cannot
        pick (several key columns, keys not of the column's type): take the per-key layout."""
        if len(self.key_columns) != 1 or self.types is None:
            return None
        asked = list(keys)
        try:
            wanted = pa.array(asked, type=self.types[0])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return None
        picked = self._entries(wanted)
        # by the Python keys, not by Arrow's is_in: b"a" asked of a string column is "a" there
        held = set(python_keys(picked.table, 1))
        return picked, [k for k in asked if k not in held]

    def _entries(self, wanted: pa.Array | None) -> WindowEntries:
        """The rows of every window: of every key, or of the keys of one key column in `wanted`."""
        starts = sorted(self.windows)
        tables = self.merged_all(starts) if starts else []
        table = pa.concat_tables(tables) if tables else pa.table(
            [pa.array([], kind) for kind in self.types or [pa.null()] * len(self.names)], names=self.names)
        at = np.repeat(np.array(starts, dtype=np.int64), [t.num_rows for t in tables])
        if wanted is not None and table.num_rows:
            picked = pc.is_in(table.column(0), value_set=wanted)
            table, at = table.filter(picked), at[picked.to_numpy(zero_copy_only=False)]
        emitted = np.isin(at, np.fromiter(self.fired, dtype=np.int64, count=len(self.fired)))
        return WindowEntries(table, pa.array(at, pa.int64()), pa.array(emitted, pa.bool_()), self.size,
                             len(self.key_columns), tuple(slot[0] for slot in self.folds.slots))

    def load(self, state: dict[Any, Any], watermark: int, types: list[pa.DataType]) -> list[Any] | None:
        """Take the per-key state (restored) into empty tables of `types`: the keys of
        windows it drops (past the lateness already, as a restore's cleanup would drop
        them), or None if the state does not fit: then nothing changed. It fits where
        every window it keeps of the watermark's past was emitted and none of its future
        was (as the per-key layout keeps them between batches), and the values are of
        `types`."""
        if not self.fits(types):
            return None
        per_window: dict[int, tuple[list[Any], list[Any]]] = {}
        dropped = []
        for key, windows in state.items():
            for (start, end), (states, emitted) in windows.items():
                if end - start != self.size:
                    return None
                if end - 1 + self.lateness <= watermark:
                    dropped.append(key)
                    continue
                if emitted != (end - 1 <= watermark):
                    return None
                keys, values = per_window.setdefault(start, ([], []))
                keys.append(key)
                values.append(states)
        n = len(self.key_columns)
        loaded, bounds = {}, {}
        try:
            for start, (keys, values) in per_window.items():
                key_values = [keys] if n == 1 else [list(c) for c in zip(*keys)]
                arrays = [pa.array(v, type=t) for v, t in zip(key_values, types[:n])]
                if python_keys(pa.table(arrays, names=self.key_columns), n) != keys:
                    return None  # keys Arrow would make one (b"a" and "a" in a string column): per key
                by_aggregate = list(zip(*values))
                for i, kind in enumerate(types[n:]):
                    j = next(j for j, slot in enumerate(self.folds.slots) if i in slot)
                    arrays.append(pa.array(list(by_aggregate[j]), type=kind))
                    if i in self._sums:  # each key's sum, as it is: within the bound
                        bounds[start] = max(bounds.get(start, 0), max((abs(v) for v in by_aggregate[j]
                                                                       if v is not None), default=0))
                loaded[start] = [pa.Table.from_arrays(arrays, names=self.names)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return None
        self.windows = loaded
        self.fired = {s for s in loaded if s + self.size - 1 <= watermark}
        self.bounds = bounds
        self._dict = self._keys = None
        return dropped
