"""What every operator is: `Operator` (a step applied to whole micro-batches, with the
record-by-record replay that isolates a failing record), `KeyedOp` (keyed state and the
keys it changed, I1), and `run_chain`, which pushes a batch through a chain.

Python steps see records (`as_records`); `map_batches` sees Arrow (`to_arrow`); keyed
steps see a `KeyedBatch`. The fast path runs the user function over the batch in one
comprehension. When it raises, the batch is replayed record by record; the outputs of
the failed attempt are discarded, so each record still yields its outputs once. Under
the `fail` error policy the first failing record stops the job (RecordFailure);
otherwise each failing record goes to `on_error(step_id, record, exc)` and the rest of
the batch goes on.

On a stream with event time a batch is `Timed`: every output keeps the time of the
record it came from. Operators that keep time themselves (windows, timers:
operators/windows.py, operators/process.py) also react to watermarks (`on_watermark`)
and to the clock (`on_time`).
"""
from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from raystream._runtime.transport.batch import (Batches, KeyedBatch, Timed, Times, as_keyed, as_records, batch_len,
                                                parts, time_list, to_arrow, untimed)
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.operators.state_kinds import PER_RECORD, TTL, meta_kind, refused
from raystream.graph import Step


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
        times = time_list(times)  # a per-record step takes an Arrow batch's time array per record
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

    def _arrow_input(self, batch: Any) -> tuple[pa.RecordBatch, Times | None]:
        """Vectorized steps: the batch as Arrow rows (records as `to_arrow` makes them)
        and its times, counted in."""
        batch, times = untimed(batch)
        try:
            arrow = to_arrow(batch)
        except Exception as exc:
            raise RecordFailure(self.step_id, as_records(batch)[:1], exc) from None
        self.records_in += arrow.num_rows
        return arrow, times

    def _batch_failed(self, batch: Any, exc: BaseException) -> list[Any]:
        """A vectorized step failed on `batch` as a whole: stop the job, or hand each of
        its records to the policy. Returns the (empty) output."""
        if self.on_error is None:
            raise RecordFailure(self.step_id, f"<RecordBatch of {batch_len(batch)} rows>", exc) from None
        for record in as_records(batch):
            self.failed(record, exc)
        return []

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
        """The batch as keys and values (and times, as a list), counted in."""
        batch, times = untimed(batch)
        times = time_list(times)
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

    def changed_state(self) -> tuple[dict[Any, Any], list[Any]]:
        """For an incremental snapshot (I2): the state of each key changed since the last
        one that still has state, and the changed keys that have none (deleted)."""
        state, changed = self.state, self.changed
        return {k: state[k] for k in changed if k in state}, [k for k in changed if k not in state]

    def state_keys(self) -> int:
        """How many keys the state holds (the `raystream_state_keys` metric, polled often)."""
        return len(self.state)

    def state_meta(self) -> Any:
        """What the values of the state are, beside it in every snapshot (`step_meta`):
        plain, small values, or None for nothing. A columnar step's aggregates, say, so
        that a restore into other aggregates is refused (`restore_meta`)."""
        return None

    def restore_meta(self, metas: list[Any]) -> None:
        """Before `restore`: the `state_meta` of each old subtask the state came from (none
        from a snapshot of raystream before it). Raises RestoreError when the state does
        not fit this step. Here, for steps that keep no meta: state a columnar step wrote
        is refused, since its values are that step's partials, not this step's (a
        per-record window would fire a Lifetime window's partials as its own). Columnar
        steps check their own kinds."""
        for meta in metas:
            if meta_kind(meta) not in (None, PER_RECORD, TTL):  # TTL: the step kept with a time-to-live
                raise refused(self.step_id, meta, f"of another kind ({type(self).__name__})")


def run_chain(ops: list[Operator], batch: Any) -> Any:
    """Push one batch through the chain; returns the tail's output (`Batches` if a step
    put out several: each goes through the steps after it on its own)."""
    for i, op in enumerate(ops):
        if not batch_len(batch):
            return batch
        if isinstance(batch, Batches):
            return Batches([out for part in batch.parts for out in parts(run_chain(ops[i:], part)) if batch_len(out)])
        batch = op.process(batch)
    return batch
