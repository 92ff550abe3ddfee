"""Window steps over Arrow: `keyed.window(assigner).aggregate(id, name=rs.aggregates.X(...))`
on a stream keyed by columns (docs/guide/columnar.md, docs/event_time.md).

The windows, their firing and their lateness are the per-record window step's
(operators/windows.py, `TimedWindows`): the same keyed state per key, `{(start, end):
[state, emitted]}` with the state a tuple of the aggregates' states (as `aggregate` keeps
per key), the same timer queues, rebuilt from the state on restore, and the same
watermark. So snapshots, incremental state (I1: every key a batch or a timer touches is
marked changed), restore and rescaling by key group (B4) are those of every keyed step.
What differs is how a batch gets in, which runs per batch instead of per record:

1. windows are assigned vectorized: tumbling, a floor; sliding, each row repeated once
   per window it is in (np.repeat) with its window starts; sessions, per key sorted by
   time and split where the gap is passed (operators/columnar_sessions.py);
2. a (row, window) pair whose window is late (end - 1 + allowed lateness <= watermark) is
   dropped, and a row late for all its windows goes to the late output, as Arrow rows;
3. Arrow computes the partials per (key, window) (`Table.group_by`), and Python folds
   them into the state once per distinct (key, window) of the batch; a batch that fails
   leaves the state as it was. Tumbling and sliding windows of event time with count,
   sum (of integers), min, max, first or last hold the state window-major instead
   (operators/window_tables.py): the partials are appended to each window's Arrow tables
   and merged by Arrow when it fires, with no Python and no timer per (key, window);
   snapshots hold their rows as Arrow (state/window_entries.py), and `state` is the
   per-key dict made from them when read;
4. a window that has fired and takes rows within the allowed lateness emits its new
   value at once, with update=True: once per batch, where the per-record step emits once
   per record (the last of those equals this one).

When the watermark reaches end - 1 (processing time: when the clock reaches end), the
due windows fire as one Arrow batch: the key columns, `window_start` and `window_end`
(timestamp[ms, UTC], the datetimes of the per-record `WindowResult`), one column per
aggregate, and `update`; each row timed end - 1.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._arrow_values import python_values
from raystream._runtime.operators.aggregate import Folds, Groups, arrow_keyed_input, unused_name
from raystream._runtime.operators.window_tables import Updates, WindowTables, columnar_folds
from raystream._runtime.state.window_entries import WindowEntries
from raystream._runtime.operators.columnar import explained
from raystream._runtime.operators.columnar_sessions import sessions
from raystream._runtime.operators.state_kinds import check_key_columns
from raystream._runtime.operators.fired_keys import key_columns
from raystream._runtime.operators.window_rows import WINDOW_TIME, Fired, LateRows, assign, python_holds, unified
from raystream._runtime.operators.windows import TimedWindows
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.time.timers import GroupedTimers, now_ms
from raystream._runtime.transport.batch import Batches, Timed, time_array, untimed
from raystream.errors import RestoreError
from raystream.graph import Step
from raystream.windows import WINDOW_COLUMNS

logger = logging.getLogger(__name__)

_NONE: dict = {}  # the windows of a key that has none


class ArrowWindowOp(TimedWindows):
    """Windows of Arrow rows keyed by columns, with the built-in aggregates (or one's own)."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.key_columns: list[str] = list(step.key_columns)  # type: ignore[arg-type]
        self.folds = Folds(step.arrow)
        self.what = f"window aggregate {', '.join(f'{n}={a!r}' for n, a in step.arrow)}"
        self.late_rows = LateRows()
        # the output's column types, from the batches seen, and kept with the state
        # (`state_meta`), so a window restored and fired before any batch came has them
        self.key_types: list[pa.DataType | None] = [None] * len(self.key_columns)
        self.result_types: list[pa.DataType | None] = [None] * len(self.folds.aggregates)
        self._types_bytes: tuple[tuple[Any, ...], bytes] | None = None
        # tumbling and sliding windows of event time, with count, sum, min, max, first and
        # last: the state window-major in Arrow (operators/window_tables.py) while every
        # batch fits it; `state` is then made from it when read (snapshots)
        self._columnar = self._window_major_kind()
        self._tables: WindowTables | None = self._new_tables() if self._columnar else None

    def _window_major_kind(self) -> bool:
        return not self.merging and not self.processing and columnar_folds(self.folds)

    def _new_tables(self) -> WindowTables:
        return WindowTables(self.key_columns, self.folds, self.assigner, self.lateness)

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:
        """The keyed state, `{key: {(start, end): [state, emitted]}}`: the dict itself, or
        (window-major) made from the windows' tables when read."""
        if self._tables is not None:
            return self._tables.as_dict()
        return self._state

    def state_keys(self) -> int:
        """The keys held, without making the per-key state from the tables."""
        return self._tables.keys() if self._tables is not None else len(self._state)

    def whole_state(self) -> dict[Any, Any] | WindowEntries:
        """A full snapshot's state (I2): window-major, the tables' rows as they are."""
        return self._tables.entries() if self._tables is not None else self._state

    def changed_state(self) -> tuple[dict[Any, Any] | WindowEntries, list[Any]]:
        """An incremental snapshot's (I2): window-major, the changed keys' rows picked in
        Arrow (one key column; otherwise as every keyed step)."""
        picked = self._tables.changed_entries(self.changed) if self._tables is not None else None
        return super().changed_state() if picked is None else picked

    @state.setter
    def state(self, value: dict[Any, Any]) -> None:  # KeyedOp.__init__, restore: the dict
        self._tables = None
        self._state = value

    def _process(self, batch: Any) -> Any:
        inner, times = arrow_keyed_input(self, batch, "a window aggregate")
        rows = inner.batch
        self.timed = times is not None
        if self.processing:
            times = np.full(rows.num_rows, now_ms(), dtype=np.int64)
        elif times is None:
            raise RecordFailure(self.step_id, "<batch>", ValueError(
                "an event-time window needs rows with event time; give the source event_time=rs.EventTime.column(...) "
                "or add a with_event_time step before the key_by"))
        times = time_array(times)
        types = list(self.key_types), list(self.result_types)
        try:
            if self.merging:
                from_sessions = sessions(self, rows, times)
                late, touched = from_sessions.late, self._commit_sessions(from_sessions.windows)
                updates = None
            else:
                late, groups, size = self._grouped(rows, times)
                largest = self._window_major(groups) if self._columnar else None
                if largest is not None:
                    touched, updates = [], self._append(groups, largest)
                else:
                    touched, updates = self._commit(self._merged(groups, size)), None
        except Exception as exc:  # the batch fails as a whole; the state stays as it was
            self.key_types, self.result_types = types  # the output types it would have taught too
            return self._batch_failed(inner, explained(
                exc, f"{self.what} failed on a batch with columns {', '.join(rows.schema.names)}"))
        if late is not None:
            self.late_records += self.late_rows.add(inner, times, late)
        if updates is not None:
            return self._window_rows(updates.pieces, updates.updates, updates.places)
        return self._updates(touched)

    # --- state ------------------------------------------------------------------------

    def state_meta(self) -> dict[str, Any]:
        """The aggregates (checked on restore), and the output's types: the key columns'
        then the aggregates', as the IPC bytes of a schema (null: not known yet)."""
        types = tuple(self.key_types) + tuple(self.result_types)
        if self._types_bytes is None or self._types_bytes[0] != types:
            names = self.key_columns + self.folds.names
            schema = pa.schema([(name, pa.null() if kind is None else kind) for name, kind in zip(names, types)])
            self._types_bytes = (types, schema.serialize().to_pybytes())
        return {"op": "window", "aggregates": self.folds.describe(), "types": self._types_bytes[1]}

    def restore_meta(self, metas: list[Any]) -> None:
        """Refuse other aggregates; take the output's types the old subtasks knew (a
        snapshot from before they were kept has none: fired before any batch, a window's
        columns are typed from its values)."""
        if not self.assigner.opened_by_rows and any(isinstance(m, dict) and m.get("windows") == "lifetime"
                                                    for m in metas):
            raise RestoreError(
                f"step {self.step_id!r}: the checkpoint's state was made by a window step of Lifetime windows, and "
                "this step's windows are others; restore with the job's original windows, give this step another "
                "id, or start without resume")
        self.folds.check_restored(self.step_id, metas, "window")
        n = len(self.key_columns)
        for meta in metas:
            data = meta.get("types") if isinstance(meta, dict) else None
            if data is None:
                continue
            schema = pa.ipc.read_schema(pa.py_buffer(data))
            # the key columns, before the aggregates (this step's: checked above)
            check_key_columns(self.step_id, schema.names[:max(0, len(schema) - len(self.result_types))],
                              self.key_columns)
            for i, f in enumerate(schema):
                known = self.key_types if i < n else self.result_types
                j = i if i < n else i - n
                if not pa.types.is_null(f.type):
                    # old subtasks may have seen other types (int8 keys in one, int64 in another)
                    known[j] = f.type if known[j] is None else unified(known[j], f.type)

    # --- a batch in ---------------------------------------------------------------------

    def values(self, rows: pa.RecordBatch) -> pa.Table:
        """The key columns and the columns the aggregates read, as a table."""
        names = list(dict.fromkeys(self.key_columns + self.folds.columns()))
        missing = [c for c in names if c not in rows.schema.names]
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
        return pa.Table.from_batches([rows.select(names)])

    def _grouped(self, rows: pa.RecordBatch, times: np.ndarray) -> tuple[np.ndarray | None, Groups, int]:
        """Tumbling and sliding: (rows late for all their windows, or None; the partials
        per (key, window start) of the batch; the windows' size). Nothing changes yet."""
        assigned = assign(self.assigner, times)
        pairs, starts, late = assigned.rows, assigned.starts, None
        if not self.processing:
            on_time = starts + (assigned.size - 1 + self.lateness) > self.watermark
            if not on_time.all():
                pairs, starts = pairs[on_time], starts[on_time]
                late = np.bincount(pairs, minlength=len(times)) == 0
        table = self.values(rows)
        if not np.array_equal(pairs, np.arange(table.num_rows)):
            table = table.take(pa.array(pairs))  # sliding: a row per window; or late rows gone
        window = unused_name(table.column_names, "__raystream_window")
        groups = self.folds.group(table.append_column(window, pa.array(starts)), self.key_columns + [window],
                                  keys=len(self.key_columns))
        self._learn(table, groups.partial_types())
        return late, groups, assigned.size

    def _merged(self, groups: Groups, size: int) -> dict[Any, Any]:
        """The new state of each (key, window) of the batch, folded in Python. Nothing changes yet."""
        get, fresh = self.state.get, self.folds.fresh()
        ids, olds = [], []
        for key, s in zip(groups.python_keys(len(self.key_columns)), python_values(groups.keys[-1])):
            w = (s, s + size)
            ids.append((key, w))
            entry = (get(key) or _NONE).get(w)
            olds.append(fresh if entry is None else entry[0])
        new, _ = self.folds.merge(ids, olds, groups.python_partials())
        return new

    def _window_major(self, groups: Groups) -> int | None:
        """Whether the batch's partials go into the window-major tables: the largest |partial|
        of its sums (`WindowTables.bounded`), or None. After a restore the windows restored
        move into them first (once no key group holds its own watermark); a batch they cannot
        hold (other types, sums past int64) moves their windows to the per-key dict for good."""
        types = [c.type for c in groups.keys[:-1]] + [c.type for c in groups.partials]
        if self._tables is None:  # restored: the per-key state, with timers
            if self.group_watermarks:  # R4: per key until the step's watermark passes them
                return None
            tables = self._new_tables()
            dropped = tables.load(self._state, self.watermark, types)
            if dropped is None:
                self._columnar = False
                return None
            self.changed.update(dropped)  # I1: past the lateness, dropped as the cleanup would
            self.timers = GroupedTimers()
            self._tables = tables
        largest = self._tables.bounded(groups.partials, groups.keys[-1].to_numpy()) \
            if self._tables.fits(types) else None
        if largest is not None:
            return largest
        tables = self._tables
        self.state = tables.as_dict()  # the per-key dict from now on, with a timer per (key, window)
        for start in sorted(tables.windows):  # a window's keys in the order they came, as its timer fires them
            w = (start, start + tables.size)
            for key in tables.python_keys(tables.merged(start)):
                self._schedule(key, w)
        self._columnar = False
        return None

    def _append(self, groups: Groups, largest: int) -> Updates | None:
        """The batch's partials into the window-major tables; the rows of windows that had
        reached the watermark (within the lateness) to emit now, if any."""
        n = len(self.key_columns)
        starts = groups.keys[-1].to_numpy()
        keys = python_values(groups.keys[0].unique()) if n == 1 else groups.python_keys(n)
        for partial in groups.partials:  # values Python cannot hold fail the batch, not a snapshot
            python_holds(partial)
        updates = self._tables.add(groups.keys[:n], groups.partials, starts,  # type: ignore[union-attr]
                                   self.watermark, largest)
        self.changed.update(keys)  # I1
        return updates

    def _learn(self, table: pa.Table, partial_types: list[pa.DataType]) -> None:
        """The output's column types, from a batch's key columns and partials' types."""
        for i, name in enumerate(self.key_columns):
            kind = table.schema.field(name).type
            if not pa.types.is_null(kind):
                self.key_types[i] = kind
        for j, kind in enumerate(self.folds.result_types(partial_types)):
            if not pa.types.is_null(kind):
                self.result_types[j] = kind

    def _commit(self, new: dict[Any, Any]) -> list[tuple[Any, tuple[int, int]]]:
        """Store the new states; a new window gets its timer. Returns the windows touched."""
        state, changed, schedule = self.state, self.changed, self._schedule
        for (key, w), acc in new.items():
            windows = state.get(key)
            if windows is None:
                windows = state[key] = {}
            entry = windows.get(w)
            if entry is None:
                windows[w] = [acc, False]
                schedule(key, w)
            else:
                entry[0] = acc
            changed.add(key)  # I1
        return list(new)

    def _commit_sessions(self, windows: dict[Any, dict[tuple[int, int], list]]) -> list[tuple[Any, tuple[int, int]]]:
        """Each key's windows after the batch replace its windows; a window new to the key
        gets its timer (those of windows merged away find nothing and are skipped)."""
        touched = []
        for key, now in windows.items():
            before = self.state.get(key) or {}
            for w, entry in now.items():
                if before.get(w) is not entry:
                    touched.append((key, w))
                    if w not in before:
                        self._schedule(key, w, self._has_fired(w, entry))
            self.state[key] = now
            self.changed.add(key)  # I1
        return touched

    def _updates(self, touched: list[tuple[Any, tuple[int, int]]]) -> Any:
        """Windows that had fired and took rows emit their value now (`_has_fired`)."""
        if self.processing:
            return []
        out = Fired()
        for key, w in touched:
            entry = self.state[key][w]
            if self._has_fired(w, entry):
                self._emit(key, w, entry, out)
        return self._fired(out)

    # --- time -------------------------------------------------------------------------

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)  # the per-key dict with its timers, until a batch comes
        self._columnar = self._window_major_kind()

    def on_watermark(self, watermark: int) -> Any:
        if self._tables is None:
            return super().on_watermark(watermark)
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        self._passed(watermark)
        fired, dropped = self._tables.due(watermark)
        for table in dropped:  # I1: cleaned up after the lateness
            self.changed.update(self._tables.python_keys(table))
        if not fired:
            return []
        out = self._window_rows(fired)
        self.changed.update(self._tables.python_keys(untimed(out)[0]))  # I1
        return out

    def _window_rows(self, pieces: list[tuple[int, pa.Table]], updates: np.ndarray | None = None,
                     places: np.ndarray | None = None) -> Any:
        """Rows of windows held window-major, (start, table) each, as one output batch, as
        `_fired` makes it: fired (update False), or `updates` (rows put in the order of
        `places`)."""
        n, size = len(self.key_columns), self._tables.size  # type: ignore[union-attr]
        table = pa.concat_tables([t for _, t in pieces])
        starts = np.repeat(np.array([s for s, _ in pieces], dtype=np.int64), [t.num_rows for _, t in pieces])
        if updates is None:
            updates = np.zeros(len(starts), dtype=bool)
        elif places is not None and len(pieces) > 1:
            order = np.argsort(places, kind="stable")
            table, starts, updates = table.take(pa.array(order)), starts[order], updates[order]
        table = table.combine_chunks()
        arrays = [table.column(i).chunk(0) if table.column(i).num_chunks else pa.array([], table.column(i).type)
                  for i in range(table.num_columns)]
        results = []
        for j, slot in enumerate(self.folds.slots):
            result, kind = arrays[n + slot[0]], self.result_types[j]
            if kind is not None and result.type != kind and not pa.types.is_null(kind):
                try:
                    result = result.cast(kind, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass
            results.append(result)
        batch = pa.RecordBatch.from_arrays(
            arrays[:n] + [pa.array(starts).cast(WINDOW_TIME), pa.array(starts + size).cast(WINDOW_TIME)] + results
            + [pa.array(updates, type=pa.bool_())],
            names=self.key_columns + list(WINDOW_COLUMNS) + self.folds.names + ["update"])
        self.records_out += batch.num_rows
        return Timed(batch, starts + (size - 1)) if self.timed else batch

    # --- output -------------------------------------------------------------------------

    def _collector(self) -> Fired:
        return Fired()

    def _emit(self, key: Any, w: tuple[int, int], entry: list, out: Fired) -> None:
        out.add(key, w, entry[0], bool(entry[1]))
        entry[1] = self._emission_mark(w)

    def _fired(self, out: Fired) -> Any:
        if not out.keys:
            return []
        made = [self._fired_batch(out if rows is None else out.picked(rows), keys)
                for rows, keys in key_columns(out.keys, self.key_types)]
        return made[0] if len(made) == 1 else Batches(made)

    def _fired_batch(self, out: Fired, keys: list[pa.Array]) -> Any:
        arrays = keys + out.window_columns()
        arrays += self.folds.results([list(states) for states in zip(*out.entries)], self.result_types, widen=True)
        arrays.append(pa.array(out.updates, type=pa.bool_()))
        batch = pa.RecordBatch.from_arrays(
            arrays, names=self.key_columns + list(WINDOW_COLUMNS) + self.folds.names + ["update"])
        self.records_out += batch.num_rows
        return Timed(batch, np.asarray(out.ends, dtype=np.int64) - 1) if self.timed else batch

    def take_late_batches(self) -> list[Any]:
        return self.late_rows.take()
