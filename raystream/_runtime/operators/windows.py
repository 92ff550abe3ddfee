"""Window steps: keyed state per window, fired by timers (docs/event_time.md).

State per key is `{(start, end): [accumulator, emitted]}`, in milliseconds; it lives in
the keyed state, so windows are in every snapshot and move with their key group. The
timers are not stored: `restore` derives them from the windows (a window that has fired
is cleaned up at end - 1 + allowed lateness; one that has not fires at end - 1). Whether
it has fired is not the watermark's alone: after a rescale the watermark is the oldest of
the old subtasks', and `emitted` says what fired on the others (`_has_fired`): True for a
tumbling or sliding window, `(end,)` of the end it was emitted at for a session (False:
never).

For each record (event time t, or the time it arrives for `clock="processing"`):
1. the assigner gives its windows; a session window merges with the key's windows it
   touches, merging their accumulators;
2. a window with end - 1 + allowed_lateness <= watermark is late for the record; a
   record late for all its windows goes to the late output;
3. otherwise it is added; if the window already fired (within the lateness) its result
   is emitted again at once, with update=True.

When the watermark reaches end - 1 (for processing time: when the clock reaches end),
the window fires `(key, WindowResult(start, end, result, update))`, timed end - 1. It is dropped
then, or after the allowed lateness.
"""
from __future__ import annotations

import enum
import logging
from typing import Any, Callable

from raystream._runtime.transport.batch import KeyedBatch, batch_len, timed, untimed
from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.operators.group_watermarks import ahead_of, run_parts
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.operators.process import Collector, ProcessOp
from raystream._runtime.time.timers import GroupedTimers, now_ms
from raystream._runtime.time.watermarks import MIN_TIME
from raystream.event_time import from_millis
from raystream.graph import Step, StepKind
from raystream.windows import WindowResult, window_of

logger = logging.getLogger(__name__)

FIRE, CLEANUP = 0, 1


class _Mark(enum.Enum):
    EMPTY = 0  # a reduce accumulator before its first value (an enum pickles by name)


class WindowFunctions:
    """create/add/merge/result of one window step, whatever the user gave."""

    def __init__(self, how: str, fn: Any):
        self.how = how
        if how == "reduce":
            self.create: Callable[[], Any] = lambda: _Mark.EMPTY
            self.add = lambda acc, v: v if acc is _Mark.EMPTY else fn(acc, v)
            self.merge = lambda a, b: a if b is _Mark.EMPTY else b if a is _Mark.EMPTY else fn(a, b)
            self.result = lambda key, w, acc: acc
        elif how == "aggregate":
            self.create, self.add, self.merge = fn.create, fn.add, fn.merge
            self.result = lambda key, w, acc: fn.result(acc)
        elif how == "apply":
            self.create = list
            self.add = _append
            self.merge = lambda a, b: a + b
            self.result = lambda key, w, acc: fn(key, window_of(w), list(acc))
        elif how == "join":
            self.create = lambda: ([], [])
            self.add = _add_side
            self.merge = lambda a, b: (a[0] + b[0], a[1] + b[1])
            self.result = lambda key, w, acc: [fn(left, right) for left in acc[0] for right in acc[1]]
        else:
            raise ValueError(f"unknown window function kind {how!r}")


def _append(acc: list, value: Any) -> list:
    acc.append(value)
    return acc


def _add_side(acc: tuple[list, list], side_value: tuple[int, Any]) -> tuple[list, list]:
    acc[side_value[0]].append(side_value[1])
    return acc


def merged_mark(marks: list[Any], merged: tuple[int, int]) -> Any:
    """The emission mark of a session merged from windows marked `marks`: current if one of
    them was emitted at the merged end (then the merged value is emitted at once), else
    emitted if one was (it fires at its end, as an update), else False."""
    if (merged[1],) in marks:
        return (merged[1],)
    return next((mark for mark in marks if mark), False)


