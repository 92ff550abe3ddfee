"""The plain step kinds (map, flat_map, filter, key_by, reduce, stateful_map,
map_batches) and the sink step, over whole micro-batches (operators/base.py), and
`build_operator`, which makes the operator of a step (the columnar ones too:
operators/columnar.py, operators/aggregate_op.py)."""
from __future__ import annotations

import logging
from itertools import chain, compress, repeat
from operator import length_hint, truth
from typing import Any

import pyarrow as pa

from raystream._runtime.operators.aggregate_op import AggregateOp
from raystream._runtime.operators.base import KeyedOp, Operator
from raystream._runtime.operators.columnar import KeyColumnsOp, SelectOp, WhereOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.batch import KeyedBatch, as_records, batch_len, timed, untimed
from raystream._runtime.state.changelog import DELETED
from raystream._runtime.state.tally import Tally
from raystream._runtime.time.expiry import DropsTTL
from raystream.graph import Step, StepKind
from raystream.sink_api import Sink, SinkContext, SinkWriter

logger = logging.getLogger(__name__)


class MapOp(Operator):
    # map/filter/chain loop in C: about 8% faster than a comprehension for a C callable (str.split,
    # operator.itemgetter), 2-3% slower for a Python lambda, whose call a comprehension inlines
    def _apply(self, records: list[Any]) -> list[Any]:
        return list(map(self.fn, records))

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        return self._apply(records), times


class FlatMapOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        return list(chain.from_iterable(map(self.fn, records)))

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        outs = list(map(list, map(self.fn, records)))
        return list(chain.from_iterable(outs)), list(chain.from_iterable(map(repeat, times, map(len, outs))))


class FilterOp(Operator):
    def _apply(self, records: list[Any]) -> list[Any]:
        return list(filter(self.fn, records))

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        keep = list(map(truth, map(self.fn, records)))  # truth once per record, as `filter` does
        return list(compress(records, keep)), list(compress(times, keep))


class PassOp(Operator):
    """Records as they come: the step that takes a window step's late records."""

    def process(self, batch: Any) -> Any:
        n = batch_len(batch)
        self.records_in += n
        self.records_out += n
        return batch


_MISSING = object()


class KeyByOp(Operator):
    """Emits a KeyedBatch: keys and values as columns. With `fold` (the function of a
    reduce with combine=True), each key's values of a batch folded into one, keys in the
    order of their last records, as the reduce's mini-batch mode emits them."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.value_fn = step.value_fn
        self.fold = step.fold

    def _apply(self, records: list[Any]) -> KeyedBatch:
        value_fn = self.value_fn
        keys = list(map(self.fn, records))
        values = records if value_fn is None else list(map(value_fn, records))
        return self._folded(keys, values) if self.fold is not None else KeyedBatch(keys, values)

    def _apply_timed(self, records: list[Any], times: list[int]) -> tuple[Any, list[int]]:
        value_fn = self.value_fn  # times are kept per record: nothing is folded
        keys = list(map(self.fn, records))
        return KeyedBatch(keys, records if value_fn is None else list(map(value_fn, records))), times

    def _folded(self, keys: list[Any], values: list[Any]) -> KeyedBatch:
        fold, acc = self.fold, {}
        get = acc.get
        try:
            for k, v in zip(keys, values):
                a = get(k, _MISSING)
                acc[k] = v if a is _MISSING else fold(a, v)
        except Exception:  # noqa: BLE001 - unfolded, the reduce meets the failure and applies the error policy
            return KeyedBatch(keys, values)
        if len(acc) == len(keys):
            return KeyedBatch(keys, values)
        last = list(dict.fromkeys(reversed(keys)))[::-1]  # each key once, where its last record was
        return KeyedBatch(last, list(map(acc.__getitem__, last)))


class ReduceOp(DropsTTL, KeyedOp):
    """Running reduce, `acc = fn(acc, value)` per key. Emits `(key, acc)` for every record;
    with `emit="last"` (the mini-batch mode) only each key's last update of the batch: the
    records of the default mode less each key's earlier updates in the batch, so in the
    order of the keys' last records and, on a stream with event time, with their times."""

    keeps_values = True

    def __init__(self, step: Step):
        super().__init__(step)
        self.emit_last = step.emit == "last"

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        out = self._fold(keys, values, not self.emit_last)
        if self._bad:
            keys, times = _without(keys, self._bad), self._kept_times(times)
        if self.emit_last:
            last = list(dict.fromkeys(reversed(keys)))[::-1]  # each key once, where its last record was
            out = list(map(self.state.__getitem__, last))
            if times is not None:
                times = list(map(dict(zip(keys, times)).__getitem__, last))  # the last record's time wins
            keys = last
        self.written.update(zip(keys, out))  # I1: the last value of each key wins
        return timed(KeyedBatch(keys, out), times)

    def _fold(self, keys: list[Any], values: list[Any], collect: bool) -> list[Any]:
        """Folds the batch into the state; returns every new acc when `collect`. A failing
        record goes to `failed` and into `_bad`, and the loop goes on after it."""
        fn, state = self.fn, self.state
        get = state.get
        out: list[Any] = []
        append = out.append
        keys_left = iter(keys)
        pairs = zip(keys_left, values)  # resumed after a failure: it has moved past the failing record
        while True:
            try:
                if collect:
                    for key, value in pairs:
                        acc = get(key, _MISSING)
                        if acc is not _MISSING:
                            value = fn(acc, value)
                        state[key] = value
                        append(value)
                else:
                    for key, value in pairs:
                        acc = get(key, _MISSING)
                        state[key] = value if acc is _MISSING else fn(acc, value)
                return out
            except Exception as exc:
                bad = len(keys) - length_hint(keys_left) - 1
                self._bad.append(bad)
                self.failed((keys[bad], values[bad]), exc)


def _without(items: list[Any], indexes: list[int]) -> list[Any]:
    drop = set(indexes)
    return [x for i, x in enumerate(items) if i not in drop]


class StatefulMapOp(DropsTTL, KeyedOp):
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
        batch, times = self._arrow_input(batch)
        what = f"<RecordBatch of {batch.num_rows} rows>"
        try:
            out = self.fn(batch)
        except Exception as exc:
            return self._batch_failed(batch, exc)
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
    StepKind.WHERE: WhereOp,
    StepKind.SELECT: SelectOp,
    StepKind.AGGREGATE: AggregateOp,
    StepKind.LATE: PassOp,
}


def build_operator(step: Step, sink_context: SinkContext | None = None) -> Operator:
    if step.kind is StepKind.SINK:
        assert sink_context is not None
        return SinkOp(step, sink_context)
    if step.kind is StepKind.KEY_BY and step.key_columns is not None:
        return KeyColumnsOp(step)
    return _OPERATORS[step.kind](step)


