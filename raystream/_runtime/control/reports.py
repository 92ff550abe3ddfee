"""What the coordinator reports: subtask reports summed into step metrics and, at the
end, the job's outcome (its result or its failure)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raystream._runtime.plan.failure import Failure
from raystream._runtime.plan.specs import SubtaskReport
from raystream.result import JobResult, JobStatus, StepMetrics


@dataclass
class JobOutcome:
    """A job's end: its result, or its failure with the figures it had then (`status`,
    the rows of `metrics()`), which the driver keeps once the coordinator is gone."""

    result: JobResult | None
    failure: Failure | None
    status: JobStatus | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def sum_steps(order: list[str], reports: list[SubtaskReport]) -> dict[str, StepMetrics]:
    """Counters summed over subtasks, in the job's step order."""
    totals: dict[str, list[int]] = {step_id: [0, 0, 0, 0] for step_id in order}
    for r in reports:
        for step_id, (n_in, n_out) in r.steps.items():
            t = totals.setdefault(step_id, [0, 0, 0, 0])
            t[0] += n_in
            t[1] += n_out
        for step_id, n in r.errors.items():
            totals.setdefault(step_id, [0, 0, 0, 0])[2] += n
        for step_id, n in r.late.items():
            totals.setdefault(step_id, [0, 0, 0, 0])[3] += n
    return {k: StepMetrics(*v) for k, v in totals.items()}


def sink_outputs(reports: list[SubtaskReport]) -> dict[str, Any]:
    """What each sink's writers returned at the end, in subtask order; lists (CollectSink)
    are concatenated over subtasks."""
    outputs: dict[str, Any] = {}
    for report in sorted(reports, key=lambda r: (r.chain_name, r.subtask)):
        for step_id, value in report.sink_results.items():
            outputs.setdefault(step_id, []).append(value)
    for step_id, values in outputs.items():
        if all(isinstance(v, list) for v in values):
            outputs[step_id] = [r for v in values for r in v]
    return outputs
