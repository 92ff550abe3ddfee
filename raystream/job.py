"""The job: `Job` holds the steps that its streams (raystream/stream.py) add, and runs
them. Building a job runs nothing.

Every step takes a step id first. Step ids name the state a step keeps in checkpoints,
so they must be unique in the job and stay stable across runs.

    job = rs.Job("wordcount", parallelism=2)
    lines = job.source("lines", rs.sources.FileSource("book.txt"))
    words = lines.flat_map("split", str.split)
    counts = words.key_by("by_word", lambda w: w, value=lambda w: 1).reduce("count", operator.add)
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

from raystream._checks import STEP_ID, check_event_time, check_parallelism, check_resources, check_step_id
from raystream.config import Audit, CheckpointConfig, ErrorPolicy, Guarantee, Resources, RestartStrategy, RuntimeConfig
from raystream.errors import ConfigError, JobDefinitionError
from raystream.dedup import Dedup
from raystream.event_time import EventTime
from raystream.graph import KEYED_KINDS, JobGraph, Step, StepKind, StepTable
from raystream.result import JobHandle, JobResult
from raystream.source_api import Source
from raystream.stream import KeyedStream, Stream, WindowedStream, WindowOutput

__all__ = ["KEYED_KINDS", "Job", "KeyedStream", "Step", "Stream", "WindowOutput", "WindowedStream"]


#: The job file the `raystream` command is importing, if any: a job file defines `job` and
#: runs nothing when imported (the command runs it). Process-wide, not a context variable:
#: a thread the file starts while it is imported must be refused too.
_importing: str | None = None


@contextlib.contextmanager
def loading_job_file(path: str) -> Iterator[None]:
    """While `path` is imported, starting a job is refused: the command runs `job` itself."""
    global _importing
    before, _importing = _importing, path
    try:
        yield
    finally:
        _importing = before


def importing_job_file() -> str | None:
    """The job file being imported by the `raystream` command, if any."""
    return _importing


def timed_steps(steps: dict[str, Step]) -> dict[str, bool]:
    """Whether each step's output carries event times."""
    timed: dict[str, bool] = {}
    for step in steps.values():  # insertion order is a topological order
        inputs = [timed[i] for i in step.inputs]
        if step.kind in (StepKind.SOURCE, StepKind.EVENT_TIME):
            timed[step.step_id] = step.event_time is not None
        elif step.kind.windowed and step.window.assigner.clock == "event":
            timed[step.step_id] = True
        else:
            timed[step.step_id] = bool(inputs) and all(inputs)
        if inputs and any(inputs) != all(inputs) and step.kind is not StepKind.EVENT_TIME:
            raise JobDefinitionError(
                f"step {step.step_id!r} takes streams with and without event time ({', '.join(step.inputs)}); "
                "give every input event time (EventTime on its source, or a with_event_time step) or none")
        if isinstance(step.fn, Dedup) and step.fn.clock == "event" and not all(inputs):
            raise JobDefinitionError(
                f"step {step.step_id!r} deduplicates by event time, but its input has none; give the source "
                "event_time=rs.EventTime(...), add .with_event_time(...) before the key_by, or dedup with "
                "time=\"processing\"")
        if step.ttl is not None and step.ttl.time == "event" and not all(inputs):
            raise JobDefinitionError(
                f"step {step.step_id!r} has a TTL by event time, but its input has none; give the source "
                "event_time=rs.EventTime(...), add .with_event_time(...) before the key_by, or use "
                "ttl=rs.TTL(duration, time=\"processing\")")
        if step.kind.windowed and step.window.assigner.clock == "event" and not all(inputs):
            raise JobDefinitionError(
                f"step {step.step_id!r} windows by event time, but its input has none; give the source "
                "event_time=rs.EventTime(...), or add .with_event_time(...) before the key_by")
    return timed


def _check_job_name(name: object) -> str:
    if not isinstance(name, str) or not STEP_ID.fullmatch(name):
        raise JobDefinitionError(
            f"job name must be letters, digits, '_', '-' or '.' (it names checkpoint storage); got {name!r}"
        )
    return name


