"""What a running or finished job reports: `JobHandle`, `JobStatus`, `JobResult`."""
from __future__ import annotations

import dataclasses
import datetime
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


@dataclass(frozen=True, repr=False)
class JobStatus:
    """A point-in-time view of a job: `state` is starting, running, restarting, finished,
    failed or stopped. Printed, it is a one-line summary; every field is an attribute."""

    job_name: str
    state: str
    elapsed: float
    steps: dict[str, StepMetrics] = field(default_factory=dict)
    subtasks: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # "chain[i]" -> process id of that subtask
    checkpoints: CheckpointStats = field(default_factory=CheckpointStats)
    restarts: int = 0
    records_replayed: int = 0  # read again after restores: a lower bound (docs/guide/guarantees.md)
    attempt: int = 1
    coordinator_pid: int = 0
    restores: dict[str, int] = field(default_factory=dict)  # snapshots read from "object_store" / "durable"
    aligning: list[str] = field(default_factory=list)  # subtasks waiting for barriers on some inputs
    recoveries: list[Recovery] = field(default_factory=list)
    waiting: str = ""  # subtasks that wait for resources (a cluster that must grow), in words

    def __repr__(self) -> str:
        cp = self.checkpoints
        restarts = f", {self.restarts} restart{'s' * (self.restarts != 1)}" if self.restarts else ""
        waiting = f"; waiting: {self.waiting}" if self.waiting else ""
        return (f"<JobStatus {self.job_name}: {self.state} for {self.elapsed:.1f}s, {len(self.steps)} steps, "
                f"{self.subtasks} subtasks, {cp.completed} checkpoints{restarts}{waiting}>")


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

    def final_status(self) -> JobStatus:
        """The job's status at its end: what `JobHandle.status()` says once the job ended."""
        return JobStatus(self.job_name, self.state, self.duration, self.steps, checkpoints=self.checkpoints,
                         restarts=self.restarts, records_replayed=self.records_replayed, restores=self.restores,
                         recoveries=self.recoveries)


METRICS_SCHEMA = pa.schema([
    ("step", pa.string()), ("subtask", pa.int32()), ("chain", pa.string()),
    ("records_in", pa.int64()), ("records_out", pa.int64()), ("in_per_s", pa.float64()),
    ("out_per_s", pa.float64()), ("backpressure_s", pa.float64()), ("state_keys", pa.int64()),
    ("snapshot_bytes", pa.int64()), ("alignment_s", pa.float64()), ("late_records", pa.int64()),
    ("watermark", pa.timestamp("ms", tz="UTC")),
])

#: What a terminal shows of `Metrics` (the notebook's table shows every column).
_TEXT_COLUMNS = ("step", "subtask", "records_in", "records_out", "in_per_s", "out_per_s", "backpressure_s",
                 "state_keys")
_TEXT_ROWS = 20  # rows printed in a terminal (a screen); the rest are counted
_HTML_ROWS = 200  # rows of a notebook's table: a big job's thousands would swamp the page
_NAME_WIDTH = 32  # a longer step or chain name is cut in a terminal
_WHOLE = ("in_per_s", "out_per_s")  # rates read better without decimals; other floats are seconds


def _cell(name: str, value: Any) -> str:
    """A figure as the summaries show it: thousands separated, rates whole, seconds to 0.01."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # the schema's time zone, UTC
    if isinstance(value, float):
        return f"{value:,.0f}" if name in _WHOLE else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cut(text: str) -> str:
    return text if len(text) <= _NAME_WIDTH else text[:_NAME_WIDTH - 3] + "..."


@dataclass(frozen=True, repr=False)
class Metrics:
    """What `JobHandle.metrics()` returns: one row per step and subtask, in `table` (a
    `pyarrow.Table`). It works as that table does: `select`, `to_pylist`, `to_pandas`,
    `num_rows`, `column`, `metrics["records_in"]` and every other attribute go to `table`;
    pass `table` itself where a `pyarrow.Table` is required (`isinstance`, `pa.concat_tables`).
    Printed, it is a short aligned table of the key columns; in a notebook, a table of
    all of them."""

    table: pa.Table

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> "Metrics":
        return cls(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "table":  # copy and pickle look for these before `table` is set
            raise AttributeError(name)
        return getattr(self.table, name)

    def __getitem__(self, key: Any) -> Any:
        return self.table[key]

    def __len__(self) -> int:
        return self.table.num_rows

    def __dir__(self) -> list[str]:  # a notebook completes the table's methods too
        return sorted(set(super().__dir__()) | set(dir(self.table)))

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The Arrow stream protocol: `pyarrow.table(m)`, polars and DuckDB read it as the table."""
        return self.table.__arrow_c_stream__(requested_schema)

    def __repr__(self) -> str:
        t = self.table
        if t.num_rows == 0:
            return "<Metrics: no rows (no subtask has reported yet)>"
        names = [n for n in _TEXT_COLUMNS if n in t.schema.names]
        shown = t.select(names).slice(0, _TEXT_ROWS).to_pylist()
        cells = [names] + [[_cut(_cell(n, row[n])) for n in names] for row in shown]
        widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
        text = [f"Metrics: {t.num_rows:,} rows, one per step and subtask (all {t.num_columns} columns: .table)"]
        for line in cells:  # names to the left, figures to the right
            text.append("  ".join(c.ljust(w) if t.schema.field(n).type == pa.string() else c.rjust(w)
                                  for n, c, w in zip(names, line, widths)).rstrip())
        if t.num_rows > len(shown):
            text.append(f"... {t.num_rows - len(shown):,} more rows")
        return "\n".join(text)

    def _repr_html_(self) -> str:
        t = self.table
        names = t.schema.names
        shown = t.slice(0, _HTML_ROWS).to_pylist()
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(n, row[n]))}</td>" for n in names) + "</tr>"
                       for row in shown)
        more = "" if t.num_rows == len(shown) else f"<p>... {t.num_rows - len(shown):,} more rows in <code>.table</code></p>"
        return (f"<p><b>metrics</b>: {t.num_rows:,} rows, one per step and subtask</p>"
                f"<table><tr>{head}</tr>{rows}</table>{more}")


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
        """The job's state and figures now; once it ended (`wait()` returned or raised), its
        final state, finished, stopped or failed, with its final figures."""
        if self._result is not None:
            return self._result.final_status()
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

    def metrics(self) -> Metrics:
        """One row per step and subtask: records in and out, their rates per second over the
        last half second, seconds blocked on backpressure, keys of keyed state, the newest
        snapshot's bytes and alignment. It works as a `pyarrow.Table` (its `table`), prints
        as a short table and shows as a table in a notebook. Job-wide figures are in
        `status()`. The same series go to Ray's metrics (the dashboard, Prometheus) as
        raystream_*."""
        rows = self._result.metrics if self._result is not None else self._supervisor.metrics()
        return Metrics.of(rows)

    def wait(self, *, progress: Callable[[JobStatus], None] | None = None, interval: float = 1.0) -> JobResult:
        """Block until the job ends. `progress(status)` is called about every `interval` seconds."""
        if self._result is None:
            self._result = self._supervisor.wait(progress, interval)  # raises the job's error
        return self._result
