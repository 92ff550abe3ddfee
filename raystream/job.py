"""The job graph: `Job`, `Stream` and `KeyedStream` describe a dataflow and run nothing.

Every step takes a step id first. Step ids name the state a step keeps in checkpoints,
so they must be unique in the job and stay stable across runs.

    job = rs.Job("wordcount", parallelism=2)
    lines = job.source("lines", rs.sources.FileSource("book.txt"))
    words = lines.flat_map("split", str.split)
    counts = words.key_by("by_word", lambda w: w, value=lambda w: 1).reduce("count", operator.add)
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from raystream.audit import Audit
from raystream.config import CheckpointConfig, ErrorPolicy, Guarantee, Resources, RestartStrategy, RuntimeConfig
from raystream.errors import ConfigError, JobDefinitionError
from raystream.event_time import EventTime, duration_ms
from raystream.graph import KEYED_KINDS, JobGraph, Step, StepKind, WindowSpec
from raystream.result import JobHandle, JobResult
from raystream.sinks import Sink
from raystream.sources import Source
from raystream.windows import Aggregator, Assigner

__all__ = ["KEYED_KINDS", "Job", "KeyedStream", "Step", "Stream", "WindowOutput", "WindowedStream"]

_STEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def _check_step_id(step_id: object) -> str:
    if not isinstance(step_id, str) or not _STEP_ID.match(step_id):
        raise JobDefinitionError(
            f"step id must be a string of letters, digits, '_', '-' or '.' (at most 100, "
            f"starting with a letter or digit); got {step_id!r}"
        )
    return step_id


def _check_fn(step_id: str, what: str, fn: object) -> Callable[..., Any]:
    if not callable(fn):
        raise JobDefinitionError(f"step {step_id!r}: {what} must be callable; got {type(fn).__name__} {fn!r}")
    return fn  # type: ignore[return-value]


def _check_resources(step_id: str, resources: object) -> Resources | None:
    if resources is not None and not isinstance(resources, Resources):
        raise JobDefinitionError(f"step {step_id!r}: resources must be a raystream.Resources; got {resources!r}")
    return resources


def _check_event_time(step_id: str, event_time: object, *, allow_none: bool = False) -> None:
    if event_time is None and allow_none:
        return
    if not isinstance(event_time, EventTime):
        raise JobDefinitionError(f"step {step_id!r}: event_time must be a raystream.EventTime; got {event_time!r}")


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
        if step.kind.windowed and step.window.assigner.clock == "event" and not all(inputs):
            raise JobDefinitionError(
                f"step {step.step_id!r} windows by event time, but its input has none; give the source "
                "event_time=rs.EventTime(...), or add .with_event_time(...) before the key_by")
    return timed


def _check_event_times(steps: dict[str, Step]) -> None:
    timed_steps(steps)


def _check_parallelism(where: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobDefinitionError(f"{where}: parallelism must be an integer >= 1; got {value!r}")
    return value


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
        if not isinstance(name, str) or not _STEP_ID.match(name):
            raise JobDefinitionError(
                f"job name must be letters, digits, '_', '-' or '.' (it names checkpoint storage); got {name!r}"
            )
        self.name = name
        self.parallelism: int = _check_parallelism(f"job {name!r}", parallelism) or 1
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
        self.steps: dict[str, Step] = {}

    # --- building ---------------------------------------------------------------------

    def source(self, step_id: str, source: Source, *, event_time: EventTime | None = None,
               parallelism: int | None = None, resources: Resources | None = None) -> "Stream":
        """Add an input; returns the stream of its records. With `event_time` its records
        carry event times, and watermarks are made per source partition."""
        step_id = _check_step_id(step_id)
        if not isinstance(source, Source):
            raise JobDefinitionError(
                f"step {step_id!r}: source must be a raystream.sources.Source; got {type(source).__name__}"
            )
        _check_event_time(step_id, event_time, allow_none=True)
        self._add(Step(step_id, StepKind.SOURCE, (), source=source, event_time=event_time,
                       parallelism=_check_parallelism(f"step {step_id!r}", parallelism),
                       resources=_check_resources(step_id, resources)))
        return Stream(self, (step_id,))

    def _add(self, step: Step) -> None:
        if step.step_id in self.steps:
            raise JobDefinitionError(f"step id {step.step_id!r} is used twice in job {self.name!r}; step ids must be unique")
        self.steps[step.step_id] = step

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
            job.parallelism = _check_parallelism(f"job {self.name!r}", parallelism) or 1
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
        if not any(s.kind is StepKind.SOURCE for s in self.steps.values()):
            raise JobDefinitionError(f"job {self.name!r} has no source; add one with job.source(...)")
        _check_event_times(self.steps)
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
        graph = self.freeze()
        # The one import of the runtime from the public API, here so that
        # `import raystream` (a notebook, a CLI --help) does not load Ray.
        from raystream._runtime.driver import start_job

        return JobHandle(self.name, start_job(graph, resume=resume, from_checkpoint=from_checkpoint,
                                              allow_non_restored_state=allow_non_restored_state))

    def freeze(self) -> JobGraph:
        """Validate the job and return its frozen description, which is what runs."""
        self.validate()
        return JobGraph(self.name, tuple(self.steps.values()), self.parallelism, self.guarantee, self.checkpoint,
                        self.runtime, self.restart, self.errors, self.audit)

    def __repr__(self) -> str:
        return f"Job({self.name!r}, parallelism={self.parallelism}, steps={list(self.steps)})"


@dataclass(frozen=True)
class Stream:
    """The records flowing out of one or more steps. Its methods add steps to the job."""

    job: Job
    upstream: tuple[str, ...]
    after_sink: str | None = field(default=None)

    def _then(self, step_id: str, kind: StepKind, fn: Callable[..., Any] | None, what: str,
              parallelism: int | None, resources: Resources | None = None) -> Step:
        step_id = _check_step_id(step_id)
        if self.after_sink is not None:
            raise JobDefinitionError(
                f"step {step_id!r} comes after sink {self.after_sink!r}: a sink ends its stream; "
                "apply the step to the stream before the sink instead"
            )
        if fn is not None or kind is not StepKind.SINK:
            fn = _check_fn(step_id, what, fn)
        step = Step(step_id, kind, self.upstream, fn=fn,
                    parallelism=_check_parallelism(f"step {step_id!r}", parallelism),
                    resources=_check_resources(step_id, resources))
        self.job._add(step)
        return step

    def _stream(self, step: Step) -> "Stream":
        return Stream(self.job, (step.step_id,))

    def map(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """One output per record: `fn(record)`."""
        return self._stream(self._then(step_id, StepKind.MAP, fn, "the map function", parallelism, resources))

    def flat_map(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Zero or more outputs per record: the items of the iterable `fn(record)`."""
        return self._stream(self._then(step_id, StepKind.FLAT_MAP, fn, "the flat_map function", parallelism, resources))

    def filter(self, step_id: str, fn: Callable[[Any], bool], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """The records for which `fn(record)` is true."""
        return self._stream(self._then(step_id, StepKind.FILTER, fn, "the predicate", parallelism, resources))

    def map_batches(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Vectorized step: `fn(pyarrow.RecordBatch) -> RecordBatch | Table` on each micro-batch.

        Dict records become columns by key; any other records become one column "value".
        """
        return self._stream(self._then(step_id, StepKind.MAP_BATCHES, fn, "the batch function", parallelism, resources))

    def with_event_time(self, step_id: str, event_time: EventTime, *, parallelism: int | None = None,
                        resources: Resources | None = None) -> "Stream":
        """Records get the event time `event_time.timestamp_fn(record)`, and the watermark
        follows them from here on (replacing any watermark from upstream)."""
        _check_event_time(step_id, event_time)
        step = self._then(step_id, StepKind.EVENT_TIME, event_time.timestamp_fn, "the timestamp function",
                          parallelism, resources)
        self.job.steps[step.step_id] = dataclasses.replace(step, event_time=event_time)
        return Stream(self.job, (step.step_id,))

    def key_by(self, step_id: str, key_fn: Callable[[Any], Any], *, value: Callable[[Any], Any] | None = None,
               parallelism: int | None = None, resources: Resources | None = None) -> "KeyedStream":
        """Records become `(key_fn(record), value(record))` (the record itself without
        `value`) and are routed by key to keyed steps."""
        if value is not None:
            _check_fn(step_id, "the value function", value)
        step = self._then(step_id, StepKind.KEY_BY, key_fn, "the key function", parallelism, resources)
        if value is not None:
            step = dataclasses.replace(step, value_fn=value)
            self.job.steps[step.step_id] = step
        return KeyedStream(self.job, (step.step_id,))

    def union(self, *others: "Stream") -> "Stream":
        """One stream of the records of this stream and `others`, in no particular order."""
        if not others:
            raise JobDefinitionError("union needs at least one other stream")
        streams = (self, *others)
        for s in streams:
            if not isinstance(s, Stream):
                raise JobDefinitionError(f"union takes streams; got {type(s).__name__}")
            if s.job is not self.job:
                raise JobDefinitionError("union can only merge streams of the same job")
            if s.after_sink is not None:
                raise JobDefinitionError(f"cannot union the stream ended by sink {s.after_sink!r}")
        upstream = tuple(u for s in streams for u in s.upstream)
        if len(set(upstream)) != len(upstream):
            raise JobDefinitionError(f"union merges the same stream twice ({', '.join(upstream)})")
        keyed = all(isinstance(s, KeyedStream) for s in streams)
        return (KeyedStream if keyed else Stream)(self.job, upstream)

    def sink(self, step_id: str, sink: Sink, *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Write the records to `sink`. The returned stream takes no further steps."""
        if not isinstance(sink, Sink):
            raise JobDefinitionError(
                f"step {step_id!r}: sink must be a raystream.sinks.Sink; got {type(sink).__name__}"
            )
        step = self._then(step_id, StepKind.SINK, None, "", parallelism, resources)
        self.job.steps[step.step_id] = dataclasses.replace(step, sink=sink)
        return Stream(self.job, (), after_sink=step.step_id)

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: reduce needs a keyed stream; call key_by(...) first")

    def stateful_map(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: stateful_map needs a keyed stream; call key_by(...) first")

    def window(self, assigner: Any, *, allowed_lateness: Any = 0) -> "WindowedStream":
        raise JobDefinitionError("window needs a keyed stream; call key_by(...) first")


@dataclass(frozen=True)
class KeyedStream(Stream):
    """A stream of `(key, value)` records, routed by key to keyed steps."""

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> Stream:
        """Running reduce per key: `acc = fn(acc, value)`; emits `(key, acc)` on every update."""
        return self._stream(self._then(step_id, StepKind.REDUCE, fn, "the reduce function", parallelism, resources))

    def stateful_map(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> Stream:
        """`fn(state_or_None, value) -> (new_state_or_None, output)` per key; emits `(key, output)`.

        Returning None as the new state deletes the key's state.
        """
        return self._stream(self._then(step_id, StepKind.STATEFUL_MAP, fn, "the function", parallelism, resources))

    def process(self, step_id: str, on_record: Callable[[Any, Any], None], *,
                on_timer: Callable[[Any, Any], None] | None = None, parallelism: int | None = None,
                resources: Resources | None = None) -> Stream:
        """`on_record(ctx, value)` per record, `on_timer(ctx, when)` per timer that comes
        due; both emit with `ctx.emit(output)`, which becomes `(key, output)`. `ctx` is a
        `raystream.ProcessContext`: the key's state, its event- and processing-time
        timers, the record's time and the watermark."""
        step = self._then(step_id, StepKind.PROCESS, on_record, "on_record", parallelism, resources)
        if on_timer is not None:
            _check_fn(step_id, "on_timer", on_timer)
            self.job.steps[step.step_id] = dataclasses.replace(step, on_timer=on_timer)
        return self._stream(step)

    def window(self, assigner: Any, *, allowed_lateness: Any = 0) -> "WindowedStream":
        """Group each key's records into the windows of `assigner` (raystream.windows);
        finish with `.reduce`, `.aggregate` or `.apply`, which name the step."""
        if not isinstance(assigner, Assigner):
            raise JobDefinitionError(
                f"window takes a raystream.windows assigner (Tumbling, Sliding, Session); got {assigner!r}")
        return WindowedStream(self, assigner, allowed_lateness)

    def join(self, step_id: str, other: "KeyedStream", window: Any, fn: Callable[[Any, Any], Any], *,
             parallelism: int | None = None, resources: Resources | None = None) -> "WindowOutput":
        """Window join: for each key and window of `window` (Tumbling or Sliding, event
        time), `fn(left, right)` for every pair of a record of this stream and one of
        `other`, emitted as `(key, WindowResult(start, end, fn(left, right)))` when the
        window fires. Records too late for their window go to `.late`."""
        if not isinstance(other, KeyedStream) or other.job is not self.job:
            raise JobDefinitionError(f"step {step_id!r}: join takes a keyed stream of the same job")
        if not isinstance(window, Assigner) or window.merging or window.clock != "event":
            raise JobDefinitionError(
                f"step {step_id!r}: a join takes a Tumbling or Sliding event-time window; got {window!r}")
        if set(self.upstream) & set(other.upstream):
            raise JobDefinitionError(f"step {step_id!r}: a stream cannot be joined with itself")
        window.check(step_id)
        step = self._then(step_id, StepKind.JOIN, fn, "the join function", parallelism, resources)
        step = dataclasses.replace(step, inputs=self.upstream + other.upstream,
                                   sides=(0,) * len(self.upstream) + (1,) * len(other.upstream),
                                   window=WindowSpec(window, 0, "join"))
        self.job.steps[step.step_id] = step
        return WindowOutput(self.job, (step.step_id,))


@dataclass(frozen=True)
class WindowedStream:
    """A keyed stream grouped into windows; `.reduce`, `.aggregate` or `.apply` make the step."""

    keyed: KeyedStream
    assigner: Any
    allowed_lateness: Any = 0

    def _window_step(self, step_id: str, how: str, fn: Any, what: str, parallelism: int | None,
                     resources: Resources | None) -> "WindowOutput":
        step_id = _check_step_id(step_id)
        self.assigner.check(step_id)
        lateness = duration_ms(self.allowed_lateness, f"step {step_id!r}: allowed_lateness")
        if lateness and self.assigner.clock == "processing":
            raise JobDefinitionError(f"step {step_id!r}: processing-time windows take no allowed lateness")
        step = self.keyed._then(step_id, StepKind.WINDOW, fn, what, parallelism, resources)
        self.keyed.job.steps[step_id] = dataclasses.replace(step, window=WindowSpec(self.assigner, lateness, how))
        return WindowOutput(self.keyed.job, (step_id,))

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
               resources: Resources | None = None) -> "WindowOutput":
        """`fn(acc, value) -> acc` over each window's values; emits `(key, WindowResult)`."""
        return self._window_step(step_id, "reduce", fn, "the reduce function", parallelism, resources)

    def aggregate(self, step_id: str, aggregator: Any, *, parallelism: int | None = None,
                  resources: Resources | None = None) -> "WindowOutput":
        """A `raystream.windows.Aggregator` (create, add, merge, result) per window."""
        if not isinstance(aggregator, Aggregator):
            raise JobDefinitionError(f"step {step_id!r}: aggregate takes a raystream.windows.Aggregator; "
                                     f"got {aggregator!r}")
        return self._window_step(step_id, "aggregate", aggregator.add, "the aggregator", parallelism,
                                 resources)._with_fn(aggregator)

    def apply(self, step_id: str, fn: Callable[[Any, Any, list[Any]], Any], *, parallelism: int | None = None,
              resources: Resources | None = None) -> "WindowOutput":
        """`fn(key, window, values) -> result` once per window with all of its values."""
        return self._window_step(step_id, "apply", fn, "the window function", parallelism, resources)


@dataclass(frozen=True)
class WindowOutput(Stream):
    """The results of a window step; `.late` is the stream of records that came too late."""

    def _with_fn(self, fn: Any) -> "WindowOutput":
        step_id = self.upstream[0]
        self.job.steps[step_id] = dataclasses.replace(self.job.steps[step_id], fn=fn)
        return self

    @property
    def late(self) -> KeyedStream:
        """`(key, value)` records too late for every window they belong to (beyond the
        allowed lateness). Its step id is "<window step>.late"."""
        window_id = self.upstream[0]
        step_id = f"{window_id}.late"
        if step_id not in self.job.steps:
            self.job._add(Step(step_id, StepKind.LATE, (window_id,), parallelism=self.job.steps[window_id].parallelism))
        return KeyedStream(self.job, (step_id,))
