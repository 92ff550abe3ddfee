"""Building a subtask's chain: its operators, continued from the restored state, and the
clock that drives their watermarks and timers; and tuning the process it runs in."""
from __future__ import annotations

import gc

from raystream._runtime.subtask.clock import ChainClock
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.operators.base import KeyedOp, Operator
from raystream._runtime.checkpointing.rescale import RestoredState, writer_context
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.operators.event_time import AssignTimeOp
from raystream._runtime.time.watermarks import WatermarkGenerator
from raystream._runtime.operators.columnar_join import ArrowJoinOp
from raystream._runtime.operators.columnar_lifetimes import LifetimeWindowOp
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.process import DedupOp
from raystream._runtime.operators.ttl import build_ttl_operator
from raystream._runtime.operators.windows import TIMED_OPERATORS, TimedWindows
from raystream.dedup import Dedup
from raystream.graph import StepKind


def build_operators(spec: SubtaskSpec, state: RestoredState | None) -> list[Operator]:
    """One operator per step of the chain (a source with event time: the one that stamps
    its records), with its state, watermark and counters from `state`."""
    ops: list[Operator] = []
    for step in spec.steps:
        if step.kind is StepKind.SOURCE:
            if step.event_time is None:
                continue
            # the source's records get their times before the chain sees them
            op: Operator = AssignTimeOp(step, step.event_time,
                                        WatermarkGenerator(step.event_time, spec.source_partitions, polled=True))
        elif step.kind is StepKind.EVENT_TIME:
            op = AssignTimeOp(step, step.event_time, WatermarkGenerator(step.event_time, [""]))
        elif step.window is not None and step.window.how == "columnar":  # windows over Arrow
            op = ArrowJoinOp(step) if step.kind is StepKind.JOIN else \
                LifetimeWindowOp(step) if step.window.assigner.opened_by_rows else ArrowWindowOp(step)
        elif isinstance(step.fn, Dedup):
            op = DedupOp(step)
        elif step.ttl is not None:
            op = build_ttl_operator(step)
        elif step.kind in TIMED_OPERATORS:
            op = TIMED_OPERATORS[step.kind](step)
        else:
            ctx = writer_context(spec, step.step_id, step.sink, state) if step.kind is StepKind.SINK else None
            op = build_operator(step, ctx)
        if state is not None:
            if isinstance(op, AssignTimeOp):  # the watermark continues where it was
                times = state.event_times.get(step.step_id, {})
                op.generator.restore(times)
                if step.kind is StepKind.SOURCE and spec.subtask == 0:
                    present = set(spec.all_partitions)
                    op.carried = {p: t for p, t in times.items() if p not in present}
            if isinstance(op, KeyedOp):
                # first: RestoreError when the values do not fit the step, before it reads them
                op.restore_meta(state.step_meta.get(step.step_id, []))
                op.restore(state.keyed.get(step.step_id, {}), state.watermarks.get(step.step_id))
            if step.kind is not StepKind.SOURCE:  # a source's counter is its reader's
                op.records_in, op.records_out = state.counters.get(step.step_id, (0, 0))
            if isinstance(op, TimedWindows):
                op.late_records = state.late.get(step.step_id, 0)
                op.restore_group_watermarks(state.group_watermarks.get(step.step_id, {}), spec.runtime.max_parallelism)
            op.errors = state.errors.get(step.step_id, 0)
        ops.append(op)
    return ops


def build_clock(ops: list[Operator], spec: SubtaskSpec) -> ChainClock:
    """The chain's event-time and processing-time clock; the last generator in the chain
    makes the watermark of the steps after it."""
    gens = [i for i, op in enumerate(ops) if isinstance(op, AssignTimeOp)]
    gen_index = gens[-1] if gens else None
    generator = ops[gen_index].generator if gen_index is not None else None
    return ChainClock(ops, spec.n_inputs, generator, gen_index, spec.runtime.watermark_interval)


#: Tracked allocations between two young collections of the cycle collector in a subtask's
#: process (CPython's default: 700). A micro-batch makes tens of thousands of short-lived
#: containers at once (a sink's `(key, value)` tuples, a flat_map's lists) that die
#: together when the batch is done; at 700 each of them was traversed by a collection
#: while it was alive (11-14% of a keyed sink's subtask). Above a batch, most die first.
YOUNG_GC_THRESHOLD = 100_000


def tune_gc() -> None:
    """Collect the young generation every YOUNG_GC_THRESHOLD allocations (older ones as before)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)
