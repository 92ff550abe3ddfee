"""The job graph as plain data: step kinds, steps, and `JobGraph`, the frozen description
of a job that the runtime runs.

This module is a leaf: it imports nothing of raystream at run time, so that both the
public API (`job.py`, which builds graphs) and the runtime (which runs them) can depend
on it without depending on each other.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from raystream.errors import JobDefinitionError

if TYPE_CHECKING:
    from raystream.config import (Audit, CheckpointConfig, ErrorPolicy, Guarantee, Resources, RestartStrategy,
                                  RuntimeConfig)
    from raystream.sink_api import Sink
    from raystream.source_api import Source


class StepKind(str, enum.Enum):
    """What a step does. A str enum, so `StepKind.MAP == "map"`."""

    SOURCE = "source"
    MAP = "map"
    FLAT_MAP = "flat_map"
    FILTER = "filter"
    MAP_BATCHES = "map_batches"
    WHERE = "where"  # Arrow rows where an expression is true
    SELECT = "select"  # Arrow columns by name or expression
    KEY_BY = "key_by"
    REDUCE = "reduce"
    AGGREGATE = "aggregate"  # keyed: running built-in aggregates over Arrow, per distinct key
    STATEFUL_MAP = "stateful_map"
    EVENT_TIME = "event_time"  # assigns event times and makes watermarks
    WINDOW = "window"
    PROCESS = "process"  # keyed, with timers
    JOIN = "join"  # a window join of two keyed inputs
    LATE = "late"  # the records a window step found too late
    SINK = "sink"

    @property
    def keyed(self) -> bool:
        """Takes (key, value) records routed by key, and keeps state per key."""
        return self in (StepKind.REDUCE, StepKind.STATEFUL_MAP, StepKind.WINDOW, StepKind.PROCESS, StepKind.JOIN,
                        StepKind.AGGREGATE)

    @property
    def windowed(self) -> bool:
        """Keeps windows, fired by timers, and has a late output."""
        return self in (StepKind.WINDOW, StepKind.JOIN)

    @property
    def stateful(self) -> bool:
        """Keeps state in checkpoints (offsets, keyed state, sink transactions)."""
        return self.keyed or self in (StepKind.SOURCE, StepKind.SINK)

    def __str__(self) -> str:
        return self.value


#: Step kinds that take (key, value) records and keep state per key.
KEYED_KINDS = frozenset(k for k in StepKind if k.keyed)


@dataclass(frozen=True)
class WindowSpec:
    """What a window step groups (`assigner`, from raystream.windows), how long a fired
    window takes late records, and what it computes: "reduce", "aggregate", "apply" or
    "join" (with the step's `fn`), or "columnar" (over Arrow: a window step's aggregates,
    or a join's `raystream.windows.ArrowJoin`, in the step's `arrow`)."""

    assigner: Any
    allowed_lateness_ms: int = 0
    how: str = "reduce"


@dataclass(frozen=True)
class Step:
    """One node of the logical graph."""

    step_id: str
    kind: StepKind
    inputs: tuple[str, ...]
    fn: Callable[..., Any] | None = None
    source: Source | None = None
    sink: Sink | None = None
    parallelism: int | None = None
    value_fn: Callable[..., Any] | None = None  # key_by only
    resources: Resources | None = None  # what each subtask asks Ray for; None: RuntimeConfig's
    event_time: Any = None  # an EventTime: of a source, or of an event-time step
    window: WindowSpec | None = None  # window and join steps
    on_timer: Callable[..., Any] | None = None  # process steps
    sides: tuple[int, ...] | None = None  # join steps: 0 (left) or 1 (right) per input
    key_columns: tuple[str, ...] | None = None  # key_by on columns (no fn), and aggregate: the key's columns
    # what a columnar step computes: where, a pyarrow.compute.Expression; select, (name,
    # column name or Expression) pairs; aggregate and a columnar window, (name,
    # raystream.aggregates.Aggregate) pairs; a columnar join, a raystream.windows.ArrowJoin
    arrow: Any = None
    emit: str = "every"  # reduce steps: "every" update, or each key's "last" one per micro-batch
    ttl: Any = None  # reduce, stateful_map and process steps: a raystream.TTL, or None (state lives on)
    combine: bool = False  # reduce steps: fold each key's values of a batch before the shuffle
    fold: Callable[..., Any] | None = None  # key_by only: that fold (the planner sets it: plan/physical.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StepKind(self.kind))


@dataclass(frozen=True)
class JobGraph:
    """A job frozen for running: its steps in topological order and its settings. The
    runtime receives this, never a `Job`, so a running job cannot be changed from outside."""

    name: str
    steps: tuple[Step, ...]
    parallelism: int
    guarantee: Guarantee
    checkpoint: CheckpointConfig
    runtime: RuntimeConfig
    restart: RestartStrategy
    errors: ErrorPolicy
    audit: Audit | None = None

    @property
    def step_ids(self) -> list[str]:
        return [s.step_id for s in self.steps]

    def parallelism_of(self, step: Step) -> int:
        return step.parallelism or self.parallelism

    @property
    def keyed(self) -> bool:
        """Whether any step keeps keyed state."""
        return any(s.kind.keyed for s in self.steps)

    @property
    def sources(self) -> list[Step]:
        return [s for s in self.steps if s.kind is StepKind.SOURCE]


class StepTable(dict):
    """The steps of a job being defined, by id, in the order they were added (a
    topological order): what a Job and its streams add to, so a stream needs only this
    table, not the Job's class. A table is its job's: equal only to itself, and hashable,
    as the Job is."""

    def __init__(self, job: Any = None, job_name: str = ""):
        super().__init__()
        self.job = job  # the Job whose steps these are (`stream.job`)
        self.job_name = job_name

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def add(self, step: Step) -> None:
        if step.step_id in self:
            raise JobDefinitionError(
                f"step id {step.step_id!r} is used twice in job {self.job_name!r}; step ids must be unique")
        self[step.step_id] = step
