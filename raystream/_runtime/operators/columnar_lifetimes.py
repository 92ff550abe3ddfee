"""Windows the rows open, over Arrow: `keyed.window(rs.windows.Lifetime("expires"))
.aggregate(id, ...)` (docs/guide/columnar.md, "Windows the rows open").

A row whose end column is set opens a window of its key, [its time, end + 1). A row goes
to the windows of its key open when it comes that hold its time (the one it opens
included); a row in none *waits*, for the first window of its key opened later that
holds it: such a window starts at or before its time, so its opening row comes before
the watermark passes that time. Everything else is the columnar window step's
(operators/columnar_windows.py): the per-key state `{key: {(start, end): [state,
emitted]}}`, firing, lateness, the output, and what a failed batch does.

Per batch, with numpy over all rows and Python once per distinct key and per (key,
window) the batch touches:

L1 a waiting row can only go to a window opened after it came (windows keep their
   bounds), so of the waiting rows only those of keys the batch opens windows for are
   looked at; they come first, then the batch's rows (so `first` and `last` see the
   waiting rows first, in the order they came); each segment of them (one Arrow
   schema, operators/lifetime_waiting.py) and the batch are grouped apart, and their
   rows meet by their Python keys;
L2 each opening row's window, unless it is late (end + allowed lateness <= watermark:
   then the opening row is a row as any other, and no window opens); an end before the
   row's own time fails the batch; an end past `MAX_END` (about 146 million years) is
   taken as `MAX_END`, so the window fires at the end of the input;
L3 the windows of the batch's keys: those in the state, and the new ones, each with the
   row from which on it is open;
L4 each row as the rules place it one at a time, in order (review 37b: a row already in
   a window missed a window of its key opened by a later row of the batch in another
   batch, not in the same one): keys with one window in play in numpy, a row that came
   before its window opened going to it only if it was waiting then; keys with several
   windows row by row in Python; a new row that no window takes waits, or, if its time
   plus the allowed lateness is at or before the watermark, goes to the late output;
L5 the partials per window (Arrow), folded into the windows' states in Python.

The waiting rows are held as Arrow (not per key) and dropped when the watermark reaches
their time plus the allowed lateness. Snapshots see them in the per-key state, under the
key `PENDING` of a key's windows (operators/lifetime_waiting.py): `settle()` writes them
there before every snapshot reads the state (and marks their keys changed, I1), and
`restore` takes them back out. The step's `state_meta` says its windows are Lifetime
windows, so no other window step of the id takes its state, nor it theirs.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import arrow_keyed_input, unused_name
from raystream._runtime.operators.columnar import explained
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.lifetime_placement import MAX_END, end_millis, placed, windows_in_play
from raystream._runtime.operators.lifetime_waiting import PENDING, Segment, WaitingRows
from raystream._runtime.operators.window_rows import Fired, python_holds
from raystream._runtime.operators.windows import CLEANUP, FIRE
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.time.timers import SpreadTimers
from raystream._runtime.time.watermarks import MIN_TIME
from raystream._runtime.transport.arrow_keys import distinct_keys
from raystream._runtime.transport.batch import time_array
from raystream.errors import RestoreError
from raystream.graph import Step

__all__ = ["LifetimeWindowOp", "MAX_END", "PENDING"]

_NONE: dict = {}


def _is_window(w: Any) -> bool:
    return type(w) is tuple and len(w) == 2 and all(type(x) is int for x in w)


class LifetimeWindowOp(ArrowWindowOp):
    """Windows opened by rows of the stream, each to the end the row carries."""

    def __init__(self, step: Step):
        super().__init__(step)
        self._columnar, self._tables = False, None  # the windows differ in size: per key
        self.timers = SpreadTimers()  # a window's own end: hardly two windows share a timer
        self.end_column: str = self.assigner.end
        self.waiting = WaitingRows(tuple(self.key_columns))
        self._settled: set[Any] = set()  # the keys with a PENDING entry in the state

    # --- a batch in ---------------------------------------------------------------------

    def _process(self, batch: Any) -> Any:
        inner, times = arrow_keyed_input(self, batch, "a window aggregate")
        rows = inner.batch
        self.timed = times is not None
        if times is None:
            raise RecordFailure(self.step_id, "<batch>", ValueError(
                "a Lifetime window needs rows with event time; give the source event_time=rs.EventTime.column(...) "
                "or add a with_event_time step before the key_by"))
        times = time_array(times)
        types = list(self.key_types), list(self.result_types)
        try:
            late, new, waiting, waited = self._assigned(rows, times)
        except Exception as exc:  # the batch fails as a whole; the state stays as it was
            self.key_types, self.result_types = types  # review 37b: the failed batch's types too
            return self._batch_failed(inner, explained(
                exc, f"{self.what} in Lifetime windows failed on a batch with columns {', '.join(rows.schema.names)}"))
        touched = self._commit(new)
        self.waiting.replace(waiting)
        self.changed.update(waited)  # I1
        if late is not None:
            self.late_records += self.late_rows.add(inner, times, late)
        return self._updates(touched)

    def _limit(self) -> int:
        """The newest time a row can have and be late: the watermark minus the lateness."""
        return max(self.watermark - self.lateness, MIN_TIME)

    def _assigned(self, rows: pa.RecordBatch, times: np.ndarray
                  ) -> tuple[np.ndarray | None, dict[Any, Any], list[Segment], list[Any]]:
        """(the batch's late rows or None, the new state of each window touched, the rows
        waiting after the batch, the keys whose waiting rows changed). Nothing changes."""
        if self.end_column not in rows.schema.names:
            raise ValueError(f"no column {self.end_column!r} (the end of the Lifetime windows)")
        ends, opens = end_millis(rows.column(self.end_column))
        table = self.values(rows)
        distinct = distinct_keys(table, tuple(self.key_columns))
        keys, codes = distinct.keys, distinct.rows

        opening = np.flatnonzero(opens)  # L2
        bad = ends[opening] < times[opening]
        if bad.any():
            i = int(opening[np.argmax(bad)])
            raise ValueError(f"a row opens a Lifetime window that ends ({int(ends[i])}) before the row's own time "
                             f"({int(times[i])}); its end column {self.end_column!r} must be at or after its time")
        limit = self._limit()
        opening = opening[ends[opening] > limit]  # a late opener opens nothing; it is a row as any other

        # L1: a waiting row can only go to a window opened since it came (windows keep their
        # bounds), so only the waiting rows of keys this batch opens windows for are looked at
        candidates = self._candidates(keys, codes[opening])
        held = sum(len(c[2]) for c in candidates)
        if held:
            codes = np.concatenate([c[2] for c in candidates] + [codes])
            times = np.concatenate([c[1].times[c[3]] for c in candidates] + [times])
            ends = np.concatenate([np.zeros(held, dtype=np.int64), ends])
            opening = opening + held

        windows = windows_in_play(self._state, keys, codes, opening, times, ends)  # L3
        win_codes, win_starts, win_ends = windows[:3]
        pair_rows, pair_windows = placed(codes, times, ends, opening, held, limit, windows)  # L4
        unplaced = np.ones(len(codes), dtype=bool)
        unplaced[pair_rows] = False
        too_late = unplaced[held:] & (times[held:] <= limit)
        late = too_late.copy() if too_late.any() else None
        waits = unplaced[held:] & ~too_late

        new: dict[Any, Any] = {}  # L5, part by part in the order of L1
        offset, segments, taken = 0, list(self.waiting.segments), np.zeros(len(keys), dtype=bool)
        for index, segment, _, rows_of in candidates:
            n = len(rows_of)
            mine = (pair_rows >= offset) & (pair_rows < offset + n)
            if mine.any():
                self._fold(segment.table.take(pa.array(rows_of)), pair_rows[mine] - offset, pair_windows[mine], keys,
                           win_codes, win_starts, win_ends, new)
                went = ~unplaced[offset:offset + n]
                taken[codes[offset:offset + n][went]] = True
                gone = np.zeros(segment.table.num_rows, dtype=bool)
                gone[rows_of[went]] = True
                segments[index] = segment.without(gone)  # type: ignore[call-overload]
            offset += n
        mine = pair_rows >= held
        if mine.any():
            self._fold(table, pair_rows[mine] - held, pair_windows[mine], keys, win_codes, win_starts, win_ends, new)
        kept = [s for s in segments if s is not None]
        if waits.any():
            waiting = table.filter(pa.array(waits))
            for name in waiting.column_names:  # values Python cannot hold fail their batch, not a later one
                python_holds(waiting.column(name))
            kept.append(Segment(waiting, times[held:][waits]))
            taken[codes[held:][waits]] = True
        return late, new, kept, [keys[c] for c in np.flatnonzero(taken).tolist()]  # I1: the keys whose waiting changed

    def _candidates(self, keys: list[Any], opener_codes: np.ndarray
                    ) -> list[tuple[int, Segment, np.ndarray, np.ndarray]]:
        """The waiting rows of the keys the batch opens windows for, per segment: (its
        index, the segment, the rows' codes among the batch's `keys`, the rows)."""
        if not len(opener_codes) or not self.waiting.segments:
            return []
        opened = {keys[c]: c for c in np.unique(opener_codes).tolist()}
        out = []
        for index, segment in enumerate(self.waiting.segments):
            distinct = segment.distinct(tuple(self.key_columns))
            mapping = np.fromiter(map(opened.get, distinct.keys, itertools.repeat(-1)), dtype=np.int64,
                                  count=len(distinct.keys))
            row_codes = mapping[distinct.rows]
            rows_of = np.flatnonzero(row_codes >= 0)
            if len(rows_of):
                out.append((index, segment, row_codes[rows_of], rows_of))
        return out

    def _fold(self, table: pa.Table, pair_rows: np.ndarray, pair_windows: np.ndarray, keys: list[Any],
              win_codes: np.ndarray, win_starts: np.ndarray, win_ends: np.ndarray, new: dict[Any, Any]) -> None:
        """L5: the partials of one part's rows per window, folded into `new` (each window's
        state so far: from an earlier part, or the state, or fresh). `pair_rows` are in
        row order, so first and last see the rows as they came."""
        column = unused_name(table.column_names, "__raystream_window")
        rows = table.take(pa.array(pair_rows)).append_column(column, pa.array(pair_windows))
        groups = self.folds.group(rows, [column])
        self._learn(table, groups.partial_types())
        get, fresh = self._state.get, self.folds.fresh()
        picked = groups.keys[0].to_numpy()
        ids = list(zip(map(keys.__getitem__, win_codes[picked].tolist()),
                       zip(win_starts[picked].tolist(), win_ends[picked].tolist())))
        olds = []
        for key_w in ids:
            before = new.get(key_w)
            if before is None:
                entry = (get(key_w[0]) or _NONE).get(key_w[1])
                before = fresh if entry is None else entry[0]
            olds.append(before)
        folded, _ = self.folds.merge(ids, olds, groups.python_partials())
        new.update(folded)

    # --- the waiting rows in snapshots --------------------------------------------------

    def settle(self) -> None:
        """Before a snapshot reads the state: each key's waiting rows under PENDING in its
        windows, and no PENDING entry for keys that have none any more (I1: all changed)."""
        now = self.waiting.by_key()
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
        blocks, settled = [], set()
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
        self.waiting = WaitingRows.restored(tuple(self.key_columns), blocks)
        self._settled = settled
        self.changed.update(self.waiting.expire(self._limit()))

    def state_meta(self) -> dict[str, Any]:
        return {**super().state_meta(), "windows": "lifetime"}

    def restore_meta(self, metas: list[Any]) -> None:
        for meta in metas:
            if isinstance(meta, dict) and meta.get("op") == "window" and meta.get("windows") != "lifetime":
                raise RestoreError(
                    f"step {self.step_id!r}: the checkpoint's state was made by a window step of other windows "
                    "(tumbling, sliding or session), and this step's are Lifetime windows; restore with the job's "
                    "original windows, give this step another id, or start without resume")
        super().restore_meta(metas)

    # --- time -------------------------------------------------------------------------

    def _fire(self, now: int) -> Any:
        """As TimedWindows._fire, on the dict itself and with the output's lists at hand:
        Python per window fired is most of what a watermark costs here."""
        out = Fired()
        keys, starts, ends, entries, updates = out.keys, out.starts, out.ends, out.entries, out.updates
        state, changed, lateness, timers = self._state, self.changed, self.lateness, self.timers
        for t, key, (w, kind) in timers.pop_due(now):
            changed.add(key)  # I1: firing and cleanup change the key's windows
            windows = state.get(key)
            entry = windows.get(w) if windows else None
            if entry is None:
                continue  # cleaned up
            if kind == FIRE:
                if entry[1] and w[1] - 1 < t:
                    continue
                keys.append(key)
                starts.append(w[0])
                ends.append(w[1])
                entries.append(entry[0])
                updates.append(entry[1])
                entry[1] = True
                if lateness:
                    timers.push(t + lateness, key, (w, CLEANUP))
                    continue
            del windows[w]
            if not windows:
                del state[key]
        return self._fired(out)

    def on_watermark(self, watermark: int) -> Any:
        out = super().on_watermark(watermark)
        self.changed.update(self.waiting.expire(self._limit()))
        return out
