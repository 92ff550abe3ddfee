"""The `aggregate` step's operator: running aggregates per key over Arrow (the folds are
operators/aggregate.py's), its state in numpy columns (operators/aggregate_columns.py)
while every batch fits them, otherwise in the per-key dict (docs/guide/columnar.md)."""
from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import Folds, Groups, arrow_keyed_input, unused_name
from raystream._runtime.operators.aggregate_columns import (AggregateColumns, Fold, Refused, RepeatedKeys,
                                                            vectorized_folds)
from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.operators.columnar import explained
from raystream._runtime.operators.state_kinds import check_key_columns
from raystream._runtime.transport.arrow_keys import may_split_keys
from raystream._runtime.transport.batch import Times, timed
from raystream.graph import Step

logger = logging.getLogger(__name__)


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
        # whether to take each row as a group of its own (`_fold_rows`); False once a
        # batch had a key twice
        self._rows_distinct = True

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
            groups, keys, folded = self._fold_rows(rows, times) if self._rows_distinct else (None, None, None)
            if groups is None:
                groups = self._group(rows, times)
                keys = groups.python_keys(len(self.key_columns))
                columns = self._columns_for(groups) if self._vectorize else None
                try:
                    folded = columns.fold(groups, keys) if columns is not None else None
                except RepeatedKeys:  # keys Python holds equal that Arrow grouped apart
                    folded = None
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

    def _fold_rows(self, rows: pa.RecordBatch, times: Times | None) -> tuple[Any, Any, Any]:
        """Into the columns, each row as a group of its own (`Folds.rows_as_groups`): (the
        groups, their keys, the fold), or Nones when the batch is to be grouped. Tried
        while every batch so far had a key per row (a batch of per-word counts); the first
        batch with a key twice ends the trying, for good, so at most one batch's keys are
        looked up in vain."""
        columns, names = self._columns, rows.schema.names
        # grouped instead: keys Arrow may split, and null keys (Arrow's group-by may put
        # their group last, and the output's rows come in the groups' order)
        if columns is None or any(c not in names or may_split_keys(rows.schema.field(c).type)
                                  or rows.column(c).null_count for c in self.key_columns):
            return None, None, None
        table = pa.Table.from_batches([rows])
        time_column = None
        if times is not None:
            time_column = unused_name(rows.schema.names, "__raystream_time")
            table = table.append_column(time_column, pa.array(np.asarray(times, dtype=np.int64)))
        groups = self.folds.rows_as_groups(table, self.key_columns, time_column)
        if groups is None:
            return None, None, None
        keys = groups.python_keys(len(self.key_columns))
        try:
            folded = columns.fold(groups, keys)
        except RepeatedKeys:
            self._rows_distinct = False
            return None, None, None
        return (groups, keys, folded) if folded is not None else (None, None, None)

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
        return {"op": "aggregate", "aggregates": self.folds.describe(), "keys": self.key_columns}

    def restore_meta(self, metas: list[Any]) -> None:
        """Refuse the state of another kind of step, of other aggregates, or keyed by
        other columns (metas before 0.8.2 do not say which)."""
        self.folds.check_restored(self.step_id, metas, "aggregate")
        for meta in metas:
            if isinstance(meta, dict):
                check_key_columns(self.step_id, meta.get("keys"), self.key_columns)

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
