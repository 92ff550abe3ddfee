"""Columnar steps over Arrow: `where` and `select` by pyarrow.compute expression, and
`key_by` on columns. No Python runs per row: records that are not Arrow yet become
rows as for `map_batches`, expressions run in Arrow (Acero), and a keyed batch is split
by key in the exchange (transport/arrow_keys.py), per distinct key.

A batch with event times keeps them aligned with its rows, as an int64 array: `where`
filters the times with the rows; `select` and `key_by` keep every row. An expression that fails on a batch
(a column the batch lacks, a type it cannot take) fails the whole batch, as a
`map_batches` function does, with an error that names the step and the expression.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from raystream._runtime.operators.base import Operator
from raystream._runtime.transport.batch import ArrowKeyed, Times, timed
from raystream.graph import Step

logger = logging.getLogger(__name__)


def evaluate(batch: pa.RecordBatch, exprs: list[Any], names: list[str]) -> pa.Table:
    """The expressions over `batch`, one column each, rows in order (one thread: Acero's
    threads would cost more than they give on a micro-batch, and could reorder)."""
    source = acero.Declaration("table_source", acero.TableSourceNodeOptions(pa.Table.from_batches([batch])))
    project = acero.Declaration("project", acero.ProjectNodeOptions(exprs, names))
    return acero.Declaration.from_sequence([source, project]).to_table(use_threads=False)


def as_batch(table: pa.Table) -> pa.RecordBatch:
    """A table as one record batch (a step's output is one batch)."""
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def explained(exc: Exception, what: str) -> Exception:
    """`exc` of the same type, its message prefixed with what failed (the cause keeps its traceback)."""
    message = f"{what}: {exc}"
    try:
        error = type(exc)(message)
    except Exception:  # an error type that takes other arguments
        error = ValueError(message)
    error.__cause__ = exc
    return error


class ColumnarOp(Operator):
    """A step computed over a whole Arrow batch; a failure fails the batch."""

    #: what the step computes, for errors: "where expression (price > 100)"
    what = ""

    def process(self, batch: Any) -> Any:
        arrow, times = self._arrow_input(batch)
        try:
            out, out_times = self._compute(arrow, times)
        except Exception as exc:
            return self._batch_failed(arrow, explained(exc, f"{self.what} failed on a batch with columns "
                                                            f"{', '.join(arrow.schema.names)}"))
        self.records_out += len(out)
        return timed(out, out_times)

    def _compute(self, batch: pa.RecordBatch, times: Times | None) -> tuple[Any, Times | None]:
        raise NotImplementedError


class WhereOp(ColumnarOp):
    """The rows where the expression is true; null is false."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.expr = step.arrow
        self.what = f"where expression {self.expr}"

    def _compute(self, batch: pa.RecordBatch, times: Times | None) -> tuple[Any, Times | None]:
        mask = evaluate(batch, [self.expr], ["mask"]).column(0).combine_chunks()
        if not pa.types.is_boolean(mask.type):
            raise TypeError(f"it gives {mask.type}, not a boolean")
        mask = pc.fill_null(mask, False)
        kept = batch.filter(mask)
        if times is None:
            return kept, None
        return kept, np.asarray(times, dtype=np.int64)[mask.to_numpy(zero_copy_only=False)]


class SelectOp(ColumnarOp):
    """Columns by name (a cheap select), or computed by expression."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.names = [name for name, _ in step.arrow]
        values = [value for _, value in step.arrow]
        self.by_name = values if all(isinstance(v, str) for v in values) else None
        self.exprs = [pc.field(v) if isinstance(v, str) else v for v in values]
        self.what = "select of " + ", ".join(f"{n}={v}" for n, v in step.arrow)

    def _compute(self, batch: pa.RecordBatch, times: Times | None) -> tuple[Any, Times | None]:
        if self.by_name is not None:
            missing = [c for c in self.by_name if c not in batch.schema.names]
            if missing:
                raise ValueError(f"no column {', '.join(missing)}")
            return pa.RecordBatch.from_arrays([batch.column(c) for c in self.by_name], names=self.names), times
        return as_batch(evaluate(batch, self.exprs, self.names)), times


class KeyColumnsOp(ColumnarOp):
    """Keys rows by columns; the exchange after it routes them per distinct key."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.key_columns: tuple[str, ...] = step.key_columns  # type: ignore[assignment]
        self.what = f"key_by on columns {', '.join(self.key_columns)}"

    def _compute(self, batch: pa.RecordBatch, times: Times | None) -> tuple[Any, Times | None]:
        missing = [c for c in self.key_columns if c not in batch.schema.names]
        if missing:
            raise ValueError(f"no key column {', '.join(missing)}")
        twice = [c for c in self.key_columns if len(batch.schema.get_all_field_indices(c)) > 1]
        if twice:  # the exchange could not tell which: fail here, under the step's error policy
            raise ValueError(f"the batch has more than one column named {', '.join(twice)}")
        return ArrowKeyed(batch, self.key_columns), times
