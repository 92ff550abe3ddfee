"""Event time: when each record happened, and the watermark that says how far that time
has progressed (docs/event_time.md).

    bids = job.source("bids", source, event_time=rs.EventTime(lambda b: b["time"], max_delay=5))
    bids = job.source("bids", arrow_source, event_time=rs.EventTime.column("date_time", unit="ms", max_delay=5))

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

__all__ = ["ColumnTime", "EventTime", "duration_ms", "from_millis", "to_millis"]

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


#: Milliseconds per unit of a time column (an integer unit divides exactly, with floor).
UNITS: dict[str, float] = {"s": 1000, "ms": 1, "us": 1e-3, "ns": 1e-6}
_DIVISORS = {"us": 1000, "ns": 1_000_000}


@dataclass(frozen=True)
class ColumnTime:
    """The timestamp function of `EventTime.column(column, unit=...)`: a record's time is
    its field `column`, a number in `unit` ("s", "ms", "us", "ns") since the epoch or a
    datetime (a naive one is UTC, as Arrow's timestamps without a time zone are).

    On Arrow batches the runtime reads the column whole (vectorized); on other records it
    calls this per record, reading `record[column]` of a dict, else the attribute (a
    namedtuple's field). `millis` gives the same milliseconds either way: integers are
    scaled exactly (floor for "us" and "ns", as a datetime's microseconds are), floats
    rounded half to even, as `to_millis` does."""

    column: str
    unit: str = "ms"

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise JobDefinitionError(f"EventTime.column: the column must be a column name; got {self.column!r}")
        if self.unit not in UNITS:
            raise JobDefinitionError(f"EventTime.column({self.column!r}): unit must be one of "
                                     f"{', '.join(UNITS)} (of a number since the epoch); got {self.unit!r}")

    def __call__(self, record: Any) -> dt.datetime:
        return from_millis(self.of_record(record))

    def of_record(self, record: Any) -> int:
        """The record's time in milliseconds; TypeError or KeyError when it has none."""
        value = record[self.column] if isinstance(record, dict) else getattr(record, self.column)
        return self.millis(value)

    def millis(self, value: Any) -> int:
        """One value of the column in milliseconds."""
        if isinstance(value, dt.datetime):
            return to_millis(value if value.tzinfo is not None else value.replace(tzinfo=_UTC))
        if isinstance(value, int) and not isinstance(value, bool):
            divisor = _DIVISORS.get(self.unit)
            return value // divisor if divisor else value * int(UNITS[self.unit])
        if isinstance(value, float) and math.isfinite(value):
            return round(value * UNITS[self.unit])
        raise TypeError(f"the event time column {self.column!r} holds {type(value).__name__} {value!r}; it takes "
                        f"numbers in {self.unit} since the epoch or datetimes")


@dataclass(frozen=True)
class EventTime:
    """A timestamp function and the watermark strategy that follows it.

    - `timestamp_fn(record)`: the record's event time.
    - `max_delay`: bounded out-of-orderness: the watermark trails the newest time seen
      by this much, so a record up to `max_delay` older than the newest is on time.
    - `idle_after`: a partition whose polls have found no records for this long (or, for
      a step, a subtask that has had none for this long) stops holding the watermark back
      until it has records again. None:
      never idle, so an input without data stops windows from firing.

    `EventTime.column(name, unit="ms", ...)` reads the time from a column instead of a
    function: vectorized over Arrow batches (no Python per row), by field on other records.
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

    @classmethod
    def column(cls, name: str, *, unit: str = "ms", max_delay: float | dt.timedelta = 0,
               idle_after: float | dt.timedelta | None = None) -> "EventTime":
        """Event time from the column `name`: integers (or floats) in `unit` ("s", "ms",
        "us", "ns") since the epoch, or an Arrow timestamp column (its own unit; no time
        zone is UTC). Watermarks, idleness and lateness are those of `EventTime(fn, ...)`."""
        return cls(ColumnTime(name, unit), max_delay=max_delay, idle_after=idle_after)

    @property
    def time_column(self) -> ColumnTime | None:
        """The column the time is read from (`EventTime.column`), or None for a function."""
        return self.timestamp_fn if isinstance(self.timestamp_fn, ColumnTime) else None

    @property
    def max_delay_ms(self) -> int:
        return duration_ms(self.max_delay, "EventTime max_delay")

    @property
    def idle_after_ms(self) -> int | None:
        return None if self.idle_after is None else duration_ms(self.idle_after, "EventTime idle_after")
