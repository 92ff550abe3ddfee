"""State time-to-live of keyed steps (docs/guide/ttl.md).

    counts = clicks.key_by("by_user", ...).reduce("clicks", operator.add, ttl=dt.timedelta(hours=1))
    seen = events.key_by(...).stateful_map("last", fn, ttl=rs.TTL(600, time="processing"))

A key whose state was not written within the TTL is removed by a timer (the step keeps
only the keys written within the last TTL), and until then a read finds it absent: the
step's function sees it as never written. The clock is the records' event time (the
default: a key expires when the watermark passes its newest write's time plus the TTL)
or the wall clock at the step ("processing").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raystream.errors import JobDefinitionError
from raystream.event_time import duration_ms

__all__ = ["TTL", "lifetime_ms"]

EVENT, PROCESSING = "event", "processing"
MAX_LIFETIME_MS = 1000 * 365 * 86_400_000  # 1,000 years: any longer is a mistake, not a lifetime


def lifetime_ms(value: Any, what: str) -> int:
    """How long state lives (a TTL, a dedup's `within`): a timedelta or seconds, from 1 ms
    to 1,000 years, in milliseconds; JobDefinitionError naming `what` otherwise."""
    ms = duration_ms(value, what)
    if ms < 1:
        raise JobDefinitionError(f"{what} must be at least 1 ms (times are in ms); got {value!r}")
    if ms > MAX_LIFETIME_MS:
        raise JobDefinitionError(f"{what} must be at most 1,000 years; got {value!r}")
    return ms


@dataclass(frozen=True)
class TTL:
    """State time-to-live of a `reduce`, `stateful_map` or `process` step: a key whose
    state was not written for `duration` (a timedelta or seconds) is removed, and reads
    find it absent from then on. `time="event"` measures it in the records' event time
    (the stream needs event time), `"processing"` by the wall clock at the step.
    A step's `ttl=` also takes a duration alone: `ttl=60` is `TTL(60)`, by event time."""

    duration: Any
    time: str = EVENT
    ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.time not in (EVENT, PROCESSING):
            raise JobDefinitionError(f"TTL time must be 'event' or 'processing'; got {self.time!r}")
        object.__setattr__(self, "ms", lifetime_ms(self.duration, "TTL duration"))


def ttl_of(step_id: str, ttl: Any) -> TTL | None:
    """A step's `ttl=` argument as a TTL (None: the state lives until the step deletes it)."""
    if ttl is None or isinstance(ttl, TTL):
        return ttl
    try:
        return TTL(ttl)
    except JobDefinitionError as exc:
        raise JobDefinitionError(f"step {step_id!r}: {exc} (ttl= takes a timedelta, seconds or rs.TTL)") from None
