"""What a running or finished job reports: `JobHandle`, `JobStatus`, `JobResult`."""
from __future__ import annotations

import dataclasses
import html
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from raystream.errors import ConfigError, JobFailedError


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMetrics:
    """Records into and out of one step, summed over its subtasks."""

    records_in: int = 0
    records_out: int = 0
    errors: int = 0  # records a user function raised on (skipped or dead-lettered)
    late: int = 0  # records too late for their window (window steps; see the step's .late stream)


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
class Recovery:
    """One recovery from a failure: what failed, and how long until the job ran again."""

    attempt: int  # the attempt that took over
    failed: str  # what failed: a subtask ("chain[i]"), "checkpoint", "restore", ...
    error: str  # the first line of the error
    seconds: float  # from the failure being noticed to the new attempt running
    replayed: int  # source records read again

    def line(self, job_name: str) -> str:
        return (f"job {job_name} recovered in {self.seconds:.1f}s: {self.failed} failed ({self.error}); "
                f"{self.replayed:,} records replayed")


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
    recoveries: list[Recovery] = field(default_factory=list)
    waiting: str = ""  # subtasks that wait for resources (a cluster that must grow), in words


@dataclass(frozen=True, repr=False)
class JobResult:
    """The outcome of a finished job.

    `outputs[step_id]` holds what each sink returned: the records of a CollectSink
    (all subtasks, concatenated), or one value per subtask for other sinks. Printed, it is
    a one-line summary; in a notebook, a table of its steps.
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
    savepoint: str = ""  # stopped with a final checkpoint: its URI, to start from with from_checkpoint
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the last rows of handle.metrics()
    recoveries: list[Recovery] = field(default_factory=list)

    def records_out(self, step_id: str) -> int:
        return self.steps[step_id].records_out

    def __repr__(self) -> str:
        cp = self.checkpoints
        return (f"<JobResult {self.job_name}: {self.state} in {self.duration:.2f}s, {len(self.steps)} steps, "
                f"{cp.completed} checkpoints, {self.restarts} restarts>")

    def _repr_html_(self) -> str:
        cp = self.checkpoints
        rows = "".join(f"<tr><td>{html.escape(step_id)}</td><td>{m.records_in:,}</td><td>{m.records_out:,}</td>"
                       f"<td>{m.errors:,}</td><td>{m.late:,}</td></tr>" for step_id, m in self.steps.items())
        return (f"<p><b>{html.escape(self.job_name)}</b>: {html.escape(self.state)} in {self.duration:.2f}s; "
                f"{cp.completed} checkpoints, {cp.failed} failed; {self.restarts} restarts</p>"
                "<table><tr><th>step</th><th>records in</th><th>records out</th><th>errors</th><th>late</th></tr>"
                f"{rows}</table>")

    def records_in(self, step_id: str) -> int:
        return self.steps[step_id].records_in


METRICS_SCHEMA = pa.schema([
    ("step", pa.string()), ("subtask", pa.int32()), ("chain", pa.string()),
    ("records_in", pa.int64()), ("records_out", pa.int64()), ("in_per_s", pa.float64()),
    ("out_per_s", pa.float64()), ("backpressure_s", pa.float64()), ("state_keys", pa.int64()),
    ("snapshot_bytes", pa.int64()), ("alignment_s", pa.float64()), ("late_records", pa.int64()),
    ("watermark", pa.timestamp("ms", tz="UTC")),
])


@dataclass(frozen=True)
class Rescale:
    """What `JobHandle.rescale` did: the savepoint it went through and the pause it caused
    (from the stop to the new run processing again)."""

    from_parallelism: int
    to_parallelism: int
    savepoint: str
    pause: float
    run_id: str  # the new run


class JobHandle:
    """A started job. `wait()` blocks for the result; `stop()` ends its sources;
    `rescale(n)` restarts it at another parallelism; `status()` polls."""

    def __init__(self, job_name: str, supervisor: Any):
        self.job_name = job_name
        self._supervisor = supervisor
        self._result: JobResult | None = None

    @property
    def run_id(self) -> str:
        """The run's id. Its checkpoints live under `<checkpoint storage>/<job name>/<run id>`."""
        return self._supervisor.run_id

    def status(self) -> JobStatus:
        if self._result is not None:
            r = self._result
            return JobStatus(r.job_name, r.state, r.duration, r.steps, checkpoints=r.checkpoints,
                             restarts=r.restarts, records_replayed=r.records_replayed)
        return self._supervisor.status()

    def stop(self, *, savepoint: bool = False) -> str | None:
        """End the sources now; what was read is processed and committed, then the job
        finishes. `savepoint=True` waits for that and returns the URI of the final
        checkpoint, to start from with `job.run(from_checkpoint=URI)` or `--from URI`."""
        if self._result is None:
            self._supervisor.stop()
        if not savepoint:
            return None
        result = self.wait()
        if not result.savepoint:
            raise JobFailedError(f"job {self.job_name!r} {result.state} without a final checkpoint, so there is "
                                 "no savepoint: it had ended before the stop")
        return result.savepoint

    def rescale(self, parallelism: int, *, timeout: float = 120.0) -> Rescale:
        """Stop with a savepoint, and start a new run from it with `parallelism` as the
        default parallelism (steps given their own keep it). Exactly-once holds across
        the change; the handle follows the new run. Returns what it did, with the pause."""
        graph = self._supervisor.job
        if not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1:
            raise ConfigError(f"rescale: parallelism must be an integer >= 1; got {parallelism!r}")
        for step in graph.steps:
            if step.kind.keyed and (step.parallelism or parallelism) > graph.runtime.max_parallelism:
                raise ConfigError(f"rescale: step {step.step_id!r} cannot run at parallelism {parallelism}, above "
                                  f"max_parallelism {graph.runtime.max_parallelism} (its key groups)")
        started = time.monotonic()
        savepoint = self.stop(savepoint=True)
        assert savepoint is not None
        self._supervisor = self._supervisor.start_from(dataclasses.replace(graph, parallelism=parallelism),
                                                       savepoint)
        self._result = None
        deadline = time.monotonic() + timeout
        while self._supervisor.status().state not in ("running", "finished", "failed", "stopped"):
            if time.monotonic() > deadline:
                raise JobFailedError(f"rescale: the new run of {self.job_name!r} was not running after {timeout:.0f}s")
            time.sleep(0.05)
        report = Rescale(graph.parallelism, parallelism, savepoint, time.monotonic() - started,
                         self._supervisor.run_id)
        logger.info("job %s rescaled from %d to %d: paused %.2fs", self.job_name, graph.parallelism, parallelism,
                    report.pause)
        return report

    def metrics(self) -> pa.Table:
        """One row per step and subtask: records in and out, their rates per second over the
        last half second, seconds blocked on backpressure, keys of keyed state, the newest
        snapshot's bytes and alignment. Job-wide figures are in `status()`. The same series
        go to Ray's metrics (the dashboard, Prometheus) as raystream_*."""
        rows = self._result.metrics if self._result is not None else self._supervisor.metrics()
        return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)

    def wait(self, *, progress: Callable[[JobStatus], None] | None = None, interval: float = 1.0) -> JobResult:
        """Block until the job ends. `progress(status)` is called about every `interval` seconds."""
        if self._result is None:
            self._result = self._supervisor.wait(progress, interval)  # raises the job's error
        return self._result
