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

import numpy as np


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


class SpreadTimers:
    """Timers whose times mostly differ (a window per auction, each to its own end), with
    `GroupedTimers`' interface: a push appends to lists (no heap, no entry per time), and
    `pop_due` finds the due ones with numpy over all held (keys and payloads in object
    arrays, so picking them runs in C). They come out as from `GroupedTimers` when every
    (time, payload) differs: by time, then in the order pushed; timers pushed while
    iterating come out too if due, after those due before."""

    def __init__(self) -> None:
        self._times = np.empty(0, dtype=np.int64)
        self._keys = np.empty(0, dtype=object)
        self._payloads = np.empty(0, dtype=object)
        self._new: list[tuple[int, Any, Any]] = []  # pushed since they were last taken in

    def __len__(self) -> int:
        return len(self._times) + len(self._new)

    def push(self, t: int, key: Any, payload: Any = None) -> None:
        self._new.append((t, key, payload))

    def _take_new(self) -> None:
        new, n = self._new, len(self._new)
        if n:
            self._new = []
            self._times = np.concatenate([self._times, np.fromiter((t for t, _, _ in new), dtype=np.int64, count=n)])
            self._keys = np.concatenate([self._keys, np.fromiter((k for _, k, _ in new), dtype=object, count=n)])
            self._payloads = np.concatenate([self._payloads,
                                             np.fromiter((p for _, _, p in new), dtype=object, count=n)])

    def next_time(self) -> int | None:
        self._take_new()
        return int(self._times.min()) if len(self._times) else None

    def pop_due(self, now: int) -> Iterator[tuple[int, Any, Any]]:
        """Timers with time <= now, in time order (including those pushed while iterating)."""
        while True:
            self._take_new()
            due = self._times <= now
            if not due.any():
                return
            picked = np.flatnonzero(due)
            picked = picked[np.argsort(self._times[picked], kind="stable")]
            fired = zip(self._times[picked].tolist(), self._keys[picked].tolist(), self._payloads[picked].tolist())
            kept = ~due
            self._times, self._keys, self._payloads = self._times[kept], self._keys[kept], self._payloads[kept]
            yield from fired
