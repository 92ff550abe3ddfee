"""Aggregates for `KeyedStream.aggregate`: running values per key over Arrow batches.

    import raystream as rs
    from raystream import aggregates as agg

    (bids.key_by("by_auction", "auction")
        .aggregate("stats", bids=agg.count(), total=agg.sum("price"), top=agg.max("price")))

Per batch, Arrow computes each aggregate's partials for every key of the batch at once
(`pyarrow.Table.group_by(keys).aggregate(...)`); then, per distinct key, `merge` folds
the partials into the key's running state, in Python. So Python runs once per key and
batch, not once per row. The built-ins over integer and float columns are folded with
numpy instead, all keys of a batch at once, to the same values (docs/guide/columnar.md). Nulls in a value column are skipped, as in SQL: `sum` of only
nulls is None, `count("col")` counts the values that are not null, `count()` counts rows.

Your own aggregate subclasses `Aggregate`: `partials` names the Arrow hash aggregations
it needs (ones whose per-batch results can be merged: "sum", "min", "max", "count",
"count_all", "first", "last", "any", "all", "product", ...), `merge` folds them into the
state, `result` makes the value emitted. The state is part of every checkpoint: keep it
small, and made of plain values (numbers, strings, tuples) that pickle anywhere.

    class Spread(agg.Aggregate):
        '''max - min of a column'''
        def __init__(self, column):
            self.column = column
        def partials(self):
            return [agg.Partial("min", self.column), agg.Partial("max", self.column)]
        def merge(self, state, partials):
            lo, hi = partials
            if lo is None:                      # only nulls for this key in this batch
                return state
            return (lo, hi) if state is None else (min(state[0], lo), max(state[1], hi))
        def result(self, state):
            return None if state is None else state[1] - state[0]
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

__all__ = ["Aggregate", "Partial", "count", "first", "last", "max", "mean", "min", "sum"]


@dataclass(frozen=True)
class Partial:
    """One aggregation Arrow computes per key of each batch: the pyarrow hash aggregate
    `function` ("sum", "min", "count", ...) of `column` (None for "count_all", which
    counts rows), with `options` (a `pyarrow.compute.FunctionOptions`, or None for its
    defaults, which skip nulls)."""

    function: str
    column: str | None = None
    options: Any = None


class Aggregate:
    """A running aggregation per key. Subclasses give `partials` and one of `merge` (per
    key: simple) or `merge_all` (per batch: a list comprehension over all keys, faster);
    `create`, `result` and `result_type` have defaults."""

    def partials(self) -> list[Partial]:
        """What Arrow computes per key and batch for this aggregate."""
        raise NotImplementedError

    def create(self) -> Any:
        """The state of a key before its first batch. The new keys of a batch share one
        (it is made once per batch): `merge` returns new states, never changes one."""
        return None

    def merge(self, state: Any, partials: Sequence[Any]) -> Any:
        """The new state of a key: `state` with the values of `partials()` for that key in
        one batch folded in (None where Arrow gave null). Return a new state; do not
        change `state` in place."""
        return self.merge_all([state], [[p] for p in partials])[0]

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        """`merge` for every key of a batch: `states[i]` is key i's state and
        `partials[j][i]` its value of the j-th partial."""
        merge = self.merge
        return [merge(state, row) for state, row in zip(states, zip(*partials))]

    def combine(self, state: Any, other: Any) -> Any:
        """The state of two groups as one: session windows that a row bridges merge, and
        so do their states (`state` is the earlier window's). Needed only in session
        windows; first and last have none, since a state does not keep arrival order."""
        raise NotImplementedError(f"{type(self).__name__} cannot combine two states (session windows need it)")

    def result(self, state: Any) -> Any:
        """The value emitted for a state (by default the state itself)."""
        return state

    def result_type(self, partial_types: Sequence[pa.DataType]) -> pa.DataType:
        """The Arrow type of the emitted column, from the types of the partials' columns
        (by default the first partial's)."""
        return partial_types[0]

    def columns(self) -> list[str]:
        """The value columns it reads."""
        return [p.column for p in self.partials() if p.column is not None]

    def __repr__(self) -> str:
        fields = ", ".join(repr(v) for v in vars(self).values() if v is not None)
        return f"{type(self).__name__.lower()}({fields})"


class _OfColumn(Aggregate):
    """A built-in over one column: one partial, `function` of the column."""

    function = ""

    def __init__(self, column: str | None):
        self.column = column

    def partials(self) -> list[Partial]:
        return [Partial(self.function, self.column)]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(vars(self).values())))


