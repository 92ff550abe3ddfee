"""Event-time schedules of the simulation (sim.py): the source has event time with a
watermark generator that counts idleness (`idle_after`) on the simulated clock; its
partitions run apart in event time, some get their records only later (a gap: polls
find them empty), and some are slow, their batches taking simulated time through the
chain, so a subtask spends longer than `idle_after` on one partition's batch while
another has records waiting. A subtask reads as SubtaskActor._run_source does: the real
`SourceReader.read_round`, each batch stamped by the real `AssignTimeOp` (its generator
built and restored by `assembly.build_operators`, as a subtask builds it), the real
`ChainClock` ticking after each batch and after each round, `polled_empty` with the
partitions the round found empty. The generators' newest times go through the
checkpoints and the restore merge by partition.

The invariant (`Lateness`): no record comes behind the watermark (event time at or
before the newest watermark sent before its batch) unless that watermark was sent while
the record's partition looked empty: while its latest poll had found no records (or the
record is a straggler of a window schedule, windowed.py, behind its own partition). A
partition whose polls keep finding records is never idle, however long the subtask spends
on another partition's batches. Every attempt starts its own watermark afresh. And a
subtask sends IDLE only after a watermark covering the greatest watermark its partitions
made, by their records in this attempt or the times the restore gave them.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from raystream._runtime.time.watermarks import IDLE, MIN_TIME
from raystream.event_time import EventTime

BASE_MS = 1_700_000_000_000  # the event time of every partition's first record


class Timing:
    """A schedule's event-time option: each record's time, when it arrives at the source,
    and what its batch costs (all decided by the seed)."""

    def __init__(self, seed: int, partitions: int):
        rng = random.Random(seed ^ 0xE7E11)  # its own draws: the rest of the schedule stays what it was
        self.partitions = partitions
        self.idle_after = rng.choice([0.05, 0.1, 0.2])  # simulated seconds
        self.max_delay_ms = rng.choice([0, 0, 3])
        self.interval = rng.choice([0.0, 0.05, 0.2])  # RuntimeConfig.watermark_interval
        # Milliseconds of event time per record: partitions run apart in event time, so an
        # idle one's records are behind the others' watermark.
        self.step_ms = [rng.choice([1, 2, 5, 20]) for _ in range(partitions)]
        # Simulated seconds a batch takes through the chain: some partitions' take longer
        # than idle_after, and the others' records wait meanwhile. A barrier waits for the
        # batch it comes in (C1; the simulation checks that it does not wait for the round:
        # one batch of each partition), and a round stays well within the shortest
        # checkpoint timeout (1 s) all the same.
        self.slow = [rng.choice([0.0, 0.0, 0.5, 2.0]) * self.idle_after for _ in range(partitions)]
        while sum(self.slow) > 0.5:
            self.slow[self.slow.index(max(self.slow))] = 0.0
        # Seconds between two records' arrival (0: all there from the start) and when the
        # first arrives: a partition read faster than it fills is polled empty, and idle.
        self.arrival = [rng.choice([0.0, 0.0, 0.0, 0.01, 0.04]) for _ in range(partitions)]
        self.first = [rng.choice([0.0, 0.0, 0.3, 1.0]) for _ in range(partitions)]
        # Some partitions fill in bursts (`burst` records at once) with pauses past
        # idle_after between them: a subtask reads a burst's last records and all its
        # partitions go quiet together, so it goes idle (drawn last: the draws above stay).
        self.burst = rng.choice([3, 10])
        self.pause = [rng.choice([0.0, 0.0, 1.0]) for _ in range(partitions)]
        # A window schedule's stragglers (windowed.py): record -> ms it comes behind its
        # partition's time; None: every partition's records come in event-time order.
        self.behind: Callable[[int], int] | None = None

    def millis(self, record: int) -> int:
        p = record % self.partitions
        t = BASE_MS + (record // self.partitions) * self.step_ms[p]
        return t if self.behind is None else max(BASE_MS, t - self.behind(record))

    def seconds(self, record: int) -> float:
        """EventTime's timestamp function: seconds since the epoch."""
        return self.millis(record) / 1000

    def event_time(self, columnar: bool) -> EventTime:
        """The source's event time: from the column "t" of an Arrow batch, else per record."""
        delay, idle = self.max_delay_ms / 1000, self.idle_after
        if columnar:
            return EventTime.column("t", unit="ms", max_delay=delay, idle_after=idle)
        return EventTime(self.seconds, max_delay=delay, idle_after=idle)

    def arrived(self, p: int, offset: int, end: int, now: float) -> int:
        """The end of what of records `offset`..`end` of partition `p` has arrived by `now`."""
        if now < self.first[p]:
            return offset
        if self.pause[p]:
            return max(offset, min(end, (int((now - self.first[p]) / self.pause[p]) + 1) * self.burst))
        if not self.arrival[p]:
            return end
        return max(offset, min(end, int((now - self.first[p]) / self.arrival[p]) + 1))

    def cost(self, p: int) -> float:
        """Simulated seconds a batch of partition `p` takes through the chain."""
        return self.slow[p]


