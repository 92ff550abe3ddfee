"""Event time: when each record happened, and the watermark that says how far that time
has progressed (docs/event_time.md).

    bids = job.source("bids", source, event_time=rs.EventTime(lambda b: b["time"], max_delay=5))

A timestamp is a timezone-aware `datetime`, or a number of seconds since the epoch
(1970-01-01 UTC); raystream keeps it in milliseconds. Durations are a `timedelta` or a
number of seconds.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Callable

from raystream.errors import JobDefinitionError

__all__ = ["EventTime", "duration_ms", "from_millis", "to_millis"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_UTC = dt.timezone.utc


def to_millis(value: Any) -> int:
    """A timestamp (aware datetime, or seconds since the epoch) in milliseconds.

    Raises TypeError for anything else, saying what a timestamp must be."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError(f"the timestamp {value!r} is a naive datetime; give it a timezone "
                            "(datetime.timezone.utc) or return seconds since the epoch")
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"the timestamp {value!r} is not a finite number of seconds")
        return round(value * 1000)
    raise TypeError(f"a timestamp must be a timezone-aware datetime or seconds since the epoch; "
                    f"got {type(value).__name__} {value!r}")


def from_millis(ms: int) -> dt.datetime:
    """Milliseconds since the epoch as a UTC datetime."""
    return _EPOCH + dt.timedelta(milliseconds=ms)


def duration_ms(value: Any, what: str, *, allow_zero: bool = True) -> int:
    """A duration (timedelta or seconds) in milliseconds; JobDefinitionError naming `what`."""
    if isinstance(value, dt.timedelta):
        ms = value // dt.timedelta(milliseconds=1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        ms = round(value * 1000)
    else:
        raise JobDefinitionError(f"{what} must be a timedelta or a number of seconds; got {value!r}")
    if ms < 0 or (ms == 0 and not allow_zero):
        raise JobDefinitionError(f"{what} must be {'at least' if allow_zero else 'more than'} 0; got {value!r}")
    return ms


@dataclass(frozen=True)
class EventTime:
    """A timestamp function and the watermark strategy that follows it.

    - `timestamp_fn(record)`: the record's event time.
    - `max_delay`: bounded out-of-orderness: the watermark trails the newest time seen
      by this much, so a record up to `max_delay` older than the newest is on time.
    - `idle_after`: a partition (or, for a step, a subtask) that has had no records for
      this long stops holding the watermark back until it has records again. None:
      never idle, so an input without data stops windows from firing.
    """

    timestamp_fn: Callable[[Any], Any]
    max_delay: float | dt.timedelta = 0
    idle_after: float | dt.timedelta | None = None

    def __post_init__(self) -> None:
        if not callable(self.timestamp_fn):
            raise JobDefinitionError(f"EventTime: timestamp_fn must be callable; got {self.timestamp_fn!r}")
        duration_ms(self.max_delay, "EventTime max_delay")
        if self.idle_after is not None:
            duration_ms(self.idle_after, "EventTime idle_after", allow_zero=False)

    @property
    def max_delay_ms(self) -> int:
        return duration_ms(self.max_delay, "EventTime max_delay")

    @property
    def idle_after_ms(self) -> int | None:
        return None if self.idle_after is None else duration_ms(self.idle_after, "EventTime idle_after")
