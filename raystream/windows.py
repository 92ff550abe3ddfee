"""Windows on a keyed stream: what a window step groups, and what it emits.

    per_hour = (usage.key_by("by_customer", lambda u: u["customer"], value=lambda u: u["amount"])
                .window(rs.windows.Tumbling(timedelta(hours=1)), allowed_lateness=timedelta(minutes=5))
                .reduce("hourly", operator.add))
    per_hour.sink("invoices", sink)          # (customer, WindowResult(start, end, total, update))
    per_hour.late.sink("corrections", sink2)  # (customer, amount) too late for its window

Assigners: `Tumbling` (fixed, non-overlapping; by event time, or by processing time with
`clock="processing"`), `Sliding` (fixed size, a new window every `slide`) and `Session`
(a key's records closer than `gap` to each other). Windows are half-open, [start, end),
and aligned to the epoch (plus `offset`). Over Arrow only, `Lifetime`: windows the rows
themselves open, from a row's time to the end it carries (an auction's lifetime).

A window fires when the watermark passes its end. With `allowed_lateness` it is kept
that much longer: a record arriving in that time updates it and the result is emitted
again with `update=True`. A record later than that goes to the step's `late` stream.

On a stream keyed by columns the same assigners window Arrow rows:
`.window(assigner).aggregate(id, n=rs.aggregates.count())` and `keyed.join(id, other,
assigner)` emit Arrow batches (docs/guide/columnar.md).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from raystream.errors import JobDefinitionError
from raystream.event_time import duration_ms, from_millis

__all__ = ["Aggregator", "Lifetime", "Session", "Sliding", "Tumbling", "Window", "WindowResult"]


class Window(NamedTuple):
    """The [start, end) of one window."""

    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class WindowResult:
    """What a window step emits per key and window: `(key, WindowResult(...))`. `update` is
    True when a late record (within the allowed lateness) changed a window that had fired."""

    start: dt.datetime
    end: dt.datetime
    value: Any
    update: bool = False

    @property
    def window(self) -> Window:
        return Window(self.start, self.end)


def window_of(bounds: tuple[int, int]) -> Window:
    return Window(from_millis(bounds[0]), from_millis(bounds[1]))


@dataclass(frozen=True)
class Aggregator:
    """An incremental aggregation, as in Flink's AggregateFunction: `create()` a new
    accumulator, `add(acc, value) -> acc`, `merge(acc1, acc2) -> acc` (session windows
    merge), and `result(acc)` the value emitted."""

    create: Callable[[], Any]
    add: Callable[[Any, Any], Any]
    merge: Callable[[Any, Any], Any]
    result: Callable[[Any], Any] = lambda acc: acc


class Assigner:
    """Base of the window assigners. The runtime calls `assign(t)` with milliseconds."""

    clock = "event"
    merging = False
    opened_by_rows = False  # Lifetime: rows of the stream open the windows

    def check(self, step_id: str) -> None:
        """Raise JobDefinitionError naming `step_id` when the assigner's settings are invalid."""

    def assign(self, t: int) -> list[tuple[int, int]]:
        raise NotImplementedError


def _ms(step_id: str, what: str, value: Any, *, allow_zero: bool = False) -> int:
    return duration_ms(value, f"step {step_id!r}: {what}", allow_zero=allow_zero)


@dataclass(frozen=True)
class Tumbling(Assigner):
    """Fixed windows of `size`, one after another. `clock="processing"`: by the time a
    record reaches the step rather than its event time (no watermark, no lateness; after
    a recovery, replayed records count in the windows open then)."""

    size: float | dt.timedelta
    offset: float | dt.timedelta = 0
    clock: str = "event"

    def check(self, step_id: str) -> None:
        size = _ms(step_id, "the window size", self.size)
        offset = _ms(step_id, "the window offset", self.offset, allow_zero=True)
        if offset >= size:
            raise JobDefinitionError(f"step {step_id!r}: the window offset must be smaller than its size")
        if self.clock not in ("event", "processing"):
            raise JobDefinitionError(f"step {step_id!r}: clock must be 'event' or 'processing'; got {self.clock!r}")
        object.__setattr__(self, "_size", size)
        object.__setattr__(self, "_offset", offset)

    def assign(self, t: int) -> list[tuple[int, int]]:
        start = t - (t - self._offset) % self._size
        return [(start, start + self._size)]


