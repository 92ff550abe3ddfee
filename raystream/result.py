"""What a running or finished job reports: `JobHandle`, `JobStatus`, `JobResult`."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMetrics:
    """Records into and out of one step, summed over its subtasks."""

    records_in: int = 0
    records_out: int = 0
    errors: int = 0  # records a user function raised on (skipped or dead-lettered)


@dataclass(frozen=True)
class CheckpointStats:
    """Checkpoints of a job so far; `last_*` describe the newest completed one."""

    completed: int = 0
    failed: int = 0
    last_id: int = 0
    last_duration: float = 0.0  # seconds from trigger to commit
    last_alignment: float = 0.0  # longest barrier alignment of any subtask, seconds
    last_bytes: int = 0  # snapshot bytes of all subtasks
    refused: int = 0  # checkpoints refused at restore because a snapshot failed verification


@dataclass(frozen=True)
class JobStatus:
    """A point-in-time view of a job: `state` is starting, running, restarting, finished,
    failed or stopped."""

    job_name: str
    state: str
    elapsed: float
    steps: dict[str, StepMetrics] = field(default_factory=dict)
    subtasks: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # "chain[i]" -> process id of that subtask
    checkpoints: CheckpointStats = field(default_factory=CheckpointStats)
    restarts: int = 0
    records_replayed: int = 0  # source records read again after restores (estimated from metrics)
    attempt: int = 1
    coordinator_pid: int = 0
    restores: dict[str, int] = field(default_factory=dict)  # snapshots read from "object_store" / "durable"
    aligning: list[str] = field(default_factory=list)  # subtasks waiting for barriers on some inputs


@dataclass(frozen=True)
class JobResult:
    """The outcome of a finished job.

    `outputs[step_id]` holds what each sink returned: the records of a CollectSink
    (all subtasks, concatenated), or one value per subtask for other sinks.
    """

    job_name: str
    state: str
    duration: float
    steps: dict[str, StepMetrics]
    outputs: dict[str, Any]
    max_in_flight_seen: int = 0
    max_queued_seen: int = 0
    checkpoints: CheckpointStats = field(default_factory=CheckpointStats)
    restarts: int = 0
    records_replayed: int = 0
    run_id: str = ""
    checkpoint_root: str = ""  # <storage>/<job name>: where `raystream checkpoints audit` looks
    restores: dict[str, int] = field(default_factory=dict)  # snapshots read from "object_store" / "durable"

    def records_out(self, step_id: str) -> int:
        return self.steps[step_id].records_out

    def records_in(self, step_id: str) -> int:
        return self.steps[step_id].records_in


class JobHandle:
    """A started job. `wait()` blocks for the result; `stop()` ends its sources; `status()` polls."""

    def __init__(self, job_name: str, supervisor: Any):
        self.job_name = job_name
        self._supervisor = supervisor
        self._result: JobResult | None = None

    @property
    def run_id(self) -> str:
        """The run's id: its checkpoints live under `<checkpoint storage>/<job name>/<run id>`."""
        return self._supervisor.run_id

    def status(self) -> JobStatus:
        if self._result is not None:
            r = self._result
            return JobStatus(r.job_name, r.state, r.duration, r.steps, checkpoints=r.checkpoints,
                             restarts=r.restarts, records_replayed=r.records_replayed)
        return self._supervisor.status()

    def stop(self) -> None:
        """End the sources now; what was read is processed and committed, then the job finishes."""
        if self._result is None:
            self._supervisor.stop()

    def wait(self, *, progress: Callable[[JobStatus], None] | None = None, interval: float = 1.0) -> JobResult:
        """Block until the job ends. `progress(status)` is called about every `interval` seconds."""
        if self._result is None:
            self._result = self._supervisor.wait(progress, interval)  # raises the job's error
        return self._result