class TimedWindows(KeyedOp):
    """What every window step shares, per record or columnar (operators/columnar_windows.py,
    operators/columnar_join.py): state per key `{(start, end): [accumulator, emitted]}`,
    the timers that fire and drop windows (rebuilt from the state on restore), the
    watermark, and the late records. Subclasses add records and make the output:
    `_collector()` makes what `_emit(key, w, entry, out)` adds a fired window to, and
    `_fired(out)` turns it into the output batch."""

    def __init__(self, step: Step):
        super().__init__(step)
        spec = step.window
        self.assigner = spec.assigner
        self.lateness = spec.allowed_lateness_ms
        self.processing = self.assigner.clock == "processing"
        self.merging = self.assigner.merging
        self.watermark = MIN_TIME
        self.timers = GroupedTimers()  # a window's keys share its end's timer entry
        self.late_records = 0
        self.timed = True
        # R4: key group -> the watermark its old subtask had, where ahead of this one's
        # (operators/group_watermarks.py); held from a rescale until this one passes it
        self.group_watermarks: dict[int, int] = {}
        self.max_parallelism = 0

    # --- records: each key judged by its key group's watermark ----------------------------

    def process(self, batch: Any) -> Any:
        if self.group_watermarks:
            return run_parts(self, batch, self._process)
        return self._process(batch)

    def process_side(self, batch: Any, side: int) -> Any:
        if self.group_watermarks:
            return run_parts(self, batch, lambda part: self._process_side(part, side))
        return self._process_side(batch, side)

    def _process(self, batch: Any) -> Any:
        return KeyedOp.process(self, batch)

    def _process_side(self, batch: Any, side: int) -> Any:
        raise AssertionError("only a join takes batches with their side")

    # --- state ------------------------------------------------------------------------

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)
        self.watermark = MIN_TIME if watermark is None else watermark
        for key, windows in state.items():
            for w, entry in windows.items():
                if self.merging and entry[1] is True and w[1] - 1 <= self.watermark:
                    # 0.6's mark of a session the watermark had passed, whose changes were all
                    # emitted at once: current, marked so for the next snapshots (I1)
                    entry[1] = (w[1],)
                    self.changed.add(key)
                if self.processing or not self._emitted_current(w, entry):
                    self._schedule(key, w, due=True)
                else:
                    self.timers.push(w[1] - 1 + self.lateness, key, (w, CLEANUP))

    def restore_group_watermarks(self, groups: dict[int, int], max_parallelism: int) -> None:
        """R4: the watermarks of key groups whose old subtask was ahead of the restored one."""
        self.max_parallelism = max_parallelism
        self.group_watermarks = {} if self.processing else ahead_of(groups, self.watermark)

    def _schedule(self, key: Any, w: tuple[int, int], fired: bool = False, due: bool = False) -> None:
        """The window's timer: FIRE at end - 1; or, if it has fired or the watermark passed
        its end (records then emit it at once), CLEANUP after the lateness. `due`: FIRE
        even if the watermark passed its end, so that the next watermark fires it (a
        restored window never emitted: 0.7.0's columnar join left such, docs/changes.md)."""
        if self.processing:  # at its end: a record that arrives in the window's last millisecond is in it
            self.timers.push(w[1], key, (w, FIRE))
            return
        fire_at = w[1] - 1
        if (due or fire_at > self.watermark) and not fired:
            self.timers.push(fire_at, key, (w, FIRE))
        else:
            self.timers.push(fire_at + self.lateness, key, (w, CLEANUP))

    def _late(self, w: tuple[int, int]) -> bool:
        return not self.processing and w[1] - 1 + self.lateness <= self.watermark

    def _has_fired(self, w: tuple[int, int], entry: list) -> bool:
        """Whether an event-time window has fired, so that what it takes is an update to emit
        at once: the watermark passed its end, or it was emitted as it is now, ahead of the
        watermark. That happens after a rescale (R4): the step starts from the oldest
        watermark of the old subtasks it takes keys from, and the window fired on one whose
        watermark was ahead."""
        return not self.processing and (w[1] - 1 <= self.watermark or self._emitted_current(w, entry))

    def _emitted_current(self, w: tuple[int, int], entry: list) -> bool:
        """Whether the window's last emission holds it as it is now. A tumbling or sliding
        window that was emitted is current: what it takes later is emitted at once. A
        session is marked with the end it was emitted at (`_emission_mark`), since a fired
        session that a record extends past the watermark is emitted again at its new end;
        a session marked True (raystream 0.6.2 and before) counts as current only once the
        watermark passes its end, as it did then."""
        if not self.merging:
            return bool(entry[1])
        return entry[1] == (w[1],)

    def _emission_mark(self, w: tuple[int, int]) -> bool | tuple[int]:
        return (w[1],) if self.merging else True  # a tuple: truthy for any end, 0 included, and never == True

    # --- output -----------------------------------------------------------------------

    def _collector(self) -> Any:
        raise NotImplementedError

    def _emit(self, key: Any, w: tuple[int, int], entry: list, out: Any) -> None:
        raise NotImplementedError

    def _fired(self, out: Any) -> Any:
        raise NotImplementedError

    def take_late(self) -> Any:
        """The records found late since the last call, as a batch for the late output."""
        raise NotImplementedError

    def take_late_batches(self) -> list[Any]:
        """`take_late()` as a list of batches (a columnar join's sides differ in columns)."""
        batch = self.take_late()
        return [batch] if batch_len(batch) else []

    # --- time -------------------------------------------------------------------------

    def _fire(self, now: int) -> Any:
        out = self._collector()
        for t, key, (w, kind) in self.timers.pop_due(now):
            self.changed.add(key)  # I1: firing and cleanup change the key's windows
            windows = self.state.get(key)
            entry = windows.get(w) if windows else None
            if entry is None:
                continue  # merged away, or cleaned up
            if kind == FIRE:
                if not self._emitted_current(w, entry):  # it is, when it fired on an old subtask ahead (R4)
                    self._emit(key, w, entry, out)
                if self.lateness and not self.processing:
                    self.timers.push(t + self.lateness, key, (w, CLEANUP))
                    continue
            del windows[w]
            if not windows:
                del self.state[key]
        return self._fired(out)

    def on_watermark(self, watermark: int) -> Any:
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        self._passed(watermark)
        return [] if self.processing else self._fire(watermark)

    def _passed(self, watermark: int) -> None:
        """Let go of the key groups' watermarks `watermark` reached."""
        if self.group_watermarks:
            self.group_watermarks = ahead_of(self.group_watermarks, watermark)

    def on_time(self, now: int) -> Any:
        return self._fire(now) if self.processing else []

    def next_timer(self) -> int | None:
        return self.timers.next_time() if self.processing else None