@dataclass(frozen=True)
class Sliding(Assigner):
    """Windows of `size` starting every `slide`: a record is in size/slide of them."""

    size: float | dt.timedelta
    slide: float | dt.timedelta
    offset: float | dt.timedelta = 0

    def check(self, step_id: str) -> None:
        size = _ms(step_id, "the window size", self.size)
        slide = _ms(step_id, "the window slide", self.slide)
        offset = _ms(step_id, "the window offset", self.offset, allow_zero=True)
        if slide > size:
            raise JobDefinitionError(
                f"step {step_id!r}: the window slide ({slide / 1000:g}s) is larger than its size ({size / 1000:g}s), "
                "so records between windows would belong to none; use a slide up to the size")
        if offset >= slide:
            raise JobDefinitionError(f"step {step_id!r}: the window offset must be smaller than its slide")
        object.__setattr__(self, "_size", size)
        object.__setattr__(self, "_slide", slide)
        object.__setattr__(self, "_offset", offset)

    def assign(self, t: int) -> list[tuple[int, int]]:
        size, slide = self._size, self._slide
        start = t - (t - self._offset) % slide
        out = []
        while start > t - size:
            out.append((start, start + size))
            start -= slide
        return out


@dataclass(frozen=True)
class Session(Assigner):
    """A key's records at most `gap` apart share a window, from the first record's time
    to the last's plus `gap`: each record opens `[t, t + gap)`, and windows that overlap
    or touch merge (as in Flink), so two records exactly `gap` apart are one session."""

    gap: float | dt.timedelta
    merging = True

    def check(self, step_id: str) -> None:
        object.__setattr__(self, "_gap", _ms(step_id, "the session gap", self.gap))

    def assign(self, t: int) -> list[tuple[int, int]]:
        return [(t, t + self._gap)]


@dataclass(frozen=True)
class Lifetime(Assigner):
    """Windows that rows open, over Arrow (`.window(Lifetime("expires")).aggregate(...)`
    on a stream keyed by columns): a row whose column `end` is set (milliseconds since
    the epoch, or a timestamp) opens a window of its key from its own event time to
    `end`, both included, so [t, end + 1) in the half-open terms of the other windows.
    A row goes to the windows of its key open when it comes that hold its time (the one
    it opens included); a row in none waits for the first window of its key opened later
    that holds it, until the watermark passes its time (plus the allowed lateness): such
    a window opens at or before that time, so it comes before the watermark passes it.
    Then the row is dropped, or, if it came that late, goes to the late output. The
    window fires when the watermark reaches `end` (docs/guide/columnar.md, "Windows the
    rows open")."""

    end: str
    opened_by_rows = True  # a row's time alone does not give its windows

    def check(self, step_id: str) -> None:
        if not isinstance(self.end, str) or not self.end:
            raise JobDefinitionError(f"step {step_id!r}: Lifetime(end) takes the name of the column that holds "
                                     f"each window's end; got {self.end!r}")

    def assign(self, t: int) -> list[tuple[int, int]]:
        raise JobDefinitionError("Lifetime windows are opened by Arrow rows; key a stream of Arrow rows by columns "
                                 "and aggregate with rs.aggregates")


@dataclass(frozen=True)
class ArrowJoin:
    """A window join of two streams keyed by columns: each side's key columns, and the
    suffixes a column gets when its name is taken (raystream.windows.join_column_names)."""

    left_keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    suffixes: tuple[str, str] = ("_left", "_right")


#: The columns a columnar window step adds after the key columns.
WINDOW_COLUMNS = ("window_start", "window_end")


def join_column_names(left: Sequence[str], right: Sequence[str], left_keys: Sequence[str],
                      right_keys: Sequence[str], suffixes: tuple[str, str]
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (input column, output column) pairs of each side of a columnar window join,
    after the key columns (the left side's names) and window_start, window_end. A side's
    key columns are the key, so only the left's appear; a column whose name the other
    side, a key column or a window column also has gets its side's suffix. Raises
    ValueError when names still clash."""
    left_rest = [c for c in left if c not in left_keys]
    right_rest = [c for c in right if c not in right_keys]
    taken = set(left_keys) | set(WINDOW_COLUMNS)
    sides = []
    for mine, other, suffix in ((left_rest, right_rest, suffixes[0]), (right_rest, left_rest, suffixes[1])):
        sides.append([(c, c + suffix if c in taken or c in other else c) for c in mine])
    names = list(left_keys) + list(WINDOW_COLUMNS) + [out for side in sides for _, out in side]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"the join's output would have the columns {', '.join(clashes)} twice; rename them "
                         "with a select before the join, or give other suffixes")
    return sides[0], sides[1]
