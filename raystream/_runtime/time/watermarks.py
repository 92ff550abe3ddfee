"""Watermarks: how a subtask's event-time clock is made and combined (docs/event_time.md).

- `WatermarkGenerator`: where event times are assigned (a source with `event_time`, or
  an event-time step), bounded out-of-orderness per partition: a partition's watermark
  is the newest time it has seen minus `max_delay`, minus 1 ms (a watermark W says that
  every record at W or before has arrived, and more records may come at the newest
  time itself); the generator's is the minimum over
  partitions that are neither idle nor ended. A source partition whose polls found no
  records for `idle_after` (a step's input: that had no records for it) is idle. All partitions ended: the end of time.
- `InputWatermarks`: a subtask with inputs keeps the newest watermark of each input
  channel; its own is the minimum over the channels that are active (an idle channel
  does not count; an ended one counts as the end of time). It never goes back.
- Every partition (channel) idle: the watermark first goes to the greatest of theirs,
  then the subtask is idle (as Flink's watermark valve does).

A watermark travels as a WATERMARK message on every output channel, after the records
it follows; an IDLE payload (None) says that the sender is idle.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from raystream.event_time import EventTime

MIN_TIME = -(2**63)
MAX_TIME = 2**63 - 1
IDLE = None  # the payload of a WATERMARK message from an idle sender
#: an event-time step's snapshot: the newest time any subtask it was restored from had seen,
#: which it goes idle at no lower (no source partition has this name)
GREATEST = "\0greatest"


class WatermarkGenerator:
    """Bounded out-of-orderness with idleness, over the partitions of one subtask."""

    def __init__(self, event_time: EventTime, partitions: list[str], *, polled: bool = False):
        self.max_delay = event_time.max_delay_ms
        idle = event_time.idle_after_ms
        self.idle_after = None if idle is None else idle / 1000
        now = time.monotonic()
        self.newest: dict[str, int] = {p: MIN_TIME for p in partitions}
        # When each partition's idleness is counted from. A step's (not `polled`): its last
        # records. A source's (`polled`): the first of the polls in a row that found it
        # empty (`polled_empty`), none while its last poll found records: the time between
        # two polls of a partition is the time the subtask spent on the others' batches,
        # which says nothing about whether it had records (65,536-row batches of a slow
        # chain took longer than `idle_after`, and a partition with records went idle).
        self.polled = polled
        self.seen_at: dict[str, float | None] = {p: None if polled else now for p in partitions}
        self.ended: set[str] = set()
        self.greatest = MIN_TIME  # GREATEST as restored

    def restore(self, newest: dict[str, int]) -> None:
        """The newest times a checkpoint recorded for this generator's partitions."""
        for p, t in newest.items():
            if p in self.newest:
                self.newest[p] = t
            elif p == GREATEST:
                self.greatest = t

    def snapshot(self) -> dict[str, int]:
        """The newest time of each partition that has seen one (for the checkpoint), and
        GREATEST while it is ahead of them."""
        out = {p: t for p, t in self.newest.items() if t > MIN_TIME}
        if self.greatest > max(out.values(), default=MIN_TIME):
            out[GREATEST] = self.greatest
        return out

    def observe(self, partition: str, times: Sequence[int] | np.ndarray) -> None:
        """The times of one batch of `partition` (a list, or an Arrow batch's array: a vectorized max)."""
        if not len(times):
            return
        newest = int(times.max()) if isinstance(times, np.ndarray) else max(times)
        if newest > self.newest.get(partition, MIN_TIME):
            self.newest[partition] = newest
        self.seen_at[partition] = None if self.polled else time.monotonic()

    def polled_empty(self, partitions: list[str]) -> None:
        """A source's poll found no records in these partitions (idleness counts from the
        first such poll in a row)."""
        now = time.monotonic()
        for p in partitions:
            if self.seen_at.get(p) is None and p in self.newest:
                self.seen_at[p] = now

    def end(self, partition: str) -> None:
        self.ended.add(partition)

    def end_all(self) -> None:
        self.ended.update(self.newest)

    def watermark(self, now: float | None = None) -> int | None:
        """The current watermark, or IDLE when every partition not ended is idle."""
        now = time.monotonic() if now is None else now
        marks = []
        idle = False
        for p, newest in self.newest.items():
            if p in self.ended:
                continue
            seen = self.seen_at[p]
            if self.idle_after is not None and seen is not None and now - seen >= self.idle_after:
                idle = True
                continue
            marks.append(newest - self.max_delay - 1 if newest > MIN_TIME + self.max_delay + 1 else MIN_TIME)
        if marks:
            return min(marks)
        return IDLE if idle else MAX_TIME

    def watermark_when_idle(self) -> int:
        """What a generator whose partitions are all idle sends before IDLE: the greatest
        of their watermarks (MIN_TIME if none had records), as Flink's watermark valve
        does when its last active input goes idle. Idle partitions hold nothing back; no
        tick may have come between the last records and the idleness (a subtask reading
        its partitions' last records in one round went idle with their watermark never
        sent), and after a restore the partitions go quiet together in one round, the
        one that was idle before the failure with the others."""
        newest = max((t for p, t in self.newest.items() if p not in self.ended), default=MIN_TIME)
        # A restored event-time step starts at the oldest time of the subtasks it took over
        # (rescale.py): idle, it goes to the newest of theirs, as they all would have.
        newest = max(newest, self.greatest)
        return newest - self.max_delay - 1 if newest > MIN_TIME + self.max_delay + 1 else MIN_TIME

    def idle_deadline(self, now: float | None = None) -> float | None:
        """When (monotonic) the next active partition becomes idle; None: none will (those
        idle already are not waited for, or the subtask would spin)."""
        if self.idle_after is None:
            return None
        now = time.monotonic() if now is None else now
        due = [t + self.idle_after for p, t in self.seen_at.items()
               if t is not None and p not in self.ended and t + self.idle_after > now]
        return min(due) if due else None


class InputWatermarks:
    """The watermark of a subtask's inputs: the minimum over active channels."""

    def __init__(self, n_channels: int):
        self.marks = [MIN_TIME] * n_channels
        self.idle: set[int] = set()
        self.ended: set[int] = set()
        self.current = MIN_TIME
        self.is_idle = False

    def on_watermark(self, channel: int, mark: int | None) -> int | None | bool:
        """A channel's watermark (or IDLE). Returns the new watermark when it advanced,
        IDLE when the subtask became idle, False when nothing changed."""
        if mark is IDLE:
            self.idle.add(channel)
        else:
            self.idle.discard(channel)
            if mark > self.marks[channel]:
                self.marks[channel] = mark
        return self._combine()

    def on_end(self, channel: int) -> int | None | bool:
        self.idle.discard(channel)
        self.ended.add(channel)
        self.marks[channel] = MAX_TIME
        return self._combine(raise_idle=False)  # an end fires nothing by itself (ChainClock.on_input_end)

    def _combine(self, raise_idle: bool = True) -> int | None | bool:
        active = [m for c, m in enumerate(self.marks) if c not in self.idle]
        if self.idle and len(self.ended) == len(active):  # every channel not ended is idle: so is this subtask
            if self.is_idle:
                return False
            self.is_idle = True
            # as the generator's: the greatest watermark of the idle channels goes first
            # (`current` says it; ChainClock sends it before IDLE)
            if raise_idle:
                self.current = max(self.current, max(self.marks[c] for c in self.idle))
            return IDLE
        self.is_idle = False
        mark = min(active)
        if mark > self.current:
            self.current = mark
            return mark
        return False
