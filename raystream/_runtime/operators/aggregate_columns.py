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

The aggregates and how each folds into its columns are in operators/column_folds.py.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.column_folds import (KINDS, Refused, RepeatedKeys, Running, numbers, numeric_kind,
                                                       vectorized_folds)

if TYPE_CHECKING:  # aggregate.py imports this module
    from raystream._runtime.operators.aggregate import Folds, Groups


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
            self.running.append(KINDS[type(agg)](dtype, result_type, [types[i] for i in slot]))
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
