"""State time-to-live (raystream/ttl.py, docs/guide/ttl.md): when each key was last
written, and the timers that remove the keys not written within the TTL.

A TTL step's value per key carries `touched`, the time (ms, of the TTL's clock) of its
newest write; `Expiry.armed` maps each key to the time of its one cleanup timer in
`Expiry.queue`. A write moves `touched` only: the timer is refreshed lazily, when it
comes due (a key still written within the TTL is re-armed at touched + TTL), so a key
costs one heap entry per TTL, not one per write. `armed` is kept beside the state, not
in the key's value, so it outlives a deletion: a key deleted and written again keeps
its pending timer instead of pushing another, and the queue holds at most one entry per
key (the keys held, and those deleted whose timer has not come due: written within the
last TTL). If the new life's time is earlier than the pending timer's, its removal waits
for that timer; it reads as absent from its own expiry on all the same. `touched` goes
into snapshots, `armed` does not: `restore` arms each key at touched + TTL.

A key is expired for a read at time `when` once when >= touched + TTL: by event time
`when` is the record's time (so a key's records in order see the same state whatever
the watermark did meanwhile), by processing time the wall clock.
"""
from __future__ import annotations

from typing import Any, Iterator

from raystream._runtime.time.timers import TimerQueue, now_ms
from raystream.process import KeyState
from raystream.ttl import EVENT

#: The `state_meta` key that says a step's snapshot holds TTL state (and by which clock).
TTL_META = "ttl_time"


class Expiring:
    """The state of a key of a `reduce` or `stateful_map` step with a TTL."""

    __slots__ = ("value", "touched")

    def __init__(self, value: Any, touched: int | None):
        self.value = value
        self.touched = touched  # None: restored without a time yet (event time: set at the next watermark)

    def __reduce__(self):
        return (Expiring, (self.value, self.touched))

    def __repr__(self) -> str:
        return f"Expiring({self.value!r}, touched={self.touched})"


Entry = Any  # an Expiring or a KeyState: both have `value` and `touched`