class Lateness:
    """One subtask attempt's account of its partitions' polls and the watermarks it sent
    (the simulation's own, apart from the generator's): which watermark may pass which
    partition's records (violations go to `found`), and which must come before IDLE
    (`idle_found`); both lists are the trace's."""

    def __init__(self, timing: Timing, name: str, found: list[str], idle_found: list[str]):
        self.timing, self.name, self.found, self.idle_found = timing, name, found, idle_found
        self.looks_empty: dict[int, bool] = {}  # partition -> whether its latest poll found nothing
        self.allowed: dict[int, int] = {}  # partition -> the newest watermark sent while it looked empty
        self.watermark = MIN_TIME  # the newest sent
        self.newest: dict[int, int] = {}  # partition -> the newest event time of its records sent, or restored
        self.ended: set[int] = set()

    def polled(self, p: int, found: bool) -> None:
        self.looks_empty[p] = not found

    def end(self, p: int) -> None:
        self.ended.add(p)

    def sent(self, messages: list[tuple[int, Any]]) -> None:
        """The clock's messages after a batch or a round: note each watermark it sent, and
        check each IDLE against the partitions that went quiet last."""
        for _, mark in messages:
            if mark is IDLE:
                self._check_idle()
            elif isinstance(mark, int) and mark > self.watermark:
                self.watermark = mark
                for p, empty in self.looks_empty.items():
                    if empty:
                        self.allowed[p] = max(self.allowed.get(p, MIN_TIME), mark)

    def _check_idle(self) -> None:
        """A subtask goes idle only after the greatest watermark its partitions made (their
        records', this attempt's or restored): idle, none holds the others back. Else a
        window they completed waits for records that may never come (stop 35's Kafka
        idle-partition test; and after a restore, when every partition goes quiet in the
        first round: review of stop 36)."""
        made = [t for p, t in self.newest.items() if p not in self.ended]
        newest = max(made, default=MIN_TIME)
        owed = newest - self.timing.max_delay_ms - 1 if newest > MIN_TIME else MIN_TIME
        if self.watermark < owed:
            self.idle_found.append(
                f"{self.name}: went idle with the watermark {self.watermark - BASE_MS if self.watermark > MIN_TIME else None} "
                f"sent, behind {owed - BASE_MS}, the greatest its partitions made (looking empty: {sorted(p for p, e in self.looks_empty.items() if e)}; "
                f"idle_after {self.timing.idle_after} s, watermark interval {self.timing.interval} s)")

    def check(self, p: int, records: list[int]) -> None:
        """A batch of partition `p` goes out after the watermarks sent so far."""
        allowed = self.allowed.get(p, MIN_TIME)
        if records:
            self.newest[p] = max(self.newest.get(p, MIN_TIME), max(map(self.timing.millis, records)))
        behind = self.timing.behind  # a straggler (a window schedule's) may come behind any watermark
        for record in records:
            t = self.timing.millis(record)
            if allowed < t <= self.watermark and not (behind is not None and behind(record)):
                self.found.append(
                    f"{self.name}: record {record} of partition {p} (event time {t - BASE_MS} ms past the base) came "
                    f"behind the watermark {self.watermark - BASE_MS}, which passed it while the partition's polls "
                    f"found records (idle_after {self.timing.idle_after} s; a batch of each partition takes "
                    f"{[round(s, 3) for s in self.timing.slow]} s)")
                return
