"""Operators: the runtime logic of each step kind, applied to whole micro-batches.

Python steps see records (`as_records`); `map_batches` sees Arrow (`to_arrow`); keyed
steps see a `KeyedBatch`. The fast path runs the user function over the batch in one
comprehension. When it raises, the batch is replayed record by record; the outputs of
the failed attempt are discarded, so each record still yields its outputs once. Under
the `fail` error policy the first failing record stops the job (RecordFailure);
otherwise each failing record goes to `on_error(step_id, record, exc)` and the rest of
the batch goes on.

On a stream with event time a batch is `Timed`: every output keeps the time of the
record it came from. Operators that keep time themselves (windows, timers; see
`windowing.py`) also react to watermarks (`on_watermark`) and to the clock
(`on_time`).
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import pyarrow as pa

from raystream._runtime.batch import KeyedBatch, Timed, as_keyed, as_records, batch_len, timed, to_arrow, untimed
from raystream._runtime.changelog import DELETED
from raystream._runtime.tally import Tally
from raystream.graph import Step, StepKind
from raystream.sink_api import Sink, SinkContext, SinkWriter

logger = logging.getLogger(__name__)

_REPR_LIMIT = 200


class RecordFailure(Exception):
    """A user function raised on one record; carries what the job error must say."""

    def __init__(self, step_id: str, record: Any, exc: BaseException):
        self.step_id = step_id
        self.record_repr = record if isinstance(record, str) and record.startswith("<") else truncated_repr(record)
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        super().__init__(step_id, self.record_repr, self.error)


def truncated_repr(record: Any) -> str:
    try:
        text = repr(record)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<unrepresentable {type(record).__name__}: {exc}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


OnError = Callable[[str, Any, BaseException], None]


class Operator:
    """One step inside a chain. Record-at-a-time subclasses implement `_apply(records)`."""

    def __init__(self, step: Step):
        self.step_id = step.step_id
        self.fn: Callable[..., Any] = step.fn  # type: ignore[assignment]
        self.records_in = 0
        self.records_out = 0
        self.errors = 0
        self.on_error: OnError | None = None  # None: the `fail` policy

    def process(self, batch: Any) -> Any:
        batch, times = untimed(batch)
        records = as_records(batch)
        self.records_in += len(records)
        if times is not None:
            try:
                out, out_times = self._apply_timed(records, times)
            except Exception:
                out, out_times = self._one_by_one_timed(records, times)
            self.records_out += len(out_times)
            return Timed(out, out_times)
        try:
            out = self._apply(records)
        except Exception:
            out = self._one_by_one(records)
        self.records_out += batch_len(out)
        return out

    def _apply(self, records: list[Any]) -> Any:
        raise NotImplementedError

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        """Outputs and their times; by default one record at a time."""
        return self._one_by_one_timed(records, times)

    def on_watermark(self, watermark: int) -> Any:
        """The event-time clock reached `watermark`: what fires now (a batch, maybe empty)."""
        return []

    def on_time(self, now: int) -> Any:
        """The processing-time clock (milliseconds) reached `now`: what fires now."""
        return []

    def next_timer(self) -> int | None:
        """When (processing time, milliseconds) `on_time` has something to fire; None: never."""
        return None

    def failed(self, record: Any, exc: BaseException) -> None:
        """A user function raised on `record`: stop the job, or hand it to the policy."""
        if self.on_error is None:
            raise RecordFailure(self.step_id, record, exc) from None
        self.errors += 1
        self.on_error(self.step_id, record, exc)

    def _one_by_one(self, records: list[Any]) -> Any:
        """Replay one record at a time, so a failure names its record and spares the rest."""
        parts = []
        for record in records:
            try:
                parts.append(self._apply([record]))
            except Exception as exc:
                self.failed(record, exc)
        return _concat(parts)

    def _one_by_one_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        parts, out_times = [], []
        for record, t in zip(records, times):
            try:
                part = self._apply([record])
            except Exception as exc:
                self.failed(record, exc)
                continue
            parts.append(part)
            out_times.extend([t] * len(part))
        return _concat(parts), out_times

    def snapshot(self) -> Any:
        """The state to checkpoint; None for stateless steps."""
        return None

    def close(self) -> Any:
        """Called once at the end of the stream; the return value goes into the result."""
        return None


def _concat(parts: list[Any]) -> Any:
    if parts and isinstance(parts[0], KeyedBatch):
        return KeyedBatch([k for p in parts for k in p.keys], [v for p in parts for v in p.values])
    return [r for p in parts for r in p]


class MapOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [fn(r) for r in records]

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        return self._apply(records), times


class FlatMapOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [o for r in records for o in fn(r)]

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        fn = self.fn
        outs = [list(fn(r)) for r in records]
        return [o for out in outs for o in out], [t for out, t in zip(outs, times) for _ in out]


class FilterOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        fn = self.fn
        return [r for r in records if fn(r)]

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        fn = self.fn
        keep = [bool(fn(r)) for r in records]
        return [r for r, k in zip(records, keep) if k], [t for t, k in zip(times, keep) if k]


class PassOp(Operator):
    """Records as they come: the step that takes a window step's late records."""

    def process(self, batch: Any) -> Any:
        n = batch_len(batch)
        self.records_in += n
        self.records_out += n
        return batch


