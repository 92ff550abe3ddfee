"""Columnar window steps (tumbling and sliding over Arrow) at unit size: the step, its
state moved to the per-key layout, batches of (key, value, time) rows, and what a step
fires as plain tuples. Used by the window-table tests and the changelog's."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from raystream import aggregates as agg
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.transport.batch import ArrowKeyed, Batches, Timed, untimed
from raystream.graph import Step, StepKind, WindowSpec

AGGREGATES = (("n", agg.count()), ("values", agg.count("v")), ("low", agg.min("v")), ("high", agg.max("v")),
              ("first", agg.first("v")), ("last", agg.last("v")), ("top", agg.max("v")))


def window(assigner, per_key=False, aggregates=AGGREGATES, keys=("k",), lateness=0) -> ArrowWindowOp:
    assigner.check("w")
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=keys, arrow=aggregates,
                            window=WindowSpec(assigner, lateness, "columnar")))
    if per_key:
        per_key_layout(op)
    return op


def per_key_layout(op: ArrowWindowOp) -> ArrowWindowOp:
    """The op with its state in the per-key layout only (as raystream kept it before)."""
    op._columnar = False
    if op._tables is not None:
        op.state = {}
    return op


def rows_batch(rows, value_type=pa.int64(), keys=("k",)) -> Timed:
    """Rows (k, v, t); with keys ("k", "j"), j is t's parity (a second key column)."""
    ks, values, times = zip(*rows)
    batch = pa.RecordBatch.from_arrays([pa.array(ks, pa.string()), pa.array(values, value_type),
                                        pa.array([t % 2 for t in times], pa.int64())], names=["k", "v", "j"])
    return Timed(ArrowKeyed(batch, keys), np.array(times, dtype=np.int64))


def fired(batch) -> list[tuple]:
    """Every output row, in order, with its time (of each batch in turn, if several)."""
    if not len(batch):
        return []
    if isinstance(batch, Batches):
        return [row for part in batch.parts for row in fired(part)]
    inner, times = untimed(batch)
    return [tuple(r.values()) + (int(t),) for r, t in zip(inner.to_pylist(), times)]
