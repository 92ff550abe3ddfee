"""The running state of the `aggregate` step held in numpy columns, one slot per key
(docs/guide/columnar.md, "What runs per record, per key, per batch").

The per-key layout (operators/aggregate_op.py) keeps `{key: (state of each aggregate)}`
and folds a batch's partials into it in Python, several times per distinct key. Here
each key has a slot (a row), given by a dict `key -> slot` looked up for all of a
batch's keys at once (`map(dict.get)`, in C), and each aggregate keeps two numpy
columns over the slots. A batch's partials (the same Arrow group-by as the per-key
layout, or, when every row has a key of its own, the rows themselves:
`Folds.rows_as_groups`) are folded in with numpy at the batch's slots, and the output
columns are made from the new values: no Python per key beyond the dict lookup.

It holds the built-in aggregates (count, sum, min, max, first, last, mean, with their
default partials) over numbers whose numpy fold is exactly Python's, decided by the
partials' types of the first batch (`numeric_kind`): integers, held as int64, and
floats, held as float64; every batch must then bring partials of those same types. The
columns of each aggregate (`a`, `b` below) hold:

| aggregate | a | b | the per-key state |
|---|---|---|---|
| count | the count | - | the count |
| sum, min, max, first, last | the value | whether there is one | the value, None while there is none |
| mean | the sum | the count | (sum, count); (0, 0) while the count is 0 |

Invariants, relied on by the code below and checked by the tests:

- V1 the slots are 0..len(keys)-1, in the order keys first came (in their batch's
  groups' order); `index[keys[s]] == s`;
  keys are never removed (an aggregate deletes nothing).
- V2 every column slot at or past len(keys) holds a new key's state (all zeros): a new
  key's slot needs no initialisation, and growing the columns adds such slots.
- V3 a batch changes nothing until it commits: `fold` computes the new values of the
  batch's slots and the output, `Fold.commit` stores them. A batch that fails leaves the
  state as it was.
- V4 `as_dict()` is the per-key layout's state exactly, value types included (ints as
  int, floats as float, None, mean's (0, 0)), so snapshots, incremental snapshots (I1,
  through `dirty`), rescaling and restores see what the per-key layout would hold.
- V5 anything this layout cannot fold exactly (an int sum that passes int64, partials
  of other types) is refused before anything changes (`fold` returns None); the caller
  then moves the state to the per-key layout for good. Two groups of one key (rows
  taken as groups of their own that were not; keys Python holds equal that Arrow
  grouped apart) raise RepeatedKeys, also before anything changes.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np
import pyarrow as pa

from raystream.aggregates import Count, First, Last, Max, Mean, Min, Sum

if TYPE_CHECKING:  # aggregate.py imports this module
    from raystream._runtime.operators.aggregate import Folds, Groups


def vectorized_folds(folds: Folds) -> bool:
    """Whether the aggregates can be held in columns: built-in count, sum, min, max,
    first, last and mean (exactly those classes), with their default partials."""
    return bool(folds.aggregates) and all(type(agg) in _KINDS for agg in folds.aggregates) \
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


# --- one aggregate's columns --------------------------------------------------------------


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
    """min(column): Python's `s if p is None else p if s is None or p < s else s`."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        taken = ~b | (p.values < a)  # NaN compares false, as in Python
        if not p.all_valid:
            taken &= p.valid
        return np.where(taken, p.values, a), b | p.valid


class Greatest(Running):
    """max(column): as min, with >."""

    def fold(self, a: np.ndarray, b: np.ndarray, partials: list[Numbers]) -> tuple[np.ndarray, np.ndarray]:
        p = partials[0]
        taken = ~b | (p.values > a)
        if not p.all_valid:
            taken &= p.valid
        return np.where(taken, p.values, a), b | p.valid


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


_KINDS: dict[type, type[Running]] = {Count: Counted, Sum: Summed, Min: Least, Max: Greatest, First: Earliest,
                                     Last: Latest, Mean: Averaged}


# --- all of a step's state ----------------------------------------------------------------


@dataclass
class Fold:
    """A batch folded but not committed (V3): the output columns, and what stores it."""

    results: list[pa.Array]
    commit: Callable[[], None]


