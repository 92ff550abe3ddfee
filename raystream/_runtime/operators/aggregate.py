"""The `aggregate` step: running aggregates (raystream/aggregates.py) per key over Arrow.

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

import itertools
import logging
import operator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.operators.columnar import explained
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.batch import ArrowKeyed, timed, untimed
from raystream.aggregates import Aggregate, Partial
from raystream.graph import Step

logger = logging.getLogger(__name__)


def _keys_come_first() -> bool:
    """Where Table.group_by puts the key columns: first in recent pyarrow, last before."""
    grouped = pa.table({"k": [1], "v": [1]}).group_by("k", use_threads=False).aggregate([("v", "sum")])
    return grouped.column_names[0] == "k"


_KEYS_FIRST = _keys_come_first()


@dataclass
class Groups:
    """What Arrow computed for the keys of one batch, one row per key: the key columns,
    the partials (in the order of `AggregateOp.partials`), the newest time."""

    keys: list[pa.ChunkedArray]
    partials: list[pa.ChunkedArray]
    times: pa.ChunkedArray | None


class AggregateOp(KeyedOp):
    """Emits, per batch, one row per key of the batch: the key columns, then each
    aggregate's running value."""

    keeps_values = True

    def __init__(self, step: Step):
        super().__init__(step)
        self.key_columns: list[str] = list(step.key_columns)  # type: ignore[arg-type]
        self.names = [name for name, _ in step.arrow]
        self.aggregates: list[Aggregate] = [agg for _, agg in step.arrow]
        # each partial is computed once, however many aggregates ask for it (mean and sum)
        self.partials: list[Partial] = []
        self.slots: list[list[int]] = []  # per aggregate: the indexes of its partials
        for agg in self.aggregates:
            slot = []
            for partial in agg.partials():
                if partial not in self.partials:
                    self.partials.append(partial)
                slot.append(self.partials.index(partial))
            self.slots.append(slot)
        self.what = "aggregate " + ", ".join(f"{n}={a!r}" for n, a in step.arrow)
        # an aggregate whose result is its state needs no call per key
        self._plain_result = [type(agg).result is Aggregate.result for agg in self.aggregates]

    def process(self, batch: Any) -> Any:
        inner, times = untimed(batch)
        if not isinstance(inner, ArrowKeyed):
            raise RecordFailure(self.step_id, "<batch>", TypeError(
                f"aggregate takes Arrow rows keyed by columns; got {type(inner).__name__}"))
        rows = inner.batch
        self.records_in += rows.num_rows
        try:
            groups = self._group(rows, times)
            keys = self._keys(groups)
            new, states = self._merge(keys, groups)
            out = self._output(groups, states)
        except Exception as exc:  # the batch fails as a whole; the state stays as it was
            return self._batch_failed(inner, explained(
                exc, f"{self.what} failed on a batch with columns {', '.join(rows.schema.names)}"))
        self.state.update(new)
        self.written.update(new)  # type: ignore[union-attr]
        self.records_out += out.num_rows
        return timed(out, groups.times.to_pylist() if groups.times is not None else None)

    def _group(self, rows: pa.RecordBatch, times: list[int] | None) -> Groups:
        """Per key of the batch: the partials, in the order of `self.partials` (and the newest time)."""
        table = pa.Table.from_batches([rows])
        specs: list[tuple[Any, ...]] = [
            ([] if p.column is None else p.column, p.function) + (() if p.options is None else (p.options,))
            for p in self.partials]
        if times is not None:
            time_column = "__raystream_time"
            while time_column in rows.schema.names:
                time_column += "_"
            table = table.append_column(time_column, pa.array(times, type=pa.int64()))
            specs.append((time_column, "max"))
        grouped = table.group_by(self.key_columns, use_threads=False).aggregate(specs).combine_chunks()
        columns = grouped.columns  # by position: a key column may have any name, "v_sum" too
        n_keys = len(self.key_columns)
        keys, aggregated = (columns[:n_keys], columns[n_keys:]) if _KEYS_FIRST else \
            (columns[-n_keys:], columns[:-n_keys])
        return Groups(keys, aggregated[:len(self.partials)], aggregated[-1] if times is not None else None)

    def _keys(self, groups: Groups) -> list[Any]:
        """The Python key of each group: what the per-record path's key would be."""
        if len(groups.keys) == 1:
            return groups.keys[0].to_pylist()
        return list(zip(*(c.to_pylist() for c in groups.keys)))

    def _merge(self, keys: list[Any], groups: Groups) -> tuple[dict[Any, Any], list[list[Any]]]:
        """The new state of each key of the batch, and per aggregate its state after each
        group. Each aggregate merges all keys at once (`merge_all`), so the loops over
        keys run in C or in a comprehension."""
        partials = [c.to_pylist() for c in groups.partials]
        fresh = tuple(agg.create() for agg in self.aggregates)  # shared: merges return new states
        olds = list(map(self.state.get, keys, itertools.repeat(fresh)))
        columns = [agg.merge_all(list(map(operator.itemgetter(j), olds)), [partials[i] for i in slot])
                   for j, (agg, slot) in enumerate(zip(self.aggregates, self.slots))]
        new = dict(zip(keys, zip(*columns)))
        if len(new) < len(keys):  # equal keys in two groups (0.0 and -0.0): again, one row at a time
            return self._merge_in_turn(keys, olds, partials)
        return new, columns

    def _merge_in_turn(self, keys: list[Any], olds: list[Any], partials: list[list[Any]]
                       ) -> tuple[dict[Any, Any], list[list[Any]]]:
        new: dict[Any, Any] = {}
        rows = []
        for row, (key, old) in enumerate(zip(keys, olds)):
            old = new.get(key, old)
            new[key] = state = tuple(agg.merge(old[j], [partials[i][row] for i in slot])
                                     for j, (agg, slot) in enumerate(zip(self.aggregates, self.slots)))
            rows.append(state)
        return new, [list(column) for column in zip(*rows)]

    def _output(self, groups: Groups, states: list[list[Any]]) -> pa.RecordBatch:
        arrays = [c.chunk(0) if c.num_chunks else pa.array([], c.type) for c in groups.keys]
        for j, agg in enumerate(self.aggregates):
            values = states[j]
            if not self._plain_result[j]:
                values = list(map(agg.result, values))
            types = [groups.partials[i].type for i in self.slots[j]]
            arrays.append(pa.array(values, type=agg.result_type(types)))
        return pa.RecordBatch.from_arrays(arrays, names=self.key_columns + self.names)
