"""The context of a `process` step: per-key state, timers and output for user code.

    def on_record(ctx: rs.ProcessContext, click) -> None:
        ctx.state = (ctx.state or 0) + 1
        ctx.set_event_timer(ctx.timestamp + timedelta(minutes=30))  # a session closes after 30 min idle

    def on_timer(ctx: rs.ProcessContext, when) -> None:
        if ctx.state is not None and ...:
            ctx.emit(ctx.state)
            ctx.state = None

    clicks.key_by("by_user", ...).process("sessions", on_record, on_timer=on_timer)

What one call does (state, timers, outputs) takes effect when it returns; if it raises,
none of it does, and the record goes to the job's error policy.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from raystream.event_time import from_millis, to_millis

__all__ = ["KeyState", "ProcessContext"]

_UNSET = object()


class KeyState:
    """What a `process` step keeps per key: the user's value and the key's timers; with a
    TTL, when the value was last written (`touched`, ms of the TTL's clock), and with one
    by event time, while the key has processing-time timers, the newest event time of its
    calls (`seen`: such a timer's write counts from it, docs/guide/ttl.md)."""

    __slots__ = ("value", "event_timers", "processing_timers", "touched", "seen")

    def __init__(self, value: Any = None, event_timers: set[int] | None = None,
                 processing_timers: set[int] | None = None, touched: int | None = None,
                 seen: int | None = None):
        self.value = value
        self.event_timers = event_timers or set()
        self.processing_timers = processing_timers or set()
        self.touched = touched
        self.seen = seen

    def __reduce__(self):
        if self.seen is not None:
            return (KeyState, (self.value, self.event_timers, self.processing_timers, self.touched, self.seen))
        if self.touched is None:  # a step without TTL: the snapshot of raystream before TTLs
            return (KeyState, (self.value, self.event_timers, self.processing_timers))
        return (KeyState, (self.value, self.event_timers, self.processing_timers, self.touched))

    def __repr__(self) -> str:
        return (f"KeyState({self.value!r}, event_timers={sorted(self.event_timers)}, "
                f"processing_timers={sorted(self.processing_timers)})")

    def empty(self) -> bool:
        return self.value is None and not self.event_timers and not self.processing_timers


class ProcessContext:
    """Passed to `on_record(ctx, value)` and `on_timer(ctx, when)` of a `process` step."""

    def __init__(self, op: Any, key: Any, ks: KeyState | None, t: int | None, clock: str | None, out: Any,
                 out_time: int | None = None, expired: bool = False):
        self._op = op
        self._ks = ks
        self._expired = expired  # a TTL's: the value reads as None, and stays until a write or its cleanup
        self._t = t
        self._out = out
        self._out_time = t if out_time is None else out_time
        self._state: Any = _UNSET
        self._timers: list[tuple[str, int, bool]] = []  # (clock, time, set or delete)
        self._emitted: list[Any] = []
        self.key = key
        #: "event" or "processing" in on_timer; None in on_record
        self.clock = clock

    @property
    def timestamp(self) -> dt.datetime | None:
        """The record's event time, or in on_timer the timer's time; None without event time."""
        return None if self._t is None else from_millis(self._t)

    @property
    def millis(self) -> int | None:
        """`timestamp` as milliseconds since the epoch (any int64, where a datetime ends at year 9999)."""
        return self._t

    @property
    def watermark(self) -> dt.datetime | None:
        """The step's event-time clock. Every record older than this has arrived (or is late)."""
        w = self._op.watermark
        return None if w < -(2**62) else from_millis(w)

    @property
    def state(self) -> Any:
        """This key's value; None when it has none. Assign None to delete it."""
        if self._state is not _UNSET:
            return self._state
        return None if self._ks is None or self._expired else self._ks.value

    @state.setter
    def state(self, value: Any) -> None:
        self._state = value

    def emit(self, output: Any) -> None:
        """Send `(key, output)` downstream."""
        self._emitted.append(output)

    def set_event_timer(self, when: Any) -> None:
        """Call on_timer when the watermark reaches `when` (datetime or epoch seconds)."""
        self._timers.append(("event", to_millis(when), True))

    def set_processing_timer(self, when: Any) -> None:
        """Call on_timer when the wall clock reaches `when`."""
        self._timers.append(("processing", to_millis(when), True))

    def delete_event_timer(self, when: Any) -> None:
        self._timers.append(("event", to_millis(when), False))

    def delete_processing_timer(self, when: Any) -> None:
        self._timers.append(("processing", to_millis(when), False))

    # --- used by the runtime ---------------------------------------------------------

    def wrote_state(self) -> bool:
        """Whether the call assigned `state` (a TTL counts from it)."""
        return self._state is not _UNSET

    def discard(self) -> None:
        """The call raised: nothing it did takes effect."""
        self._state, self._timers, self._emitted = _UNSET, [], []

    def close(self) -> None:
        """The call returned: apply its state, timers and outputs."""
        op, key = self._op, self.key
        ks = self._ks
        if self._state is not _UNSET or self._timers:
            if ks is None:
                ks = KeyState()
            if self._state is not _UNSET:
                ks.value = self._state
            for clock, t, add in self._timers:
                timers = ks.event_timers if clock == "event" else ks.processing_timers
                if add:
                    if t not in timers:
                        timers.add(t)
                        op.register(key, t, clock)
                else:
                    timers.discard(t)
            if ks.empty():
                op.state.pop(key, None)
            else:
                op.state[key] = ks
        t = self._out_time if self._out_time is not None else 0
        for output in self._emitted:
            self._out.add(key, output, t)
