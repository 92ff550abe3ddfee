"""Windows the rows open, over Arrow: `keyed.window(rs.windows.Lifetime("expires"))
.aggregate(id, ...)` (docs/guide/columnar.md, "Windows the rows open").

A row whose end column is set opens a window of its key, [its time, end + 1); every row
of the key whose time falls in a window of the key is in it. A row in no window of its
key *waits*: a window that would hold it starts at or before its time, so its opening
row comes before the watermark passes that time. Everything else is the columnar window
step's (operators/columnar_windows.py): the per-key state `{key: {(start, end): [state,
emitted]}}`, the timers, firing, lateness, the output, and what a failed batch does.

Per batch, with numpy over all rows and Python once per distinct key and per (key,
window) the batch touches:

L1 the waiting rows come first, then the batch's rows (so `first` and `last` see the
   waiting rows first, in the order they came);
L2 each opening row's window, unless it is late (end + allowed lateness <= watermark:
   then the opening row is a late row, and no window opens); an end before the row's
   own time fails the batch;
L3 the windows of the batch's keys: those in the state, and the new ones;
L4 every row goes to each window of its key that holds its time (a row may be in
   several); a new row in none waits, or goes to the late output if its time plus the
   allowed lateness is at or before the watermark (no window can take it any more);
   a waiting row in none waits on;
L5 the partials per window (Arrow), folded into the windows' states in Python.

The waiting rows are held as Arrow (not per key) and dropped when the watermark reaches
their time plus the allowed lateness. Snapshots see them in the per-key state, under the
key `PENDING` of a key's windows, as columns (`Waiting`): `settle()` writes them there
before every snapshot reads the state (and marks their keys changed, I1), and `restore`
takes them back out.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import arrow_keyed_input, unused_name
from raystream._runtime.operators.columnar import explained
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.time.timers import SpreadTimers
from raystream._runtime.transport.arrow_keys import distinct_keys
from raystream._runtime.transport.batch import time_array
from raystream.errors import RestoreError
from raystream.graph import Step

#: Where a key's waiting rows are in its windows' dict when a snapshot reads the state.
PENDING = "pending"

_NONE: dict = {}


def end_millis(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(each row's end in milliseconds, whether it has one) of the end column: integers
    (milliseconds) or timestamps."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_timestamp(kind):
        column = column.cast(pa.timestamp("ms", tz=kind.tz)).cast(pa.int64())
    elif pa.types.is_null(kind):
        column = pa.nulls(len(column), pa.int64())
    elif not pa.types.is_integer(kind):
        raise TypeError(f"a Lifetime window's end column holds milliseconds (integers) or timestamps; got {kind}")
    has = column.is_valid().to_numpy(zero_copy_only=False)
    return column.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False), has


#: A key's waiting rows in a snapshot: (the column names, the times, one list per column).
Waiting = tuple[tuple[str, ...], list[int], list[list[Any]]]


def _table_of(blocks: list[Waiting]) -> tuple[pa.Table | None, np.ndarray]:
    """The waiting rows of restored keys as one table (types as Arrow infers them; cast to
    the batches' types when the next batch comes) and their times."""
    if not blocks:
        return None, np.empty(0, dtype=np.int64)
    names = blocks[0][0]
    columns = [pa.array([v for _, _, block in blocks for v in block[i]]) for i in range(len(names))]
    times = np.asarray([t for _, ts, _ in blocks for t in ts], dtype=np.int64)
    return pa.Table.from_arrays(columns, names=list(names)), times


def _is_window(w: Any) -> bool:
    return type(w) is tuple and len(w) == 2 and all(type(x) is int for x in w)


class LifetimeWindowOp(ArrowWindowOp):
    """Windows opened by rows of the stream, each to the end the row carries."""

    def __init__(self, step: Step):
        super().__init__(step)
        self._columnar, self._tables = False, None  # the windows differ in size: per key
        self.timers = SpreadTimers()  # a window's own end: hardly two windows share a timer
        self.end_column: str = self.assigner.end
        self._waiting: pa.Table | None = None  # the waiting rows: the columns `values` takes
        self._waiting_times = np.empty(0, dtype=np.int64)
        self._settled: set[Any] = set()  # the keys with a PENDING entry in the state

    # --- a batch in ---------------------------------------------------------------------

    def process(self, batch: Any) -> Any:
        inner, times = arrow_keyed_input(self, batch, "a window aggregate")
        rows = inner.batch
        self.timed = times is not None
        if times is None:
            raise RecordFailure(self.step_id, "<batch>", ValueError(
                "a Lifetime window needs rows with event time; give the source event_time=rs.EventTime.column(...) "
                "or add a with_event_time step before the key_by"))
        times = time_array(times)
        try:
            late, new, waiting = self._assigned(rows, times)
        except Exception as exc:  # the batch fails as a whole; the state stays as it was
            return self._batch_failed(inner, explained(
                exc, f"{self.what} in Lifetime windows failed on a batch with columns {', '.join(rows.schema.names)}"))
        touched = self._commit(new)
        (self._waiting, self._waiting_times), waited = waiting
        self.changed.update(waited)  # I1
        if late is not None:
            self.late_records += self.late_rows.add(inner, times, late)
        return self._updates(touched)

    def _assigned(self, rows: pa.RecordBatch, times: np.ndarray) -> tuple[np.ndarray | None, dict[Any, Any], Any]:
        """(the batch's late rows or None, the new state of each window touched, (the rows
        waiting after the batch with their times, the keys whose waiting rows changed)).
        Nothing changes yet."""
        if self.end_column not in rows.schema.names:
            raise ValueError(f"no column {self.end_column!r} (the end of the Lifetime windows)")
        ends, opens = end_millis(rows.column(self.end_column))
        table = self.values(rows)
        waiting, waiting_times = self._waiting_rows(table.schema)
        held = 0 if waiting is None else waiting.num_rows
        if held:  # L1
            table = pa.concat_tables([waiting, table])
            times = np.concatenate([waiting_times, times])
            opens = np.concatenate([np.zeros(held, dtype=bool), opens])
            ends = np.concatenate([np.zeros(held, dtype=np.int64), ends])
        distinct = distinct_keys(table, tuple(self.key_columns))
        codes = distinct.rows

        opening = np.flatnonzero(opens)  # L2
        bad = ends[opening] < times[opening]
        if bad.any():
            i = int(opening[np.argmax(bad)])
            raise ValueError(f"a row opens a Lifetime window that ends ({int(ends[i])}) before the row's own time "
                             f"({int(times[i])}); its end column {self.end_column!r} must be at or after its time")
        late_window = ends[opening] + self.lateness <= self.watermark
        late_openers, opening = opening[late_window], opening[~late_window]

        win_codes, win_starts, win_ends = self._windows(distinct.keys, codes, opening, times, ends)  # L3
        # L4: each row against each window of its key (sorted by key: a range per key)
        per_key = np.bincount(win_codes, minlength=len(distinct.keys))
        lo = (np.cumsum(per_key) - per_key)[codes]
        counts = per_key[codes]
        pair_rows = np.repeat(np.arange(len(codes), dtype=np.int64), counts)
        offsets = np.arange(len(pair_rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        pair_windows = np.repeat(lo, counts) + offsets
        inside = (win_starts[pair_windows] <= times[pair_rows]) & (times[pair_rows] < win_ends[pair_windows])
        pair_rows, pair_windows = pair_rows[inside], pair_windows[inside]
        unplaced = np.ones(len(codes), dtype=bool)
        unplaced[pair_rows] = False  # a late opener may be in another window of its key; if not, it is late
        too_late = unplaced & (times + self.lateness <= self.watermark)
        too_late[:held] = False  # a waiting row is dropped by the watermark, not found late
        wait = unplaced & ~too_late
        late = too_late[held:] if too_late.any() else None
        if late is not None:
            late = late.copy()
        waiting_after = (table.filter(pa.array(wait)), times[wait]) if wait.any() else (None, np.empty(0, np.int64))

        keys = distinct.keys  # I1: rows that wait or stop waiting change their key's state
        marked = np.zeros(len(keys), dtype=bool)
        marked[codes[wait]] = True
        marked[codes[:held]] = True
        waited = np.flatnonzero(marked).tolist()
        new = self._folded(table, pair_rows, pair_windows, keys, win_codes, win_starts, win_ends)
        return late, new, (waiting_after, [keys[c] for c in waited])

    def _windows(self, keys: list[Any], codes: np.ndarray, opening: np.ndarray, times: np.ndarray,
                 ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of the keys present (code, start, end), sorted by code: those in the
        state (Python, once per distinct key) and those the opening rows open."""
        found_codes, found_starts, found_ends = [], [], []
        for code, windows in enumerate(map(self._state.get, keys)):  # the lookups in C, the loop per key held
            if windows:
                for w in windows:
                    if w != PENDING:
                        found_codes.append(code)
                        found_starts.append(w[0])
                        found_ends.append(w[1])
        all_codes = np.concatenate([np.asarray(found_codes, dtype=np.int64), codes[opening]])
        all_starts = np.concatenate([np.asarray(found_starts, dtype=np.int64), times[opening]])
        all_ends = np.concatenate([np.asarray(found_ends, dtype=np.int64), ends[opening] + 1])
        order = np.lexsort((all_ends, all_starts, all_codes))
        all_codes, all_starts, all_ends = all_codes[order], all_starts[order], all_ends[order]
        if len(opening):  # a window opened twice (or already open) is one window
            first = np.ones(len(order), dtype=bool)
            first[1:] = (np.diff(all_codes) != 0) | (np.diff(all_starts) != 0) | (np.diff(all_ends) != 0)
            all_codes, all_starts, all_ends = all_codes[first], all_starts[first], all_ends[first]
        return all_codes, all_starts, all_ends

    def _folded(self, table: pa.Table, pair_rows: np.ndarray, pair_windows: np.ndarray, keys: list[Any],
                win_codes: np.ndarray, win_starts: np.ndarray, win_ends: np.ndarray) -> dict[Any, Any]:
        """L5: the new state of every window a row went to, keyed (key, (start, end))."""
        if not len(pair_rows):
            return {}
        column = unused_name(table.column_names, "__raystream_window")
        placed = table.take(pa.array(pair_rows)).append_column(column, pa.array(pair_windows))
        groups = self.folds.group(placed, [column])
        self._learn(table, groups.partial_types())
        get, fresh = self._state.get, self.folds.fresh()
        ids, olds = [], []
        for i in groups.keys[0].to_pylist():
            key, w = keys[int(win_codes[i])], (int(win_starts[i]), int(win_ends[i]))
            ids.append((key, w))
            entry = (get(key) or _NONE).get(w)
            olds.append(fresh if entry is None else entry[0])
        new, _ = self.folds.merge(ids, olds, groups.python_partials())
        return new

    # --- the waiting rows -------------------------------------------------------------

    def _waiting_rows(self, schema: pa.Schema) -> tuple[pa.Table | None, np.ndarray]:
        """The waiting rows as Arrow in `schema` (restored ones may have other types)."""
        if self._waiting is not None and self._waiting.schema != schema:
            return self._waiting.cast(schema), self._waiting_times
        return self._waiting, self._waiting_times

    def _by_key(self) -> dict[Any, Waiting]:
        """The waiting rows per key, each key's in the order they came, as columns:
        Python runs per key and per column, the values are converted in bulk."""
        table = self._waiting
        if table is None or not table.num_rows:
            return {}
        distinct = distinct_keys(table, tuple(self.key_columns))
        order = np.argsort(distinct.rows, kind="stable")
        codes = distinct.rows[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]).tolist() + [len(codes)]
        table = table.take(pa.array(order))
        names = tuple(table.column_names)
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
        times = self._waiting_times[order].tolist()
        return {distinct.keys[int(codes[a])]: (names, times[a:b], [c[a:b] for c in columns])
                for a, b in zip(bounds, bounds[1:])}

    def settle(self) -> None:
        """Before a snapshot reads the state: each key's waiting rows under PENDING in its
        windows, and no PENDING entry for keys that have none any more (I1: all changed)."""
        now = self._by_key()
        for key in self._settled - now.keys():
            windows = self._state.get(key)
            if windows is not None:
                windows.pop(PENDING, None)
                if not windows:
                    del self._state[key]
            self.changed.add(key)
        for key, waiting in now.items():
            self._state.setdefault(key, {})[PENDING] = waiting
            self.changed.add(key)
        self._settled = set(now)

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        blocks: list[Waiting] = []
        settled = set()
        for key in list(state):
            windows = state[key]
            if not isinstance(windows, dict) or not all(w == PENDING or _is_window(w) for w in windows):
                raise RestoreError(
                    f"step {self.step_id!r}: the checkpoint holds state of another kind of step under this id (not "
                    "windows); restore it with the job that wrote it, give this step another id, or start without "
                    "resume")
            waiting = windows.pop(PENDING, None)
            if waiting is not None:
                settled.add(key)
                blocks.append(waiting)
                if not windows:
                    del state[key]
        super().restore(state, watermark)
        self._columnar, self._tables = False, None
        self._waiting, self._waiting_times = _table_of(blocks)
        self._settled = settled
        self._expire()

    # --- time -------------------------------------------------------------------------

    def on_watermark(self, watermark: int) -> Any:
        out = super().on_watermark(watermark)
        self._expire()
        return out

    def _expire(self) -> None:
        """Drop the waiting rows whose time plus the allowed lateness the watermark reached."""
        limit = self.watermark - self.lateness
        if self._waiting is not None:
            gone = self._waiting_times <= limit
            if gone.any():
                dropped = self._waiting.filter(pa.array(gone))
                self.changed.update(distinct_keys(dropped, tuple(self.key_columns)).keys)
                if gone.all():
                    self._waiting, self._waiting_times = None, np.empty(0, dtype=np.int64)
                else:
                    self._waiting = self._waiting.filter(pa.array(~gone))
                    self._waiting_times = self._waiting_times[~gone]
