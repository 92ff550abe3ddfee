"""Timers: the primitive windows are built on and the `process` step gives to user code
(operators/process.py; docs/event_time.md).

An event-time timer fires when the step's watermark reaches its time; a processing-time
timer when the wall clock does. Timers belong to keys: they live in the key's state, so
they are in every snapshot, move with their key group when a job is rescaled, and fire
after a restore (`restore` rebuilds the queues from the restored keys).
"""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Iterator


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TimerQueue:
    """Timers in time order, each `(time, key, payload)`. Cancelled timers stay queued and
    are skipped by the owner when they come due (it checks the key's state)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any, Any]] = []
        self._seq = itertools.count()  # ties by insertion, so keys are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, t: int, key: Any, payload: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), key, payload))

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> Iterator[tuple[int, Any, Any]]:
        """Timers with time <= now, in time order (including those pushed while iterating)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, key, payload = heapq.heappop(heap)
            yield t, key, payload


class GroupedTimers:
    """A `TimerQueue` whose timers with equal time and payload share one heap entry: the
    windows of a step mostly end together (every key's window [0, 10 s) fires at 9,999),
    so pushing a key's timer is an append, and only distinct (time, payload) pay for the
    heap. `pop_due` yields every timer as TimerQueue does: by time, then by when its
    (time, payload) was first pushed, then keys in the order pushed."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()
        self._keys: dict[tuple[int, Any], list[Any]] = {}  # (time, payload) -> keys, while in the heap
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, t: int, key: Any, payload: Any = None) -> None:
        keys = self._keys.get((t, payload))
        if keys is None:
            keys = self._keys[(t, payload)] = []
            heapq.heappush(self._heap, (t, next(self._seq), payload))
        keys.append(key)
        self._n += 1

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> Iterator[tuple[int, Any, Any]]:
        """Timers with time <= now, in time order (including those pushed while iterating)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, payload = heapq.heappop(heap)
            keys = self._keys.pop((t, payload))  # a push from here on starts a new entry
            self._n -= len(keys)
            for key in keys:
                yield t, key, payload