class Count(_OfColumn):
    """Rows (`count()`), or values that are not null (`count(column)`)."""

    def __init__(self, column: str | None = None):
        super().__init__(column)

    @property
    def function(self) -> str:  # type: ignore[override]
        return "count_all" if self.column is None else "count"

    def create(self) -> int:
        return 0

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return list(map(operator.add, states, partials[0]))

    def combine(self, state: Any, other: Any) -> Any:
        return state + other

    def result_type(self, partial_types: Sequence[pa.DataType]) -> pa.DataType:
        return pa.int64()


# Each built-in merges with one comprehension over the keys of a batch; a null partial
# (the key had only nulls in the batch) leaves the state as it was.


class Sum(_OfColumn):
    """The sum of the values that are not null; None while there is none."""

    function = "sum"

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if p is None else p if s is None else s + p for s, p in zip(states, partials[0])]

    def combine(self, state: Any, other: Any) -> Any:
        return self.merge_all([state], [[other]])[0]


class Min(_OfColumn):
    """The least value that is not null; None while there is none."""

    function = "min"

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        # s != s: a NaN state gives way to any value (Arrow skips NaN within a batch)
        return [s if p is None else p if s is None or p < s or s != s else s for s, p in zip(states, partials[0])]

    def combine(self, state: Any, other: Any) -> Any:
        return self.merge_all([state], [[other]])[0]


class Max(_OfColumn):
    """The greatest value that is not null; None while there is none."""

    function = "max"

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if p is None else p if s is None or p > s or s != s else s for s, p in zip(states, partials[0])]

    def combine(self, state: Any, other: Any) -> Any:
        return self.merge_all([state], [[other]])[0]


class First(_OfColumn):
    """The first value that is not null, in the order rows arrived; None while there is none."""

    function = "first"

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [p if s is None else s for s, p in zip(states, partials[0])]


class Last(_OfColumn):
    """The last value that is not null, in the order rows arrived; None while there is none."""

    function = "last"

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if p is None else p for s, p in zip(states, partials[0])]


class Mean(_OfColumn):
    """The mean of the values that are not null (a float); None while there is none. The
    state is (sum, count), so ints are summed exactly."""

    def partials(self) -> list[Partial]:
        return [Partial("sum", self.column), Partial("count", self.column)]

    def create(self) -> tuple[Any, int]:
        return (0, 0)

    def merge_all(self, states: list[Any], partials: list[list[Any]]) -> list[Any]:
        return [s if not n else (s[0] + t, s[1] + n) for s, t, n in zip(states, *partials)]

    def combine(self, state: Any, other: Any) -> Any:
        return (state[0] + other[0], state[1] + other[1])

    def result(self, state: tuple[Any, int]) -> float | None:
        return float(state[0]) / state[1] if state[1] else None  # float(): a decimal column's sum is a Decimal

    def result_type(self, partial_types: Sequence[pa.DataType]) -> pa.DataType:
        return pa.float64()


def count(column: str | None = None) -> Aggregate:
    """Rows per key (`count()`), or values that are not null (`count("price")`)."""
    return Count(column)


def sum(column: str) -> Aggregate:  # noqa: A001 (aggregates.sum reads as the SQL it is)
    """Running sum of `column` per key, nulls skipped."""
    return Sum(column)


def min(column: str) -> Aggregate:  # noqa: A001
    """Running minimum of `column` per key, nulls skipped."""
    return Min(column)


def max(column: str) -> Aggregate:  # noqa: A001
    """Running maximum of `column` per key, nulls skipped."""
    return Max(column)


def mean(column: str) -> Aggregate:
    """Running mean of `column` per key (float64), nulls skipped."""
    return Mean(column)


def first(column: str) -> Aggregate:
    """The first value of `column` per key that is not null."""
    return First(column)


def last(column: str) -> Aggregate:
    """The latest value of `column` per key that is not null."""
    return Last(column)