class WindowOp(TimedWindows):
    """A window step over (key, value) records, one record at a time."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.functions = WindowFunctions(step.window.how, step.fn)
        self.late = Collector()

    # --- records ----------------------------------------------------------------------

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        self.timed = times is not None
        if self.processing:
            times = [now_ms()] * len(keys)
        elif times is None:
            raise RecordFailure(self.step_id, "<batch>", ValueError(
                "an event-time window needs records with event time; give the source event_time=rs.EventTime(...) "
                "or add an event-time step before the window"))
        out = Collector()
        add = self._merge_add if self.merging else self._add
        for i, (key, value, t) in enumerate(zip(keys, values, times)):
            try:
                if not add(key, value, t, out):
                    self.late.add(key, value, t)
                    self.late_records += 1
            except Exception as exc:
                self._bad.append(i)
                self.failed((key, value), exc)
        return out.batch(self.timed)

    def _add(self, key: Any, value: Any, t: int, out: Collector) -> bool:
        """Add to every window of `t` that is not late; False if all are."""
        fns = self.functions
        added = False
        windows = self.state.get(key)
        for w in self.assigner.assign(t):
            if self._late(w):
                continue
            if windows is None:
                windows = self.state[key] = {}
            entry = windows.get(w)
            if entry is None:
                entry = windows[w] = [fns.add(fns.create(), value), False]
                self._schedule(key, w)
            else:
                entry[0] = fns.add(entry[0], value)
            added = True
            # fired: emit the update now (`_has_fired` inline, as this runs per record and
            # window; a window that does not merge and was emitted has fired)
            if not self.processing and (entry[1] or w[1] - 1 <= self.watermark):
                self._emit(key, w, entry, out)
        return added

    def _merge_add(self, key: Any, value: Any, t: int, out: Collector) -> bool:
        """Session windows: the new window and every window of the key it touches become one."""
        fns = self.functions
        (start, end), = self.assigner.assign(t)
        windows = self.state.get(key) or {}
        touching = [w for w in windows if w[0] <= end and w[1] >= start]
        merged = (min([start] + [w[0] for w in touching]), max([end] + [w[1] for w in touching]))
        if self._late(merged):
            return False
        acc, marks = fns.add(fns.create(), value), []
        for w in touching:
            old = windows.pop(w)
            acc = fns.merge(old[0], acc)
            if old[1]:
                marks.append(old[1])
        entry = [acc, merged_mark(marks, merged) if marks else False]
        windows[merged] = entry
        self.state[key] = windows
        # `_has_fired` inline, as this runs per record
        fired = not self.processing and (merged[1] - 1 <= self.watermark or entry[1] == (merged[1],))
        if merged not in touching:
            self._schedule(key, merged, fired)  # timers of the windows merged away find nothing and are skipped
        if fired:
            self._emit(key, merged, entry, out)
        return True

    def _emit(self, key: Any, w: tuple[int, int], entry: list, out: Collector) -> None:
        result = self.functions.result(key, w, entry[0])
        start, end = from_millis(w[0]), from_millis(w[1])
        for value in result if self.functions.how == "join" else (result,):
            out.add(key, WindowResult(start, end, value, bool(entry[1])), w[1] - 1)
        entry[1] = self._emission_mark(w)

    def _collector(self) -> Collector:
        return Collector()

    def _fired(self, out: Collector) -> Any:
        self.records_out += len(out.keys)
        return out.batch(self.timed)

    def take_late(self) -> Any:
        """The records found late since the last call, as a batch for the late output."""
        if not self.late.keys:
            return []
        late, self.late = self.late, Collector()
        return late.batch(True)


class JoinOp(WindowOp):
    """A window join of two keyed inputs: per key and window, `fn(left, right)` for every
    pair of a left and a right record, emitted as `(key, WindowResult(start, end,
    fn(left, right)))` when the window fires."""

    def _process(self, batch: Any) -> Any:
        raise AssertionError("a join takes batches with their side (process_side)")

    def _process_side(self, batch: Any, side: int) -> Any:
        kb, times = self._keyed_input(batch)
        out = self._apply_keyed(kb.keys, [(side, v) for v in kb.values], times)
        self.records_out += len(out)
        return out

    def take_late(self) -> Any:
        batch = super().take_late()
        if not batch:
            return batch
        inner, times = untimed(batch)
        return timed(KeyedBatch(inner.keys, [v for _, v in inner.values]), times)


#: The keyed steps that keep time, by kind.
TIMED_OPERATORS: dict[StepKind, type[KeyedOp]] = {
    StepKind.WINDOW: WindowOp,
    StepKind.JOIN: JoinOp,
    StepKind.PROCESS: ProcessOp,
}
