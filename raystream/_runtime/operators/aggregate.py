"""The `aggregate` step: running aggregates (raystream/aggregates.py) per key over Arrow,
and `Folds`, the aggregates of a step as Arrow partials and Python merges, which the
columnar windows (operators/columnar_windows.py) fold per (key, window) the same way.

Per batch, Arrow computes every aggregate's partials for all keys of the batch at once
(`Table.group_by(key columns).aggregate(...)`, one thread, rows in order, so "first" and
"last" follow arrival). Then the partials are folded into each key's state, and one row
per key of the batch is emitted with the running values: with numpy at each key's slot
when the state is held in columns (operators/aggregate_columns.py: built-in aggregates
over numbers), otherwise in Python once per distinct key (the per-key layout).

The state is keyed state like a reduce's: one value per key (a tuple with one state per
aggregate), seen as the operator's `state` dict under the key the per-record path would
use (a column's Python value, the tuple of several, None for a null); in the per-key
layout it is that dict, and new values are written to `written` for incremental
snapshots (I1); in columns the dict is made when read, and the changed keys are marked
in the columns. So snapshots, restore, rescaling by key group (B4) and metrics are those
of every keyed step, in either layout. A batch that fails leaves the state as it was:
new states are committed only once every key of the batch merged.

With event times, a key's output row takes the newest time among its rows in the batch.
"""
from __future__ import annotations

import builtins
import decimal
import logging
import operator
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._arrow_values import python_values
from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.arrow_keys import distinct_keys, may_split_keys
from raystream._runtime.transport.batch import ArrowKeyed, Times, untimed
from raystream.aggregates import Aggregate, Partial
from raystream._runtime.operators.state_kinds import UNSAID, meta_kind, refused
from raystream.errors import RestoreError

logger = logging.getLogger(__name__)


def _keys_come_first() -> bool:
    """Where Table.group_by puts the key columns: first in recent pyarrow, last before."""
    grouped = pa.table({"k": [1], "v": [1]}).group_by("k", use_threads=False).aggregate([("v", "sum")])
    return grouped.column_names[0] == "k"


_KEYS_FIRST = _keys_come_first()


@dataclass
class Groups:
    """What Arrow computed for the groups of one batch, one row per group: the group-by
    columns, the partials (in the order of `Folds.partials`), then any extra aggregates."""

    keys: list[pa.ChunkedArray]
    partials: list[pa.ChunkedArray]
    extra: list[pa.ChunkedArray]
    # partials summed as decimals (ints that could pass int64), and the type Arrow's sum
    # of their column has (int64, uint64 for unsigned)
    exact: dict[int, pa.DataType] = field(default_factory=dict)

    def python_partials(self) -> list[list[Any]]:
        """Each partial's values as Python values; exact sums as ints again."""
        return [[None if v is None else int(v) for v in c.to_pylist()] if i in self.exact else python_values(c)
                for i, c in enumerate(self.partials)]

    def partial_types(self) -> list[pa.DataType]:
        """The partials' types as the columns they summed would give them."""
        return [self.exact.get(i, c.type) for i, c in enumerate(self.partials)]

    def python_keys(self, n: int) -> list[Any]:
        """The Python key of each group from its first `n` columns: what the per-record
        path's key would be (a value, or the tuple of several)."""
        if n == 1:
            return python_values(self.keys[0])
        return list(zip(*(python_values(c) for c in self.keys[:n])))


def unused_name(names: Sequence[str], name: str) -> str:
    """`name`, with underscores added until no column of `names` has it."""
    while name in names:
        name += "_"
    return name


