"""What a subtask does with records beside processing them: the error policy (dead
letters) and the exactly-once audit tallies. `RecordPolicies` is a part that each
SubtaskActor owns; it holds no Ray handle, so unit tests build it directly."""
from __future__ import annotations

import json
import logging
from typing import Any

from raystream._runtime.transport.batch import as_records
from raystream._runtime.operators.plain import SinkOp
from raystream._runtime.operators.base import Operator
from raystream._runtime.plan.failure import truncated_repr
from raystream._runtime.checkpointing.rescale import DEAD_LETTERS, RestoredState, writer_context
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.state.tally import Tally
from raystream.graph import Step, StepKind

logger = logging.getLogger(__name__)


class RecordPolicies:
    """Sets up the chain's operators for the job's error policy and audit, continuing
    from the restored state; then collects dead letters and keeps the source's tally."""

    def __init__(self, spec: SubtaskSpec, ops: list[Operator], state: RestoredState | None):
        self.spec = spec
        self.ops = ops
        self.source_step = spec.steps[0] if spec.steps[0].kind is StepKind.SOURCE else None
        self.dead_letters: SinkOp | None = None  # this chain's writer of the dead-letter sink
        self.source_tally: Tally | None = None  # what this source emitted, when audited
        self.source_at: dict[str, Any] | None = None  # partition and offset of the source batch in flight
        self._dead: list[dict[str, Any]] = []
        self._setup_error_policy(state)
        self._setup_audit(state)

    def _setup_error_policy(self, state: RestoredState | None) -> None:
        """Under skip and dead_letter, operators hand failing records to `on_error`."""
        policy, spec = self.spec.errors, self.spec
        if policy.mode == "fail":
            return
        for op in self.ops:
            if not isinstance(op, SinkOp):
                op.on_error = self.on_error
        if policy.mode == "dead_letter":
            step_id = DEAD_LETTERS + spec.steps[0].step_id  # one writer identity per chain
            self.dead_letters = SinkOp(Step(step_id, StepKind.SINK, (), sink=policy.sink),
                                       writer_context(spec, step_id, policy.sink, state))
            if state is not None:
                self.dead_letters.records_in = state.counters.get(step_id, (0, 0))[0]

    def _setup_audit(self, state: RestoredState | None) -> None:
        """Tallies of what sources emit and sinks write, continued from the snapshot."""
        audit = self.spec.audit
        if audit is None:
            return
        restored = state.audit if state else {}
        if self.source_step is not None:
            self.source_tally = Tally(audit.source_id, *restored.get(f"source:{self.source_step.step_id}", (0, 0)))
        for op in self.ops:
            if isinstance(op, SinkOp) and (audit.sinks is None or op.step_id in audit.sinks):
                op.tally = Tally(audit.sink_id, *restored.get(f"sink:{op.step_id}", (0, 0)))

    def on_error(self, step_id: str, record: Any, exc: BaseException) -> None:
        if self.dead_letters is not None:
            self._dead.append({"step_id": step_id, "error": f"{type(exc).__name__}: {exc}",
                               "record": record if _is_json(record) else None,
                               "record_repr": truncated_repr(record), "source": self.source_at})

    def flush_dead_letters(self) -> None:
        """Dead letters of the batch just processed join the same checkpoint as its output."""
        if self._dead:
            dead, self._dead = self._dead, []
            self.dead_letters.process(dead)

    def count_source(self, batch: Any) -> None:
        if self.source_tally is not None:
            self.source_tally.add(as_records(batch))

    def audit_state(self) -> dict[str, tuple[int, int]]:
        tallies = {f"sink:{op.step_id}": op.tally.state() for op in self.ops
                   if isinstance(op, SinkOp) and op.tally is not None}
        if self.source_tally is not None:
            tallies[f"source:{self.source_step.step_id}"] = self.source_tally.state()
        return tallies


def _is_json(record: Any) -> bool:
    """Whether a dead letter can carry the record itself (else only its repr)."""
    try:
        json.dumps(record)
        return True
    except (TypeError, ValueError):
        return False