class AggregateColumns:
    """The state of every key of an `aggregate` step in columns (see the module)."""

    def __init__(self, folds: Folds, types: list[pa.DataType]):
        """Empty, for batches whose partials have `types` (`fits` said they can)."""
        self.folds = folds
        self.types = list(types)
        self.dtypes = [numeric_kind(p.function, t) for p, t in zip(folds.partials, types)]
        result_types = folds.result_types(types)
        self.running: list[Running] = []
        for agg, slot, result_type in zip(folds.aggregates, folds.slots, result_types):
            dtype = self.dtypes[slot[0]]  # mean: its sum's
            self.running.append(_KINDS[type(agg)](dtype, result_type, [types[i] for i in slot]))
        self.index: dict[Hashable, int] = {}  # V1
        self.keys: list[Hashable] = []  # V1: the key of each slot
        self.dirty = np.zeros(0, dtype=bool)  # I1: the slots changed since the last snapshot
        self._owner = np.zeros(0, dtype=np.int64)  # scratch: duplicate slots in a batch

    @staticmethod
    def fits(folds: Folds, types: Sequence[pa.DataType]) -> bool:
        """Whether batches with partials of `types` can be held in columns."""
        return vectorized_folds(folds) and all(
            numeric_kind(p.function, t) is not None for p, t in zip(folds.partials, types))

    def __len__(self) -> int:
        return len(self.keys)

    def _grow(self, size: int) -> None:
        capacity = len(self.dirty)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 1024)
        for running in self.running:
            running.grow(capacity)
        for name in ("dirty", "_owner"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    # --- a batch ------------------------------------------------------------------------

    def fold(self, groups: Groups, keys: list[Hashable]) -> Fold | None:
        """The batch's partials (one group per key `keys[i]`) folded into the keys' states,
        not committed (V3); None if this layout cannot fold the batch exactly (V5), and
        RepeatedKeys if two groups are one key (nothing changed either way)."""
        if groups.partial_types() != self.types:
            return None
        try:
            slots, fresh = self._slots(keys)
            partials = [numbers(c, dtype, i in groups.exact)
                        for i, (c, dtype) in enumerate(zip(groups.partials, self.dtypes))]
            with np.errstate(all="ignore"):  # inf - inf is NaN without a word, as in Python
                new = [running.fold(running.a[slots], running.b[slots], [partials[i] for i in slot])
                       for running, slot in zip(self.running, self.folds.slots)]
                results = [running.output(a, b) for running, (a, b) in zip(self.running, new)]
        except RepeatedKeys:
            raise
        except Refused:
            return None

        def commit() -> None:
            if fresh:
                self.index.update(zip(fresh, range(len(self.keys), len(self.keys) + len(fresh))))
                self.keys.extend(fresh)
            for running, (a, b) in zip(self.running, new):
                running.a[slots] = a
                running.b[slots] = b
            self.dirty[slots] = True

        return Fold(results, commit)

    def _slots(self, keys: list[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
        """The slot of each key, and the keys new to the state (their slots follow the last
        one). Refused if two keys are one slot: keys Python holds equal in two groups."""
        slots = np.fromiter(map(self.index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys))
        new = slots < 0
        fresh: list[Hashable] = []
        if new.any():
            fresh = list(itertools.compress(keys, new.tolist()))
            if len(set(fresh)) < len(fresh):
                raise RepeatedKeys("a key in two groups")
            slots[new] = np.arange(len(self.keys), len(self.keys) + len(fresh))
        self._grow(len(self.keys) + len(fresh))
        order = np.arange(len(keys), dtype=np.int64)
        self._owner[slots] = order
        if (self._owner[slots] != order).any():  # a slot twice: its last group owns it
            raise RepeatedKeys("a key in two groups")
        return slots, fresh

    # --- the per-key layout ---------------------------------------------------------------

    def _python(self, slots: np.ndarray | slice) -> list[tuple[Any, ...]]:
        """The per-key state of each slot of `slots` (V4)."""
        columns = [running.python(running.a[slots], running.b[slots]) for running in self.running]
        return list(zip(*columns))

    def as_dict(self) -> dict[Any, Any]:
        """The state in the per-key layout, `{key: (state of each aggregate)}` (V4), made
        anew when read (a full snapshot reads it once): kept, it would double the state's
        memory until the next batch, for good in a subtask that goes quiet."""
        return dict(zip(self.keys, self._python(slice(0, len(self.keys)))))

    def changed_state(self) -> dict[Any, Any]:
        """The per-key state of the keys changed since `clear_changed` (I1)."""
        slots = np.flatnonzero(self.dirty[:len(self.keys)])
        return dict(zip(map(self.keys.__getitem__, slots.tolist()), self._python(slots)))

    def changed_keys(self) -> set[Hashable]:
        return set(map(self.keys.__getitem__, np.flatnonzero(self.dirty[:len(self.keys)]).tolist()))

    def clear_changed(self) -> None:
        self.dirty[:] = False

    def mark_changed(self, keys: list[Hashable]) -> None:
        """Mark `keys` (held) changed (I1)."""
        self.dirty[np.fromiter(map(self.index.__getitem__, keys), dtype=np.int64, count=len(keys))] = True

    def load(self, state: dict[Any, Any]) -> None:
        """Take the per-key state `state` (restored) into the (empty) columns; Refused,
        with nothing changed, if a state is not one this layout would make."""
        keys = list(state)
        values = list(state.values())
        n = len(self.running)
        if any(type(v) is not tuple or len(v) != n for v in values):
            raise Refused("a state that is not a tuple of the aggregates' states")
        loaded = [running.load([v[j] for v in values]) for j, running in enumerate(self.running)]
        self._grow(len(keys))
        for running, (a, b) in zip(self.running, loaded):
            running.a[:len(keys)] = a
            running.b[:len(keys)] = b
        self.keys = keys
        self.index = dict(zip(keys, range(len(keys))))
        if len(self.index) != len(keys):  # cannot be: the keys of a dict
            raise Refused("duplicate keys")