class Folds:
    """The aggregates of one step: the partials Arrow computes per group (each once,
    however many aggregates ask for it: mean and sum), and the merges that fold them
    into a state per group, a tuple with one state per aggregate."""

    def __init__(self, named: Sequence[tuple[str, Aggregate]]):
        self.names = [name for name, _ in named]
        self.aggregates: list[Aggregate] = [agg for _, agg in named]
        self.partials: list[Partial] = []
        self.slots: list[list[int]] = []  # per aggregate: the indexes of its partials
        for agg in self.aggregates:
            slot = []
            for partial in agg.partials():
                if partial not in self.partials:
                    self.partials.append(partial)
                slot.append(self.partials.index(partial))
            self.slots.append(slot)
        # an aggregate whose result is its state needs no call per group
        self._plain_result = [type(agg).result is Aggregate.result for agg in self.aggregates]
        self._described: list[tuple[str, str, tuple[Any, ...]]] | None = None

    def describe(self) -> list[tuple[str, str, tuple[Any, ...]]]:
        """Per aggregate, stored with the state (`state_meta`): its name, how it reads
        ("sum('price')") and what its state is made of (its class and partials, compared
        on restore)."""
        if self._described is None:  # once: it goes into every snapshot
            self._described = [(name, repr(agg), _state_kind(agg)) for name, agg in zip(self.names, self.aggregates)]
        return self._described

    def check_restored(self, step_id: str, metas: list[Any], op: str) -> None:
        """RestoreError unless the state restored for `step_id` was made by a step of kind
        `op` ("aggregate", "window") with these aggregates, in this order: a state is one
        value per aggregate, by position, and other aggregates would take another's values
        silently. Renaming one is fine. State of a snapshot that does not say (raystream
        before it) is taken as it is; so is a meta of aggregates that names no kind (the
        first form of metas)."""
        now = self.describe()
        for meta in metas:
            kind = meta_kind(meta)
            if kind is None:
                continue
            if kind not in (op, UNSAID):
                raise refused(step_id, meta, f"a columnar {op} step")
            before = meta.get("aggregates")
            if before is None or [k for _, _, k in before] == [k for _, _, k in now]:
                continue
            def listed(described: list[tuple[str, str, Any]]) -> str:
                return ", ".join(f"{name}={text}" for name, text, _ in described) or "none"
            raise RestoreError(
                f"step {step_id!r}: the checkpoint's state was made by the aggregates {listed(before)}, and this "
                f"job's step has {listed(now)}. A key's state holds one value per aggregate, in order, so it cannot "
                "be restored into other aggregates (or the same in another order): restore with the step's original "
                "aggregates, or give the step another id to start it afresh (allow_non_restored_state keeps the old "
                "state out)")

    def columns(self) -> list[str]:
        """The value columns the partials read."""
        return list(dict.fromkeys(p.column for p in self.partials if p.column is not None))

    def fresh(self) -> tuple[Any, ...]:
        """The state of a new group (shared: merges return new states)."""
        return tuple(agg.create() for agg in self.aggregates)

    def group(self, table: pa.Table, by: list[str], extra: Sequence[tuple[Any, ...]] = (), keys: int = 0) -> Groups:
        """Per group of `by` in `table`: the partials, and the `extra` aggregate specs. The
        first `keys` columns of `by` are key columns: rows of one Python key are one group
        even where Arrow would split them (-0.0 and 0.0, a dictionary holding a value
        twice), so "first" and "last" follow the rows' order across them."""
        table, exact = self._prepared(table)
        exact_partials = {i: exact[p.column][1] for i, p in enumerate(self.partials)
                          if p.function == "sum" and p.column in exact}
        specs: list[tuple[Any, ...]] = [
            ([] if p.column is None else exact[p.column][0] if i in exact_partials else p.column, p.function)
            + (() if p.options is None else (p.options,)) for i, p in enumerate(self.partials)]
        key_columns, by = list(by[:keys]), list(by)
        distinct = None
        if any(may_split_keys(table.schema.field(c).type) for c in key_columns):
            distinct = distinct_keys(table, tuple(key_columns))  # one code per Python key
            code = unused_name(table.column_names, "__raystream_key")
            table = table.append_column(code, pa.array(distinct.rows))
            by = [code] + by[keys:]
        grouped = table.group_by(by, use_threads=False).aggregate(specs + list(extra)).combine_chunks()
        columns = grouped.columns  # by position: a key column may have any name, "v_sum" too
        n = len(by)
        groups, aggregated = (columns[:n], columns[n:]) if _KEYS_FIRST else (columns[-n:], columns[:-n])
        if distinct is not None:  # each group's key columns: those of its key's first row
            present, first_rows = np.unique(distinct.rows, return_index=True)
            first = np.zeros(len(distinct.keys), dtype=np.int64)
            first[present] = first_rows
            rows = pa.array(first[groups[0].to_numpy()])
            groups = [pa.chunked_array([table.column(c).take(rows).combine_chunks()]) for c in key_columns] + groups[1:]
        return Groups(groups, aggregated[:len(self.partials)], aggregated[len(self.partials):], exact_partials)

    def rows_as_groups(self, table: pa.Table, by: list[str], times: str | None = None) -> Groups | None:
        """Each row of `table` as a group of its own, for a batch whose rows the caller
        knows have keys of their own (a batch of per-word counts): the partials Arrow's
        group-by gives a group of one row, made from the row's values without a group-by
        (which costs more than the rest of a batch of words). `times`: the column whose
        max is the first extra aggregate. None where a partial has no such form here (a
        function other than count, sum, min, max, first, last; a column not of numbers)."""
        partials = []
        for p in self.partials:
            if p.function == "count_all":
                partials.append(pa.chunked_array([np.ones(table.num_rows, dtype=np.int64)]))
                continue
            column = table.column(p.column) if p.column in table.column_names else None
            if column is None or p.options is not None:
                return None
            kind = column.type
            if pa.types.is_null(kind):  # as `_prepared`: nulls of int64
                column, kind = column.cast(pa.int64()), pa.int64()
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                return None
            if p.function == "count":
                partials.append(column.is_valid().cast(pa.int64()))
            elif p.function == "sum":  # Arrow's sum types; a float sum starts at 0.0, so -0.0 is 0.0
                if pa.types.is_floating(kind):
                    partials.append(pc.add(column.cast(pa.float64()), 0.0))
                else:
                    partials.append(column.cast(pa.uint64() if pa.types.is_unsigned_integer(kind) else pa.int64()))
            elif p.function in ("min", "max", "first", "last"):
                partials.append(column)
            else:
                return None
        extra = [table.column(times)] if times is not None else []
        return Groups([table.column(c) for c in by], partials, extra)

    def _prepared(self, table: pa.Table) -> tuple[pa.Table, dict[str, tuple[str, pa.DataType]]]:
        """The value columns as Arrow's group-by can fold them: a column of nulls only
        (type null, which `first` and `max` have no kernel for) as int64 nulls, nothing
        to fold; an integer column a sum reads whose batch sum could pass int64 (Arrow's
        sum wraps around silently) also as decimal128(38, 0), exact, in a column of its
        own for the sums (the other partials read the column as it is). Returns the table
        and, per column summed as decimals, that column's name and the type of Arrow's
        sum of the column (int64; uint64 for unsigned)."""
        sums = {p.column for p in self.partials if p.function == "sum"}
        exact: dict[str, tuple[str, pa.DataType]] = {}
        for name in self.columns():
            i = table.schema.get_field_index(name)
            if i < 0:
                continue  # named by the error Arrow gives
            column = table.column(i)
            if pa.types.is_null(column.type):
                table = table.set_column(i, name, column.cast(pa.int64()))
            elif name in sums and pa.types.is_integer(column.type) and _may_pass_int64(column):
                decimals = unused_name(table.column_names, f"__raystream_exact_{name}")
                table = table.append_column(decimals, column.cast(pa.decimal128(38, 0)))
                exact[name] = (decimals, pa.uint64() if pa.types.is_unsigned_integer(column.type) else pa.int64())
        return table, exact

    def merge(self, ids: list[Hashable], olds: list[tuple[Any, ...]], partials: list[list[Any]]
              ) -> tuple[dict[Hashable, tuple[Any, ...]], list[list[Any]]]:
        """The new state of each group `ids[i]` (whose state was `olds[i]`), and per
        aggregate its state after each group. Each aggregate merges all groups at once
        (`merge_all`), so the loops over groups run in C or in a comprehension."""
        with exact_decimals():
            columns = [agg.merge_all(list(map(operator.itemgetter(j), olds)), [partials[i] for i in slot])
                       for j, (agg, slot) in enumerate(zip(self.aggregates, self.slots))]
        new = dict(zip(ids, zip(*columns)))
        if len(new) < len(ids):  # equal ids in two groups (`group` merges keys Arrow splits): one at a time
            return self._merge_in_turn(ids, olds, partials)
        return new, columns

    def _merge_in_turn(self, ids: list[Hashable], olds: list[Any], partials: list[list[Any]]
                       ) -> tuple[dict[Hashable, tuple[Any, ...]], list[list[Any]]]:
        new: dict[Hashable, tuple[Any, ...]] = {}
        rows = []
        for row, (group, old) in enumerate(zip(ids, olds)):
            old = new.get(group, old)
            new[group] = state = self.merge_one(old, [p[row] for p in partials])
            rows.append(state)
        return new, [list(column) for column in zip(*rows)]

    def merge_one(self, state: tuple[Any, ...], partials: Sequence[Any]) -> tuple[Any, ...]:
        """One group's state with one row of partials folded in."""
        with exact_decimals():
            return tuple(agg.merge(state[j], [partials[i] for i in slot])
                         for j, (agg, slot) in enumerate(zip(self.aggregates, self.slots)))

    def combine(self, state: tuple[Any, ...], other: tuple[Any, ...]) -> tuple[Any, ...]:
        """Two groups' states as one (merged session windows; `state` is the earlier one's)."""
        with exact_decimals():
            return tuple(agg.combine(a, b) for agg, a, b in zip(self.aggregates, state, other))

    def result_types(self, partial_types: Sequence[pa.DataType]) -> list[pa.DataType]:
        """The Arrow type of each aggregate's column, from the types of the partials."""
        return [agg.result_type([partial_types[i] for i in slot]) for agg, slot in zip(self.aggregates, self.slots)]

    def results(self, states: list[list[Any]], types: Sequence[pa.DataType | None], widen: bool = False
                ) -> list[pa.Array]:
        """Each aggregate's column from its states (`states[j]`), as `types[j]` where that
        holds them exactly (None: inferred). A running value this batch's type cannot hold
        (a float sum after a batch of ints only, a value after a batch of nulls) keeps the
        type of its values: a column is never cut to fit. Ints past int64 fail the batch,
        or with `widen` (windows firing: no batch to fail) are uint64 or decimal128(38, 0)."""
        arrays = []
        for j, agg in enumerate(self.aggregates):
            values = states[j] if self._plain_result[j] else list(map(agg.result, states[j]))
            arrays.append(_exact_array(values, types[j], widen))
        return arrays


