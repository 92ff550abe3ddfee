"""Protections of what depends on how a stream is cut into batches and how long they take
(tests/simulation/protections.py lists them with the others): min and max skipping NaN
across batches (columnar.py's schedules), a source partition's idleness counted from
its empty polls, the watermark sent before IDLE, and barriers after the current batch
(event_time.py's, whose slow batches make rounds long); a window that fired on a subtask
whose watermark was ahead not firing again after a rescale, and one it had dropped not
opening again, and windows of keys no one Arrow column holds firing together
(windowed.py's). Each mutant
is the code as it was before the fix.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np


@contextlib.contextmanager
def nan_state_kept_in_columns() -> Iterator[None]:
    """min and max held in numpy columns: a NaN state (a key whose first batch had only
    NaN) never gives way, so [NaN, 1, 2] cut after the NaN has min NaN (before f0b3db5)."""
    from raystream._runtime.operators import column_folds

    def fold(self: Any, a: np.ndarray, b: np.ndarray, partials: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        taken = ~b | self.better(p.values, a)
        if not p.all_valid:
            taken &= p.valid
        return np.where(taken, p.values, a), b | p.valid

    with mock.patch.object(column_folds.Least, "fold", fold):
        yield


@contextlib.contextmanager
def nan_state_kept_per_key() -> Iterator[None]:
    """min and max in the per-key layout: a NaN state never gives way (before f0b3db5)."""
    from raystream import aggregates

    def least(self: Any, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if p is None else p if s is None or p < s else s for s, p in zip(states, partials[0])]

    def greatest(self: Any, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if p is None else p if s is None or p > s else s for s, p in zip(states, partials[0])]

    with mock.patch.object(aggregates.Min, "merge_all", least), \
            mock.patch.object(aggregates.Max, "merge_all", greatest):
        yield


@contextlib.contextmanager
def idle_from_last_records() -> Iterator[None]:
    """A source's watermark generator counts a partition's idleness from its last records,
    as a step's does, not from its first empty poll (before 0698b9d): a partition with
    records waiting goes idle while its subtask works on another partition's batches."""
    from raystream._runtime.time.watermarks import WatermarkGenerator

    real = WatermarkGenerator.__init__

    def init(self: Any, event_time: Any, partitions: list[str], *, polled: bool = False) -> None:
        real(self, event_time, partitions, polled=False)

    with mock.patch.object(WatermarkGenerator, "__init__", init):
        yield


@contextlib.contextmanager
def idle_before_its_watermark() -> Iterator[None]:
    """A generator whose partitions all go idle sends IDLE without the watermark the ones
    going idle last had made, when no tick came between their last records and their
    idleness (before the fix of stop 36)."""
    from raystream._runtime.time.watermarks import MIN_TIME, WatermarkGenerator

    with mock.patch.object(WatermarkGenerator, "watermark_when_idle", lambda self: MIN_TIME):
        yield


@contextlib.contextmanager
def barriers_after_the_round() -> Iterator[None]:
    """A source subtask emits the barriers asked for during a round after the round (one
    batch of each of its partitions), not after its current batch (before stop 36)."""
    from raystream._runtime.subtask.source_reader import SourceReader

    real = SourceReader.read_round

    async def read_round(self: Any, emit: Any, between: Any = None) -> bool:
        progressed = await real(self, emit)
        if between is not None:
            await between()
        return progressed

    with mock.patch.object(SourceReader, "read_round", read_round):
        yield


@contextlib.contextmanager
def idle_with_the_last_quiet_minimum() -> Iterator[None]:
    """Before IDLE, the minimum watermark of the partitions that went quiet last, not the
    greatest of all (the first fix of stop 36): after a restore every partition goes quiet
    in the first round, one that never had records among them, and nothing is sent."""
    from raystream._runtime.time.watermarks import MIN_TIME, WatermarkGenerator

    def last_quiet_minimum(self: Any) -> int:
        last = [(seen, p) for p, seen in self.seen_at.items() if p not in self.ended and seen is not None]
        if not last:
            return MIN_TIME
        latest = max(seen for seen, _ in last)
        newest = min(self.newest[p] for seen, p in last if seen == latest)
        return newest - self.max_delay - 1 if newest > MIN_TIME + self.max_delay + 1 else MIN_TIME

    with mock.patch.object(WatermarkGenerator, "watermark_when_idle", last_quiet_minimum):
        yield