class Job:
    """A named dataflow and its settings. Build it with `source(...)` and stream methods."""

    def __init__(
        self,
        name: str,
        *,
        parallelism: int = 1,
        guarantee: Guarantee | str = Guarantee.EXACTLY_ONCE,
        checkpoint: CheckpointConfig | None = None,
        runtime: RuntimeConfig | None = None,
        restart: RestartStrategy | None = None,
        errors: ErrorPolicy | str = "fail",
        audit: Any = None,
    ):
        self.name = _check_job_name(name)
        self.parallelism: int = check_parallelism(f"job {name!r}", parallelism) or 1
        self.guarantee = Guarantee.parse(guarantee)
        if checkpoint is not None and not isinstance(checkpoint, CheckpointConfig):
            raise ConfigError(f"checkpoint must be a raystream.CheckpointConfig; got {checkpoint!r}")
        self.checkpoint = checkpoint or CheckpointConfig()
        if runtime is not None and not isinstance(runtime, RuntimeConfig):
            raise ConfigError(f"runtime must be a raystream.RuntimeConfig; got {runtime!r}")
        self.runtime = runtime or RuntimeConfig()
        if restart is not None and not isinstance(restart, RestartStrategy):
            raise ConfigError(f"restart must be a raystream.RestartStrategy; got {restart!r}")
        self.restart = restart or RestartStrategy()
        self.errors = ErrorPolicy.parse(errors)
        if audit is not None and not isinstance(audit, Audit):
            raise ConfigError(f"audit must be a raystream.Audit; got {audit!r}")
        self.audit: Audit | None = audit
        self.steps = StepTable(self, self.name)

    # --- building ---------------------------------------------------------------------

    def source(self, step_id: str, source: Source, *, event_time: EventTime | None = None,
               parallelism: int | None = None, resources: Resources | None = None) -> "Stream":
        """Add an input; returns the stream of its records. With `event_time` its records
        carry event times, and watermarks are made per source partition."""
        step_id = check_step_id(step_id)
        if not isinstance(source, Source):
            raise JobDefinitionError(
                f"step {step_id!r}: source must be a raystream.sources.Source; got {type(source).__name__}"
            )
        check_event_time(step_id, event_time, allow_none=True)
        self._add(Step(step_id, StepKind.SOURCE, (), source=source, event_time=event_time,
                       parallelism=check_parallelism(f"step {step_id!r}", parallelism),
                       resources=check_resources(step_id, resources)))
        return Stream(self.steps, (step_id,))

    def _add(self, step: Step) -> None:
        self.steps.add(step)

    # --- settings ---------------------------------------------------------------------

    def with_options(
        self,
        *,
        parallelism: int | None = None,
        guarantee: Guarantee | str | None = None,
        checkpoint: CheckpointConfig | None = None,
        runtime: RuntimeConfig | None = None,
        restart: RestartStrategy | None = None,
        errors: ErrorPolicy | str | None = None,
        audit: Any = ...,
    ) -> "Job":
        """A copy of this job with some settings replaced (the graph is shared)."""
        job = copy.copy(self)
        if parallelism is not None:
            job.parallelism = check_parallelism(f"job {self.name!r}", parallelism) or 1
        if guarantee is not None:
            job.guarantee = Guarantee.parse(guarantee)
        if checkpoint is not None:
            job.checkpoint = checkpoint
        if runtime is not None:
            job.runtime = runtime
        if restart is not None:
            job.restart = restart
        if errors is not None:
            job.errors = ErrorPolicy.parse(errors)
        if audit is not ...:  # None turns the audit off
            job.audit = audit
        return job

    def validate(self) -> None:
        """Check the whole graph; raises JobDefinitionError naming the step to fix."""
        _check_job_name(self.name)  # again: it names checkpoint storage, and `name` may have been set since
        if not any(s.kind is StepKind.SOURCE for s in self.steps.values()):
            raise JobDefinitionError(f"job {self.name!r} has no source; add one with job.source(...)")
        timed_steps(self.steps)  # raises on a step whose inputs' event time does not fit it
        consumed = {i for s in self.steps.values() for i in s.inputs}
        for step in self.steps.values():
            if step.kind is not StepKind.SINK and step.step_id not in consumed:
                raise JobDefinitionError(
                    f"step {step.step_id!r} has no sink: its output goes nowhere; end the stream with .sink(...)"
                )
            if step.kind.keyed:
                p = step.parallelism or self.parallelism
                if p > self.runtime.max_parallelism:
                    raise JobDefinitionError(
                        f"step {step.step_id!r}: parallelism {p} exceeds max_parallelism "
                        f"{self.runtime.max_parallelism}; raise RuntimeConfig.max_parallelism"
                    )

    # --- running ----------------------------------------------------------------------

    def run(self, *, resume: bool = False, from_checkpoint: str | None = None,
            allow_non_restored_state: bool = False) -> JobResult:
        """Run the job to the end of its sources and return the result.

        `resume=True` continues the newest run of this job from its newest complete
        checkpoint (after the whole program was stopped). `from_checkpoint=URI` starts a
        new run from a savepoint or any retained checkpoint (of this job or another, of
        this graph or a changed one: state belongs to step ids), refusing one with state
        for steps this job lacks unless `allow_non_restored_state`. Without RAY_ADDRESS
        a local Ray is started (bound to 127.0.0.1); with it the job runs on that cluster.
        """
        return self.start(resume=resume, from_checkpoint=from_checkpoint,
                          allow_non_restored_state=allow_non_restored_state).wait()

    def start(self, *, resume: bool = False, from_checkpoint: str | None = None,
              allow_non_restored_state: bool = False) -> JobHandle:
        """Start the job and return a handle with `wait()`, `stop()`, `rescale()` and
        `status()`; it returns at once, so a notebook cell does not block."""
        if _importing is not None:
            raise JobDefinitionError(
                f"{_importing} starts a job when it is imported; `raystream run` runs `job` itself, so "
                f"put job.run() under `if __name__ == \"__main__\":`")
        graph = self.freeze()
        # Imported here so that `import raystream` (a notebook, a CLI --help) does not load
        # Ray: the public API loads the runtime only when a job starts or checkpoints are read.
        from raystream._runtime.control.driver import start_job

        return JobHandle(self.name, start_job(graph, resume=resume, from_checkpoint=from_checkpoint,
                                              allow_non_restored_state=allow_non_restored_state))

    def freeze(self) -> JobGraph:
        """Validate the job and return its frozen description, which is what runs."""
        self.validate()
        return JobGraph(self.name, tuple(self.steps.values()), self.parallelism, self.guarantee, self.checkpoint,
                        self.runtime, self.restart, self.errors, self.audit)

    def __repr__(self) -> str:
        return f"Job({self.name!r}, parallelism={self.parallelism}, steps={list(self.steps)})"