class Expiry:
    """The TTL of one step: its clock and length, and the keys' cleanup timers."""

    def __init__(self, ttl: Any):
        self.ms: int = ttl.ms
        self.clock: str = ttl.time
        self.event = ttl.time == EVENT
        self.queue = TimerQueue()
        self.armed: dict[Any, int] = {}  # key -> the time of its one entry in `queue`
        self.pending: dict[Any, None] = {}  # event time: keys without a time (restored), touched at the next watermark

    def meta(self) -> dict[str, Any]:
        return {TTL_META: self.clock, "ttl_ms": self.ms}

    def live(self, entry: Entry, when: int) -> bool:
        """Whether the entry's value is still there for a read at `when`."""
        return entry.touched is None or when < entry.touched + self.ms

    def touch(self, key: Any, entry: Entry, when: int) -> None:
        """The entry's value was written at `when`."""
        if entry.touched is None or when > entry.touched:
            entry.touched = when
        if key not in self.armed:
            self.arm(key, entry.touched)

    def arm(self, key: Any, touched: int) -> None:
        self.armed[key] = t = touched + self.ms
        self.queue.push(t, key)

    def clear(self) -> None:
        """No key holds a value any more (the end of input)."""
        self.queue, self.armed, self.pending = TimerQueue(), {}, {}

    def next_time(self) -> int | None:
        """When the wall clock next removes keys (processing time), rounded up to a tenth
        of the TTL (at least 10 ms, at most 1 s): a read checks the time itself, so a
        removal only frees memory, and the subtask wakes up for it a few times per TTL
        instead of once per key."""
        if self.event:
            return None
        t = self.queue.next_time()
        if t is None:
            return None
        grain = min(1_000, max(10, self.ms // 10))
        return -(-t // grain) * grain

    def due(self, state: dict[Any, Any], now: int) -> Iterator[tuple[Any, Entry]]:
        """The keys whose value expires at `now` (the watermark, or the wall clock); the
        caller removes each. Keys written since their timer was set are re-armed."""
        armed = self.armed
        for t, key, _ in self.queue.pop_due(now):
            if armed.get(key) != t:
                continue  # not the key's timer (cannot happen: one entry per key; kept safe)
            entry = state.get(key)
            if entry is None or entry.touched is None:  # deleted (a process step's value, or the key)
                del armed[key]
                continue
            end = entry.touched + self.ms
            if end > now:
                armed[key] = end
                self.queue.push(end, key)
                continue
            del armed[key]
            yield key, entry

    def restored(self, state: dict[Any, Any], retouch: bool) -> list[Any]:
        """Arm the restored keys; those without a time (restored from a step without a
        TTL, or with another clock: `retouch`) count as written now: by processing time
        the wall clock at the restore, by event time the next watermark. Returns the keys
        whose time this set, which the next snapshot must hold. By processing time, a time
        after the wall clock's now (a clock that went back, another machine's) counts as now."""
        now = now_ms()
        fresh = []
        for key, entry in state.items():
            if isinstance(entry, KeyState):
                if not self.event:
                    entry.seen = None  # an event time: meaningless here
                if entry.value is None:
                    entry.touched = None  # timers only: nothing to expire
                    continue
            if retouch or (not self.event and entry.touched is not None and entry.touched > now):
                entry.touched = None
            if entry.touched is not None:
                self.arm(key, entry.touched)
            elif self.event:
                self.pending[key] = None
            else:
                entry.touched = now
                self.arm(key, now)
                fresh.append(key)
        return fresh

    def first_watermark(self, state: dict[Any, Any], watermark: int) -> list[Any]:
        """Event time: the keys restored without a time count as written at the first
        watermark after the restore. Returns the keys whose time this set."""
        keys, self.pending = self.pending, {}
        fresh = []
        for key in keys:
            entry = state.get(key)
            if entry is not None and entry.touched is None and not (isinstance(entry, KeyState) and entry.value is None):
                entry.touched = watermark
                if key not in self.armed:
                    self.arm(key, entry.touched)
                fresh.append(key)
        return fresh


def had_ttl(metas: list[Any]) -> bool:
    """Whether the old subtasks' `state_meta` say their state was kept with a TTL."""
    return any(isinstance(m, dict) and TTL_META in m for m in metas)


def other_clock(metas: list[Any], clock: str) -> bool:
    """Whether the state was kept with a TTL of another clock (its times mean nothing here)."""
    return any(isinstance(m, dict) and m.get(TTL_META, clock) != clock for m in metas)


def without_ttl(state: dict[Any, Any]) -> list[Any]:
    """A step without a TTL took state kept with one: the plain values, in place.
    Returns the keys changed, which the next snapshot must hold (an incremental snapshot
    builds on parts that still hold the TTL's entries)."""
    changed = []
    for key, entry in state.items():
        if isinstance(entry, Expiring):
            state[key] = entry.value
            changed.append(key)
        elif isinstance(entry, KeyState) and (entry.touched is not None or entry.seen is not None):
            entry.touched = entry.seen = None
            changed.append(key)
    return changed


class DropsTTL:
    """For a keyed step without a TTL (a mixin before KeyedOp): state restored from the
    same step run with a TTL is taken without it (docs/guide/ttl.md: removing a TTL keeps
    the state), and its keys go into the next snapshot as plain values."""

    _from_ttl = False

    def restore_meta(self, metas: list[Any]) -> None:
        super().restore_meta(metas)  # type: ignore[misc]
        self._from_ttl = had_ttl(metas)

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)  # type: ignore[misc]
        if not self._from_ttl:
            return
        for key in without_ttl(state):
            if self.written is not None:  # type: ignore[attr-defined]
                self.written[key] = state[key]  # type: ignore[attr-defined]
            else:
                self.changed.add(key)  # type: ignore[attr-defined]
