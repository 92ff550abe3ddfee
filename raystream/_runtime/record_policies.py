"""What a subtask does with records beside processing them: the error policy (dead
letters) and the exactly-once audit tallies. A mixin of SubtaskActor."""
from __future__ import annotations

import json
import logging
from typing import Any

from raystream._runtime.operators import SinkOp, truncated_repr
from raystream._runtime.recovery import RestoredState
from raystream.audit import Tally
from raystream.config import Guarantee
from raystream.job import Step
from raystream.sinks import SinkContext

logger = logging.getLogger(__name__)


class RecordPolicies:
    """Needs from the actor: `spec`, `ops`, `source_step`, `dead_letters`, `_dead`,
    `source_tally`, `_source_at`."""

    def _setup_error_policy(self, state: RestoredState | None) -> None:
        """Under skip and dead_letter, operators hand failing records to `_on_error`."""
        policy, spec = self.spec.errors, self.spec
        if policy.mode == "fail":
            return
        for op in self.ops:
            if not isinstance(op, SinkOp):
                op.on_error = self._on_error
        if policy.mode == "dead_letter":
            step_id = f"dead_letters.{spec.steps[0].step_id}"  # one writer identity per chain
            ctx = SinkContext(step_id, spec.subtask, spec.parallelism,
                              transactional=spec.guarantee == Guarantee.EXACTLY_ONCE,
                              resume_state=state.sink_states.get(step_id) if state else None,
                              run_id=spec.run_id, attempt=spec.attempt)
            self.dead_letters = SinkOp(Step(step_id, "sink", (), sink=policy.sink), ctx)
            if state is not None:
                self.dead_letters.records_in = state.counters.get(step_id, (0, 0))[0]

    def _setup_audit(self, state: RestoredState | None) -> None:
        """Tallies of what sources emit and sinks write, continued from the snapshot."""
        audit = self.spec.audit
        if audit is None:
            return
        restored = state.audit if state else {}
        if self.source_step is not None:
            key = f"source:{self.source_step.step_id}"
            self.source_tally = Tally(audit.source_id, *restored.get(key, (0, 0)))
        for op in self.ops:
            if isinstance(op, SinkOp):
                op.tally = Tally(audit.sink_id, *restored.get(f"sink:{op.step_id}", (0, 0)))

    def _audit_state(self) -> dict[str, tuple[int, int]]:
        tallies = {f"sink:{op.step_id}": op.tally.state() for op in self.ops
                   if isinstance(op, SinkOp) and op.tally is not None}
        if self.source_tally is not None:
            tallies[f"source:{self.source_step.step_id}"] = self.source_tally.state()
        return tallies

    def _on_error(self, step_id: str, record: Any, exc: BaseException) -> None:
        if self.dead_letters is not None:
            self._dead.append({"step_id": step_id, "error": f"{type(exc).__name__}: {exc}",
                               "record": record if _is_json(record) else None,
                               "record_repr": truncated_repr(record), "source": self._source_at})

    def _sinks(self) -> list[SinkOp]:
        sinks = [op for op in self.ops if isinstance(op, SinkOp)]
        return sinks + [self.dead_letters] if self.dead_letters is not None else sinks

def _is_json(record: Any) -> bool:
    """Whether a dead letter can carry the record itself (else only its repr)."""
    try:
        json.dumps(record)
        return True
    except (TypeError, ValueError):
        return False

