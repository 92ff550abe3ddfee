"""The `aggregate` step: running aggregates (raystream/aggregates.py) per key over Arrow,
and `Folds`, the aggregates of a step as Arrow partials and Python merges, which the
columnar windows (operators/columnar_windows.py) fold per (key, window) the same way.

Per batch, Arrow computes every aggregate's partials for all keys of the batch at once
(`Table.group_by(key columns).aggregate(...)`, one thread, rows in order, so "first" and
"last" follow arrival). Then Python runs once per distinct key: it folds the partials
into the key's state and emits one row per key of the batch with the running values.

The state is keyed state like a reduce's: one value per key (a tuple with one state per
aggregate), in the operator's `state` dict under the key the per-record path would use
(a column's Python value, the tuple of several, None for a null), and written to
`written` for incremental snapshots (I1). So snapshots, restore, rescaling by key group
(B4) and metrics are those of every keyed step. A batch that fails leaves the state as
it was: new states are committed only once every key of the batch merged.

With event times, a key's output row takes the newest time among its rows in the batch.
"""
from __future__ import annotations

import builtins
import decimal
import itertools
import logging
import operator
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._runtime.operators.aggregate_columns import AggregateColumns, Fold, Refused, vectorized_folds
from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.operators.columnar import explained
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.arrow_keys import distinct_keys, may_split_keys
from raystream._runtime.transport.batch import ArrowKeyed, Times, timed, untimed
from raystream.aggregates import Aggregate, Partial
from raystream.errors import RestoreError
from raystream.graph import Step

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
        return [[None if v is None else int(v) for v in c.to_pylist()] if i in self.exact else c.to_pylist()
                for i, c in enumerate(self.partials)]

    def partial_types(self) -> list[pa.DataType]:
        """The partials' types as the columns they summed would give them."""
        return [self.exact.get(i, c.type) for i, c in enumerate(self.partials)]

    def python_keys(self, n: int) -> list[Any]:
        """The Python key of each group from its first `n` columns: what the per-record
        path's key would be (a value, or the tuple of several)."""
        if n == 1:
            return self.keys[0].to_pylist()
        return list(zip(*(c.to_pylist() for c in self.keys[:n])))


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
        before it) is taken as it is."""
        now = self.describe()
        what = "give the step a new id to start it afresh (and keep the old one's state out with " \
               "allow_non_restored_state)"
        for meta in metas:
            if not isinstance(meta, dict):
                continue
            if not meta:  # rescale.NO_META: a step that keeps no meta wrote it
                raise RestoreError(
                    f"step {step_id!r}: the checkpoint's state for this step id was written by another kind of step "
                    f"(a per-record step, say), not a columnar {op}, and it cannot be read as one: {what}")
            if meta.get("op", op) != op:
                raise RestoreError(
                    f"step {step_id!r}: the checkpoint's state for this step id was written by a columnar "
                    f"{meta['op']}, and this job's step is a columnar {op}; their states differ: {what}")
            before = meta.get("aggregates")
            if before is None or [kind for _, _, kind in before] == [kind for _, _, kind in now]:
                continue
            def listed(described: list[tuple[str, str, Any]]) -> str:
                return ", ".join(f"{name}={text}" for name, text, _ in described) or "none"
            raise RestoreError(
                f"step {step_id!r}: the checkpoint's state was made by the aggregates {listed(before)}, and this "
                f"job's step has {listed(now)}. A key's state holds one value per aggregate, in order, so it cannot "
                f"be restored into other aggregates (or the same in another order): {what}, or restore with the "
                "step's original aggregates")

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

    def results(self, states: list[list[Any]], types: Sequence[pa.DataType | None]) -> list[pa.Array]:
        """Each aggregate's column from its states (`states[j]`), as `types[j]` where that
        holds them exactly (None: inferred). A running value this batch's type cannot hold
        (a float sum after a batch of ints only, a value after a batch of nulls) keeps the
        type of its values: a column is never cut to fit."""
        arrays = []
        for j, agg in enumerate(self.aggregates):
            values = states[j] if self._plain_result[j] else list(map(agg.result, states[j]))
            arrays.append(_exact_array(values, types[j]))
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


def _exact_array(values: list[Any], kind: pa.DataType | None) -> pa.Array:
    try:
        inferred = pa.array(values)
    except OverflowError:  # ints past int64: a type that holds them (uint64), or the batch fails
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


class AggregateOp(KeyedOp):
    """Emits, per batch, one row per key of the batch: the key columns, then each
    aggregate's running value.

    The state is held in one of two layouts, with the same per-key view (`state`):
    numpy columns with a slot per key (operators/aggregate_columns.py: built-in
    aggregates over numbers) while every batch fits them, or the per-key dict, folded in
    Python. A batch the columns cannot fold exactly moves the state to the dict for good;
    a restore starts from the dict and moves it into columns at the first batch that
    fits (`_columns_for`)."""

    keeps_values = True

    def __init__(self, step: Step):
        super().__init__(step)
        self.key_columns: list[str] = list(step.key_columns)  # type: ignore[arg-type]
        self.folds = Folds(step.arrow)
        self.names = self.folds.names
        self.what = "aggregate " + ", ".join(f"{n}={a!r}" for n, a in step.arrow)
        # whether to try the columns at the next batch; False once a batch did not fit
        self._vectorize = vectorized_folds(self.folds)

    # --- the two layouts, one view ------------------------------------------------------
    # In columns, `written` is None, so incremental snapshots take `changed_state()` (I1:
    # the slots a batch changed are marked `dirty`); in the dict, the new values of the
    # keys changed go to `written`, as for every step that keeps one value per key.

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:
        """The keyed state, `{key: (state of each aggregate)}`: the dict itself, or made
        from the columns when read (snapshots)."""
        return self._columns.as_dict() if self._columns is not None else self._state

    @state.setter
    def state(self, value: dict[Any, Any]) -> None:  # KeyedOp.__init__, restore: the dict
        self._columns: AggregateColumns | None = None
        self._state = value

    @property  # type: ignore[override]
    def written(self) -> dict[Any, Any] | None:
        return None if self._columns is not None else self._written

    @written.setter
    def written(self, value: dict[Any, Any] | None) -> None:
        self._written = value

    @property  # type: ignore[override]
    def changed(self) -> set[Any]:
        return self._columns.changed_keys() if self._columns is not None else self._changed

    @changed.setter
    def changed(self, value: set[Any]) -> None:  # emptied after each snapshot (changelog.py)
        if self._columns is not None:
            if value:
                raise ValueError("the columns mark the keys a batch changed themselves")
            self._columns.clear_changed()
        self._changed = value

    def changed_state(self) -> tuple[dict[Any, Any], list[Any]]:
        if self._columns is not None:
            return self._columns.changed_state(), []  # an aggregate deletes no key
        return super().changed_state()

    def state_keys(self) -> int:
        return len(self._columns) if self._columns is not None else len(self._state)

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)  # the dict, until a batch that fits the columns comes
        self._vectorize = vectorized_folds(self.folds)

    # --- a batch --------------------------------------------------------------------------

    def process(self, batch: Any) -> Any:
        inner, times = arrow_keyed_input(self, batch, "aggregate")
        rows = inner.batch
        try:
            groups = self._group(rows, times)
            keys = groups.python_keys(len(self.key_columns))
            columns = self._columns_for(groups) if self._vectorize else None
            folded = columns.fold(groups, keys) if columns is not None else None
            if folded is None:
                self._to_dict()
                folded = self._fold_per_key(groups, keys)
            out = self._output(groups, folded.results)
        except Exception as exc:  # the batch fails as a whole; the state stays as it was
            return self._batch_failed(inner, explained(
                exc, f"{self.what} failed on a batch with columns {', '.join(rows.schema.names)}"))
        folded.commit()
        self.records_out += out.num_rows
        newest = groups.extra[0].to_numpy() if times is not None else None
        return timed(out, newest)

    def _columns_for(self, groups: Groups) -> AggregateColumns | None:
        """The columns to fold the batch in; at the first batch (after a restore too) made
        from the dict, when the batch's partials and the dict's states fit them. None:
        fold in the dict."""
        if self._columns is not None:
            return self._columns
        types = groups.partial_types()
        if not AggregateColumns.fits(self.folds, types):
            return None
        columns = AggregateColumns(self.folds, types)
        try:
            columns.load(self._state)
        except Refused:
            return None
        # I1: the keys changed since the last snapshot stay marked (none after a restore:
        # the columns are tried at the first batch after one, or at the first batch)
        columns.mark_changed(list(self._written) + list(self._changed))
        self._columns, self._state, self._written, self._changed = columns, {}, {}, set()
        return columns

    def _to_dict(self) -> None:
        """From now on, the state in the dict: the columns' keys and states, and the keys
        they changed since the last snapshot as `written` (I1)."""
        self._vectorize = False
        columns = self._columns
        if columns is None:
            return
        state, written = columns.as_dict(), columns.changed_state()
        self.state = dict(state)  # a dict of its own: a snapshot may hold the one as_dict() gave
        self._written = written
        self._changed = set()

    def _fold_per_key(self, groups: Groups, keys: list[Any]) -> Fold:
        """The batch folded in the dict, in Python per key; committed by the Fold."""
        olds = list(map(self._state.get, keys, itertools.repeat(self.folds.fresh())))
        new, states = self.folds.merge(keys, olds, groups.python_partials())
        results = self.folds.results(states, self.folds.result_types(groups.partial_types()))

        def commit() -> None:
            self._state.update(new)
            self._written.update(new)  # type: ignore[union-attr]

        return Fold(results, commit)

    def state_meta(self) -> dict[str, Any]:
        return {"op": "aggregate", "aggregates": self.folds.describe()}

    def restore_meta(self, metas: list[Any]) -> None:
        self.folds.check_restored(self.step_id, metas, "aggregate")

    def _group(self, rows: pa.RecordBatch, times: Times | None) -> Groups:
        """Per key of the batch: the partials, in the order of `self.folds.partials` (and the newest time)."""
        table = pa.Table.from_batches([rows])
        if times is None:
            return self.folds.group(table, self.key_columns, keys=len(self.key_columns))
        time_column = unused_name(rows.schema.names, "__raystream_time")
        table = table.append_column(time_column, pa.array(np.asarray(times, dtype=np.int64)))
        return self.folds.group(table, self.key_columns, [(time_column, "max")], keys=len(self.key_columns))

    def _output(self, groups: Groups, results: list[pa.Array]) -> pa.RecordBatch:
        arrays = [c.chunk(0) if c.num_chunks else pa.array([], c.type) for c in groups.keys]
        arrays += results
        return pa.RecordBatch.from_arrays(arrays, names=self.key_columns + self.names)
