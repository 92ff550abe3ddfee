"""How each built-in aggregate of the `aggregate` step folds a batch's partials into
numpy columns (operators/aggregate_columns.py holds the columns of a step's keys).

The columns hold the built-in aggregates (count, sum, min, max, first, last, mean, with their
default partials) over numbers whose numpy fold is exactly Python's, decided by the
partials' types of the first batch (`numeric_kind`): integers, held as int64, and
floats, held as float64; every batch must then bring partials of those same types. The
columns of each aggregate (`a`, `b` below) hold:

| aggregate | a | b | the per-key state |
|---|---|---|---|
| count | the count | - | the count |
| sum, min, max, first, last | the value | whether there is one | the value, None while there is none |
| mean | the sum | the count | (sum, count); (0, 0) while the count is 0 |

Invariant V5 of operators/aggregate_columns.py holds here: what these columns cannot fold
exactly is `Refused` before anything changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raystream.aggregates import Count, First, Last, Max, Mean, Min, Sum

if TYPE_CHECKING:  # aggregate.py imports this module (through aggregate_columns.py)
    from raystream._runtime.operators.aggregate import Folds


def vectorized_folds(folds: Folds) -> bool:
    """Whether the aggregates can be held in columns: built-in count, sum, min, max,
    first, last and mean (exactly those classes), with their default partials."""
    return bool(folds.aggregates) and all(type(agg) in KINDS for agg in folds.aggregates) \
        and all(p.options is None for p in folds.partials)


def numeric_kind(function: str, kind: pa.DataType) -> type | None:
    """The numpy type a partial of `function` and Arrow type `kind` is held in here
    (np.int64 or np.float64), or None when this layout does not hold it. Integers of at
    most 32 bits unsigned or 64 bits signed fit int64 whole; a sum of unsigned ints is
    uint64 in Arrow, held while it stays below 2**63 (V5)."""
    if function in ("count", "count_all"):
        return np.int64 if kind == pa.int64() else None
    if pa.types.is_floating(kind):
        return np.float64 if kind in (pa.float32(), pa.float64()) else None
    if pa.types.is_integer(kind):
        if kind == pa.uint64() and function != "sum":
            return None
        return np.int64
    return None


class Refused(Exception):
    """The batch cannot be folded here exactly (V5); nothing changed."""


class RepeatedKeys(Refused):
    """Two groups of the batch are one key (V5); nothing changed. After a batch whose rows
    were taken as groups of their own (`Folds.rows_as_groups`): group the batch instead."""


@dataclass
class Numbers:
    """One partial of a batch, a value per group: nulls as 0, and which are valid."""

    values: np.ndarray  # int64 or float64
    valid: np.ndarray  # bool
    all_valid: bool  # no null: the folds skip their masks (fewer numpy calls per batch)


def numbers(column: pa.ChunkedArray | pa.Array, dtype: type, exact: bool) -> Numbers:
    """A partial column as numbers of `dtype`. `exact`: a sum Arrow computed as decimals
    (the batch's sum could pass int64): as int64 if every value fits, else Refused."""
    if isinstance(column, pa.ChunkedArray):
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    if exact or array.type == pa.uint64():
        try:
            array = array.cast(pa.int64())  # safe: raises where a value does not fit
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise Refused("a sum past int64") from None
    nulls = array.null_count
    if nulls:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        array = array.fill_null(0)
    else:
        valid = np.ones(len(array), dtype=bool)
    return Numbers(array.to_numpy(zero_copy_only=False).astype(dtype, copy=False), valid, not nulls)


def added(x: np.ndarray, y: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """x + y; for ints, Refused if a sum at `where` (default: all) passes int64, where
    Python's ints would go on (numpy's wrap around)."""
    total = x + y
    if total.dtype == np.int64:
        wrapped = ((x ^ total) & (y ^ total)) < 0  # both signs differ from the sum's
        if np.count_nonzero(wrapped if where is None else wrapped & where):
            raise Refused("a sum past int64")
    return total


class Running:
    """One aggregate's state for every slot, in columns `a` and `b` (see the table above)."""

    b_dtype: type = np.bool_

    def __init__(self, dtype: type, result_type: pa.DataType, partial_types: list[pa.DataType]):
        self.dtype = dtype  # of `a`
        self.result_type = result_type  # of the output column
        self.partial_types = partial_types
        self.a = np.zeros(0, dtype=dtype)
        self.b = np.zeros(0, dtype=self.b_dtype)

    def grow(self, capacity: int) -> None:
        """Room for `capacity` slots; the new ones hold a new key's state (V2)."""
        for name in ("a", "b"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        """The new (a, b) of slots whose old ones are (a, b), with a batch's partials folded in."""
        raise NotImplementedError

    def output(self, a: np.ndarray, b: np.ndarray) -> pa.Array:
        """The output column of states (a, b)."""
        column = pa.array(a) if np.count_nonzero(b) == len(b) else pa.array(a, mask=~b)
        return column if column.type == self.result_type else column.cast(self.result_type)

    def python(self, a: np.ndarray, b: np.ndarray) -> list[Any]:
        """The per-key layout's state of each slot (V4)."""
        return pa.array(a, mask=~b).to_pylist()  # ints as int, floats as float, None

    def load(self, states: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Columns holding the per-key states `states`; Refused if a state is not one this
        layout makes (another type, a value its partial's type cannot hold)."""
        valid = [s is not None for s in states]
        values = [0 if s is None else self._checked(s) for s in states]
        return np.array(values, dtype=self.dtype), np.array(valid, dtype=np.bool_)

    def _checked(self, value: Any) -> Any:
        """`value` if the per-key layout could hold it for partials of `partial_types[0]`."""
        return _held(value, self.dtype, self.partial_types[0])


def _held(value: Any, dtype: type, kind: pa.DataType) -> Any:
    if dtype is np.int64:
        if type(value) is not int:  # a bool, a float, a Decimal: not what this layout makes
            raise Refused(f"a state value {value!r}")
        low, high = (0, 2 ** 63 - 1) if pa.types.is_unsigned_integer(kind) else (-2 ** 63, 2 ** 63 - 1)
        if kind.bit_width < 64:
            info = np.iinfo(kind.to_pandas_dtype())
            low, high = int(info.min), int(info.max)
        if not low <= value <= high:
            raise Refused(f"a state value {value!r} out of {kind}")
        return value
    if type(value) is not float:
        raise Refused(f"a state value {value!r}")
    if kind == pa.float32() and not math.isnan(value):
        with np.errstate(over="ignore"):  # a value past float32's range: refused below, silently
            held = float(np.float32(value))
        if held != value:
            raise Refused(f"a state value {value!r}")
    return value


class Counted(Running):
    """count(), count(column): `a` the count."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        return added(a, partials[0].values), b

    def output(self, a: np.ndarray, b: np.ndarray) -> pa.Array:
        return pa.array(a, type=pa.int64())

    def python(self, a: np.ndarray, b: np.ndarray) -> list[Any]:
        return a.tolist()

    def load(self, states: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([_held(s, np.int64, pa.int64()) for s in states], dtype=np.int64), np.zeros(len(states), bool)


class Summed(Running):
    """sum(column): Python's `s if p is None else p if s is None else s + p`."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        if p.all_valid:
            return np.where(b, added(a, p.values, b), p.values), p.valid
        total = added(a, p.values, b & p.valid)
        return np.where(b, np.where(p.valid, total, a), p.values), b | p.valid


class Least(Running):
    """min(column): Python's `s if p is None else p if s is None or p < s or s != s else s`.
    A NaN is skipped as Arrow skips it within a batch: a NaN partial (every value of its
    batch NaN) loses to any state, and a NaN state gives way to any value, so the result
    does not depend on where batches were cut."""

    better = staticmethod(np.less)

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        taken = ~b | self.better(p.values, a)
        if a.dtype.kind == "f":
            taken |= np.isnan(a)
        if not p.all_valid:
            taken &= p.valid
        return np.where(taken, p.values, a), b | p.valid


class Greatest(Least):
    """max(column): as min, with >."""

    better = staticmethod(np.greater)


class Earliest(Running):
    """first(column): Python's `p if s is None else s`."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        return np.where(b, a, p.values), b | p.valid


class Latest(Running):
    """last(column): Python's `s if p is None else p`."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        if p.all_valid:
            return p.values, p.valid
        return np.where(p.valid, p.values, a), b | p.valid


class Averaged(Running):
    """mean(column): `a` the sum, `b` the count (int64); Python's `s if not n else (s[0] +
    t, s[1] + n)` from (0, 0), and `float(s) / n` emitted."""

    b_dtype = np.int64

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        t, n = partials
        some = n.values > 0
        return np.where(some, added(a, t.values, some), a), added(b, n.values)

    def output(self, a: np.ndarray, b: np.ndarray) -> pa.Array:
        none = b == 0
        means = a.astype(np.float64) / np.where(none, 1, b)  # float(int) rounds as Python's does
        return pa.array(means, mask=none, type=pa.float64())

    def python(self, a: np.ndarray, b: np.ndarray) -> list[Any]:
        pairs = list(zip(a.tolist(), b.tolist()))
        for i in np.flatnonzero(b == 0).tolist():
            pairs[i] = (0, 0)  # the state a key keeps until its first value: ints, whatever the column
        return pairs

    def load(self, states: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        sums, counts = [], []
        for s in states:
            if type(s) is not tuple or len(s) != 2 or type(s[1]) is not int or s[1] < 0:
                raise Refused(f"a mean's state {s!r}")
            if s[1] == 0:
                if s[0] != 0 or type(s[0]) is not int:
                    raise Refused(f"a mean's state {s!r}")
                sums.append(0)
            else:
                sums.append(_held(s[0], self.dtype, pa.int64() if self.dtype is np.int64 else pa.float64()))
            counts.append(_held(s[1], np.int64, pa.int64()))
        return np.array(sums, dtype=self.dtype), np.array(counts, dtype=np.int64)


KINDS: dict[type, type[Running]] = {Count: Counted, Sum: Summed, Min: Least, Max: Greatest, First: Earliest,
                                     Last: Latest, Mean: Averaged}
