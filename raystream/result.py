"""What a running or finished job reports: `JobHandle`, `JobStatus`, `JobResult`."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from raystream.errors import JobFailedError, SourceError, StepFailedError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMetrics:
    """Records into and out of one step, summed over its subtasks."""

    records_in: int = 0
    records_out: int = 0


@dataclass(frozen=True)
class JobStatus:
    """A point-in-time view of a job: `state` is running, finished, failed or stopped."""

    job_name: str
    state: str
    elapsed: float
    steps: dict[str, StepMetrics] = field(default_factory=dict)
    subtasks: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # "chain[i]" -> process id of that subtask


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

    def records_out(self, step_id: str) -> int:
        return self.steps[step_id].records_out

    def records_in(self, step_id: str) -> int:
        return self.steps[step_id].records_in


@dataclass(frozen=True)
class Failure:
    """Why a job stopped (plain data sent from the runtime to the driver)."""

    kind: str  # "record" | "source" | "internal" | "crash"
    step_id: str
    record_repr: str
    error: str
    traceback_text: str

    def to_error(self) -> JobFailedError:
        if self.kind == "record":
            return StepFailedError(self.step_id, self.record_repr, self.error, self.traceback_text)
        if self.kind == "source":
            err = JobFailedError(f"source {self.step_id!r} failed: {self.error}")
            err.__cause__ = SourceError(self.error)
            return err
        return JobFailedError(f"{self.step_id} failed: {self.error}\n{self.traceback_text}")


class JobHandle:
    """A started job. `wait()` blocks for the result; `stop()` ends its sources; `status()` polls."""

    def __init__(self, job_name: str, coordinator: Any, run_ref: Any, on_exit: Callable[[], None]):
        self.job_name = job_name
        self._coordinator = coordinator
        self._run_ref = run_ref
        self._on_exit = on_exit
        self._result: JobResult | None = None

    def status(self) -> JobStatus:
        import ray

        if self._result is not None:
            r = self._result
            return JobStatus(r.job_name, r.state, r.duration, r.steps)
        return ray.get(self._coordinator.status.remote())

    def stop(self) -> None:
        """End the sources now; the records already read are processed and the job finishes."""
        import ray

        if self._result is None:
            ray.get(self._coordinator.stop.remote())

    def wait(self, *, progress: Callable[[JobStatus], None] | None = None, interval: float = 1.0) -> JobResult:
        """Block until the job ends. `progress(status)` is called about every `interval` seconds."""
        import ray

        if self._result is not None:
            return self._result
        try:
            while True:
                ready, _ = ray.wait([self._run_ref], timeout=interval)
                if ready:
                    break
                if progress is not None:
                    try:
                        progress(self.status())
                    except Exception:  # a progress display must never fail the job
                        logger.debug("progress callback failed", exc_info=True)
            outcome = ray.get(self._run_ref)
        finally:
            self._on_exit()
        if outcome.failure is not None:
            raise outcome.failure.to_error()
        self._result = outcome.result
        return self._result