#: Digits of the decimal context merges run in: decimal256's 76, so a running sum of a
#: decimal column is exact as far as Arrow can hold it (Python's default context rounds
#: to 28 significant digits; a decimal128(38, s) column has 38).
_EXACT = decimal.Context(prec=76, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def exact_decimals() -> Any:
    """A decimal context for merging: 76 digits, rounding nothing Arrow can hold."""
    return decimal.localcontext(_EXACT)


def _state_kind(agg: Aggregate) -> tuple[Any, ...]:
    """What an aggregate's state is made of: its class, and each partial's function,
    column and options (a count of nulls is not a count of values)."""
    return (type(agg).__qualname__, tuple((p.function, p.column, _options(p.options)) for p in agg.partials()))


def _options(options: Any) -> str | None:
    """A partial's options as text that is the same in every process: pyarrow's options
    show their fields (`CountOptions(mode=NULLS)`); a default repr shows an address instead."""
    if options is None:
        return None
    text = repr(options)
    if " at 0x" in text:
        fields = getattr(options, "__dict__", None)
        text = type(options).__qualname__ + (repr(sorted(fields.items())) if fields is not None else "")
    return text


def _may_pass_int64(column: pa.ChunkedArray) -> bool:
    """Whether a sum of some of the column's values could leave int64 (bounds, not the sum)."""
    low, high = pc.min_max(column).values()
    if low.as_py() is None:
        return False
    return builtins.max(abs(low.as_py()), abs(high.as_py())) * len(column) >= 2 ** 63


def typed_array(values: list[Any], kind: pa.DataType | None) -> pa.Array:
    """`values` as `kind`; None: inferred, and ints past int64 as uint64."""
    if kind is not None:
        return pa.array(values, type=kind)
    try:
        return pa.array(values)
    except OverflowError:
        return pa.array(values, type=pa.uint64())


def wide_ints(values: list[Any]) -> pa.Array:
    """Ints (and None) past int64 as uint64, or else as decimal128(38, 0) (a sum past
    int64 of signed ints); past that, OverflowError."""
    for kind in (pa.uint64(), pa.decimal128(38, 0)):
        try:
            return pa.array(values, type=kind)
        except (OverflowError, pa.ArrowInvalid):
            continue
    raise OverflowError(f"integers past decimal128(38, 0), from {min(v for v in values if v is not None)} "
                        f"to {max(v for v in values if v is not None)}")


def _exact_array(values: list[Any], kind: pa.DataType | None, widen: bool = False) -> pa.Array:
    try:
        inferred = pa.array(values)
    except OverflowError:  # ints past int64: a type that holds them (uint64), or the batch fails
        if widen:  # or (a window firing, with no batch to fail) a wider type
            return wide_ints(values)
        return typed_array(values, kind if kind is not None and pa.types.is_integer(kind) else None)
    if kind is None or pa.types.is_null(kind) or inferred.type == kind:
        return inferred if kind is None or pa.types.is_null(kind) else inferred.cast(kind)
    if pa.types.is_null(inferred.type):
        return pa.nulls(len(values), kind)
    try:
        return inferred.cast(kind, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return inferred


def arrow_keyed_input(op: KeyedOp, batch: Any, what: str) -> tuple[ArrowKeyed, Times | None]:
    """The Arrow rows keyed by columns that a columnar keyed step `what` takes, and their
    times, counted in; anything else fails the step."""
    inner, times = untimed(batch)
    if not isinstance(inner, ArrowKeyed):
        raise RecordFailure(op.step_id, "<batch>", TypeError(
            f"{what} takes Arrow rows keyed by columns; got {type(inner).__name__}"))
    op.records_in += inner.batch.num_rows
    return inner, times