@contextlib.contextmanager
def fired_windows_fire_again() -> Iterator[None]:
    """A tumbling window that fired is taken as fired only once the step's watermark has
    reached its end (before a8c3978): a rescaled step restarts from the oldest watermark of
    the old subtasks, so a window that fired on one whose watermark was ahead gets its
    timer again and fires again as an update with the same values."""
    from raystream._runtime.operators.windows import TimedWindows

    def has_fired(self: Any, w: tuple[int, int], entry: list) -> bool:
        return not self.processing and w[1] - 1 <= self.watermark

    def emitted_current(self: Any, w: tuple[int, int], entry: list) -> bool:
        return False  # its FIRE timer emits it whatever its mark says

    with mock.patch.object(TimedWindows, "_has_fired", has_fired), \
            mock.patch.object(TimedWindows, "_emitted_current", emitted_current):
        yield


@contextlib.contextmanager
def group_watermarks_forgotten() -> Iterator[None]:
    """A rescaled window step judges every key group by its own watermark, the oldest of
    the old subtasks' (before 96e1187): a window that a subtask ahead had dropped (past its
    allowed lateness) is not in the snapshot, and a replayed record late for it there is on
    time for the older watermark: it opens the window again, which fires a second time with
    update=False. The restore installs no key group's watermark (so snapshots hold none)."""
    from raystream._runtime.operators.windows import TimedWindows

    def restore_group_watermarks(self: Any, groups: dict[int, int], max_parallelism: int) -> None:
        self.max_parallelism = max_parallelism
        self.group_watermarks = {}

    with mock.patch.object(TimedWindows, "restore_group_watermarks", restore_group_watermarks):
        yield


@contextlib.contextmanager
def fired_keys_in_one_column() -> Iterator[None]:
    """Windows fired together make one batch whatever their keys (before review 47's fix):
    a string key and an int key (a partition whose key column is strings, another's ints,
    on one subtask or merged by a rescale) fail the output's key column, and the subtask
    at that watermark, after every restore too."""
    from raystream._runtime.operators import columnar_windows, fired_keys

    def key_columns(keys: list[Any], kinds: list[Any]) -> list[tuple[Any, list[Any]]]:
        return [(None, fired_keys._columns(keys, kinds, len(kinds) == 1))]

    with mock.patch.object(columnar_windows, "key_columns", key_columns):
        yield


MUTANTS: dict[str, tuple[str, Callable[[], Any]]] = {
    "nan_state_kept_in_columns": ("review of stop 34: columnar min/max stuck at NaN when a batch is cut after a "
                                  "NaN", nan_state_kept_in_columns),
    "nan_state_kept_per_key": ("review of stop 34: min/max in the per-key layout stuck at NaN when a batch is cut "
                               "after a NaN", nan_state_kept_per_key),
    "idle_from_last_records": ("review of stop 34: a source partition with records waiting goes idle while its "
                               "subtask works on another's slow batch", idle_from_last_records),
    "idle_before_its_watermark": ("CI of stop 35: partitions going idle together after their last records in one "
                                  "round sent IDLE, never their watermark", idle_before_its_watermark),
    "idle_with_the_last_quiet_minimum": ("review of stop 36: after a restore, partitions quiet together send the "
                                         "minimum of their watermarks before IDLE", idle_with_the_last_quiet_minimum),
    "fired_windows_fire_again": ("a8c3978: after a rescale a tumbling window that had fired on a subtask whose "
                                 "watermark was ahead fired again, as an update with the same values",
                                 fired_windows_fire_again),
    "group_watermarks_forgotten": ("96e1187: after a rescale a window that a subtask ahead had dropped opened again "
                                   "for a replayed record late there, and fired twice (update=False)",
                                   group_watermarks_forgotten),
    "fired_keys_in_one_column": ("review 47: windows of keys no one Arrow column holds (\"5\" and 5) fired at one "
                                 "watermark failed the subtask there, after every restore too",
                                 fired_keys_in_one_column),
    "barriers_after_the_round": ("simulation of stop 35: a source subtask's barrier waits for a batch of each of "
                                 "its partitions, not the current one (C1)", barriers_after_the_round),
}