class KeyByOp(Operator):
    """Emits a KeyedBatch: keys and values as columns."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.value_fn = step.value_fn

    def _apply(self, records: list[Any]) -> KeyedBatch:
        fn, value_fn = self.fn, self.value_fn
        keys = [fn(r) for r in records]
        return KeyedBatch(keys, records if value_fn is None else [value_fn(r) for r in records])

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        return self._apply(records), times


_MISSING = object()


class KeyedOp(Operator):
    """A step with one state per key; state lives in a dict and is checkpointed per key group."""

    watermark: int | None = None  # the event-time clock of steps that keep time (ms)
    late_records = 0  # records found too late (window steps)
    keeps_values = False  # one value per key: snapshots take `written` (changelog.py, I1)

    def __init__(self, step: Step):
        super().__init__(step)
        self.state: dict[Any, Any] = {}
        # I1 (changelog.py): the keys touched since the last snapshot; steps whose state is
        # one value per key keep the new values instead (`written`, DELETED for a delete),
        # so the snapshot does not look each key up again in a large table
        self.changed: set[Any] = set()
        self.written: dict[Any, Any] | None = {} if self.keeps_values else None
        self.deletes = 0  # DELETED entries written since the last snapshot
        self._bad: list[int] = []  # indexes of the records of the current batch that failed

    def process(self, batch: Any) -> Any:
        kb, times = self._keyed_input(batch)
        out = self._apply_keyed(kb.keys, kb.values, times)
        self.records_out += len(out)
        return out

    def _keyed_input(self, batch: Any) -> tuple[KeyedBatch, list[int] | None]:
        """The batch as keys and values (and times), counted in."""
        batch, times = untimed(batch)
        try:
            kb = as_keyed(batch)
        except ValueError as exc:
            raise RecordFailure(self.step_id, "<batch>", exc) from None
        self.records_in += len(kb)
        self._bad = []
        if self.written is None:
            self.changed.update(kb.keys)  # I1: a record may change its key's state
        return kb, times

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        """The outputs; when `times` is given, a Timed batch."""
        raise NotImplementedError

    def _kept_times(self, times: list[int] | None) -> list[int] | None:
        """The times of the records that did not fail (outputs are one per record)."""
        if times is None or not self._bad:
            return times
        bad = set(self._bad)
        return [t for i, t in enumerate(times) if i not in bad]

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        """Start from restored keyed state (and, for event-time steps, the watermark)."""
        self.state = state
        self.changed = set()
        if self.written is not None:
            self.written, self.deletes = {}, 0

    def snapshot(self) -> dict[Any, Any]:
        return dict(self.state)


class ReduceOp(KeyedOp):
    """Running reduce: emits `(key, acc)` for every record."""

    keeps_values = True

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        fn, state, written = self.fn, self.state, self.written
        get = state.get
        out_keys: list[Any] = []
        out: list[Any] = []
        start = 0
        while True:  # the tight loop; a failing record is handled, then the loop resumes after it
            append = out.append
            try:
                for i in range(start, len(keys)):
                    value = values[i]
                    acc = get(keys[i], _MISSING)
                    if acc is not _MISSING:
                        value = fn(acc, value)
                    state[keys[i]] = written[keys[i]] = value
                    append(value)
                break
            except Exception as exc:
                bad = start + len(out) - len(out_keys)
                out_keys.extend(keys[start:bad])
                self._bad.append(bad)
                self.failed((keys[bad], values[bad]), exc)
                start = bad + 1
        if start == 0:  # nothing failed: the keys are the input's
            return timed(KeyedBatch(keys, out), times)
        out_keys.extend(keys[start:])
        return timed(KeyedBatch(out_keys, out), self._kept_times(times))


class StatefulMapOp(KeyedOp):
    """`fn(state_or_None, value) -> (new_state_or_None, output)`; emits `(key, output)`."""

    keeps_values = True

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        fn, state, written = self.fn, self.state, self.written
        out: list[Any] = []
        out_keys: list[Any] = []
        for i, (key, value) in enumerate(zip(keys, values)):
            try:
                new_state, output = fn(state.get(key), value)
            except Exception as exc:
                self._bad.append(i)
                self.failed((key, value), exc)
                continue
            if new_state is None:
                state.pop(key, None)
                written[key] = DELETED
                self.deletes += 1
            else:
                state[key] = written[key] = new_state
            out_keys.append(key)
            out.append(output)
        return timed(KeyedBatch(out_keys, out), self._kept_times(times))


class MapBatchesOp(Operator):
    """Vectorized: the function takes and returns Arrow data."""

    def process(self, batch: Any) -> Any:
        batch, times = untimed(batch)
        try:
            batch = to_arrow(batch)
        except Exception as exc:
            raise RecordFailure(self.step_id, as_records(batch)[:1], exc) from None
        self.records_in += batch.num_rows
        what = f"<RecordBatch of {batch.num_rows} rows>"
        try:
            out = self.fn(batch)
        except Exception as exc:
            if self.on_error is None:
                raise RecordFailure(self.step_id, what, exc) from None
            for record in batch.to_pylist():  # a vectorized step fails its batch as a whole
                self.failed(record, exc)
            return []
        if isinstance(out, pa.Table):
            out = out.combine_chunks().to_batches()
            out = out[0] if out else []
        elif not isinstance(out, pa.RecordBatch):
            raise RecordFailure(self.step_id, what, TypeError(
                f"map_batches function must return a pyarrow RecordBatch or Table, not {type(out).__name__}"))
        if times is not None and batch_len(out) != batch.num_rows:
            raise RecordFailure(self.step_id, what, ValueError(
                f"on a stream with event time, map_batches must return one row per input row (it returned "
                f"{batch_len(out)} for {batch.num_rows}), so that each row keeps its time; filter or explode "
                "in a plain step, or assign event time after this step"))
        self.records_out += batch_len(out)
        return timed(out, times)


class SinkOp(Operator):
    """Hands batches to the sink's writer as records or Arrow; emits nothing.

    Under exactly-once it keeps the transactions pre-committed at barriers until the
    checkpoint that covers them is complete (`pending`); they are part of every snapshot
    taken meanwhile, so a restore can commit them again.
    """

    def __init__(self, step: Step, context: SinkContext):
        super().__init__(step)
        sink: Sink = step.sink  # type: ignore[assignment]
        self.transactional = context.transactional
        self.writer: SinkWriter = sink.build_writer(context)
        self.pending: list[tuple[int, Any]] = []
        self.tally: Tally | None = None  # when the job is audited

    def process(self, batch: Any) -> Any:
        batch, _ = untimed(batch)  # a sink writes records; their times stay behind
        self.records_in += batch_len(batch)
        records = batch if isinstance(batch, pa.RecordBatch) else as_records(batch)
        if self.tally is not None:
            self.tally.add(as_records(records))
        self.writer.write_batch(records)
        return []

    def pre_commit(self, checkpoint_id: int) -> None:
        """At a barrier: exactly-once seals a transaction; at-least-once flushes."""
        txn = self.writer.pre_commit(checkpoint_id)
        if txn is not None and self.transactional:
            self.pending.append((checkpoint_id, txn))

    def commit_all(self, txns: list[Any]) -> None:
        for txn in txns:
            self.writer.commit(txn)

    def abort_pending(self, aborted: set[int]) -> None:
        """C6a: offer the transactions of aborted checkpoints to the writer, which may roll
        them back into its open epoch (`SinkWriter.abort`) or keep them pending."""
        self.pending = [(c, txn) for c, txn in self.pending if c not in aborted or not self.writer.abort(txn)]

    def close(self) -> Any:
        return self.writer.close()


_OPERATORS: dict[StepKind, type[Operator]] = {
    StepKind.MAP: MapOp,
    StepKind.FLAT_MAP: FlatMapOp,
    StepKind.FILTER: FilterOp,
    StepKind.KEY_BY: KeyByOp,
    StepKind.REDUCE: ReduceOp,
    StepKind.STATEFUL_MAP: StatefulMapOp,
    StepKind.MAP_BATCHES: MapBatchesOp,
    StepKind.LATE: PassOp,
}


def build_operator(step: Step, sink_context: SinkContext | None = None) -> Operator:
    if step.kind is StepKind.SINK:
        assert sink_context is not None
        return SinkOp(step, sink_context)
    return _OPERATORS[step.kind](step)


def run_chain(ops: list[Operator], batch: Any) -> Any:
    """Push one batch through the chain; returns the tail's output."""
    for op in ops:
        if not batch_len(batch):
            return batch
        batch = op.process(batch)
    return batch
