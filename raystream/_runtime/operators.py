"""Operators: the runtime logic of each step kind, applied to whole micro-batches.

A micro-batch is a list of Python records or a `pyarrow.RecordBatch`. Python steps see
records (an Arrow batch is converted with `to_pylist`); `map_batches` sees Arrow (a
list is converted with `RecordBatch.from_pylist`).

The fast path runs the user function over the batch in one comprehension. When it
raises, the batch is replayed record by record to name the record that failed; the
outputs of the failed attempt are discarded, so each record still yields its outputs
at most once.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import pyarrow as pa

from raystream.job import Step
from raystream.sinks import Sink, SinkWriter

logger = logging.getLogger(__name__)

_REPR_LIMIT = 200


class RecordFailure(Exception):
    """A user function raised on one record; carries what the job error must say."""

    def __init__(self, step_id: str, record: Any, exc: BaseException):
        self.step_id = step_id
        self.record_repr = truncated_repr(record)
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        super().__init__(step_id, self.record_repr, self.error)


def truncated_repr(record: Any) -> str:
    try:
        text = repr(record)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<unrepresentable {type(record).__name__}: {exc}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def as_records(batch: Any) -> list[Any]:
    return batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch


class Operator:
    """One step inside a chain. Subclasses implement `_apply(records)`."""

    def __init__(self, step: Step):
        self.step_id = step.step_id
        self.fn: Callable[..., Any] = step.fn  # type: ignore[assignment]
        self.records_in = 0
        self.records_out = 0

    def process(self, batch: Any) -> Any:
        records = as_records(batch)
        self.records_in += len(records)
        try:
            out = self._apply(records)
        except Exception:
            self._locate_failure(records)
            raise
        self.records_out += len(out)
        return out

    def _apply(self, records: list[Any]) -> list[Any]:
        raise NotImplementedError

    def _locate_failure(self, records: list[Any]) -> None:
        """Replay one record at a time; raise RecordFailure for the first that fails."""
        for record in records:
            try:
                self._apply([record])
            except Exception as exc:
                raise RecordFailure(self.step_id, record, exc) from None

    def snapshot(self) -> Any:
        """The state to checkpoint; None for stateless steps."""
        return None

    def close(self) -> Any:
        """Called once at the end of the stream; the return value goes into the result."""
        return None


class MapOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [fn(r) for r in records]


class FlatMapOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [o for r in records for o in fn(r)]


class FilterOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [r for r in records if fn(r)]


class KeyByOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [(fn(r), r) for r in records]


_MISSING = object()


class KeyedOp(Operator):
    """A step with one state per key; state lives in a dict and is checkpointed per key group."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.state: dict[Any, Any] = {}

    def process(self, batch: Any) -> Any:
        records = as_records(batch)
        self.records_in += len(records)
        out = self._apply(records)
        self.records_out += len(out)
        return out

    def snapshot(self) -> dict[Any, Any]:
        return dict(self.state)


class ReduceOp(KeyedOp):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn, state, out = self.fn, self.state, []
        get, append = state.get, out.append
        for record in records:
            try:
                key, value = record
                acc = get(key, _MISSING)
                acc = value if acc is _MISSING else fn(acc, value)
            except Exception as exc:
                raise RecordFailure(self.step_id, record, exc) from None
            state[key] = acc
            append((key, acc))
        return out


class StatefulMapOp(KeyedOp):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn, state, out = self.fn, self.state, []
        for record in records:
            try:
                key, value = record
                new_state, output = fn(state.get(key), value)
            except Exception as exc:
                raise RecordFailure(self.step_id, record, exc) from None
            if new_state is None:
                state.pop(key, None)
            else:
                state[key] = new_state
            out.append((key, output))
        return out


class MapBatchesOp(Operator):
    """Vectorized: the function takes and returns Arrow data."""

    def process(self, batch: Any) -> Any:
        if not isinstance(batch, pa.RecordBatch):
            try:
                batch = pa.RecordBatch.from_pylist(batch)
            except Exception as exc:
                raise RecordFailure(self.step_id, batch[:1], exc) from None
        self.records_in += batch.num_rows
        try:
            out = self.fn(batch)
        except Exception as exc:
            raise RecordFailure(self.step_id, f"<RecordBatch of {batch.num_rows} rows>", exc) from None
        if isinstance(out, pa.Table):
            out = out.combine_chunks().to_batches()
            out = out[0] if out else []
        elif not isinstance(out, pa.RecordBatch):
            raise RecordFailure(
                self.step_id,
                f"<RecordBatch of {batch.num_rows} rows>",
                TypeError(f"map_batches function must return a pyarrow RecordBatch or Table, not {type(out).__name__}"),
            )
        self.records_out += len(out)
        return out


class SinkOp(Operator):
    """Hands batches to the sink's writer; emits nothing."""

    def __init__(self, step: Step, subtask: int, parallelism: int):
        super().__init__(step)
        sink: Sink = step.sink  # type: ignore[assignment]
        self.writer: SinkWriter = sink.build_writer(step.step_id, subtask, parallelism)

    def process(self, batch: Any) -> Any:
        n = batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
        self.records_in += n
        self.writer.write_batch(batch)
        return []

    def close(self) -> Any:
        return self.writer.close()


_KINDS: dict[str, type[Operator]] = {
    "map": MapOp,
    "flat_map": FlatMapOp,
    "filter": FilterOp,
    "key_by": KeyByOp,
    "reduce": ReduceOp,
    "stateful_map": StatefulMapOp,
    "map_batches": MapBatchesOp,
}


def build_operator(step: Step, subtask: int, parallelism: int) -> Operator:
    if step.kind == "sink":
        return SinkOp(step, subtask, parallelism)
    return _KINDS[step.kind](step)


def run_chain(ops: list[Operator], batch: Any) -> Any:
    """Push one batch through the chain; returns the tail's output."""
    for op in ops:
        if not len(batch):
            return batch
        batch = op.process(batch)
    return batch
