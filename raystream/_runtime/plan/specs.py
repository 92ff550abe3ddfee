"""Plain data passed between the coordinator and the subtask actors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raystream._runtime.plan.failure import Failure
from raystream._runtime.plan.physical import EdgeKind
from raystream._runtime.state.snapshot import SnapshotMeta
from raystream.config import Audit
from raystream.config import CheckpointConfig, ErrorPolicy, Guarantee, RuntimeConfig
from raystream.graph import Step


@dataclass
class SubtaskSpec:
    """Everything one subtask actor needs to build itself (no actor handles)."""

    job_name: str
    chain_name: str
    steps: list[Step]
    subtask: int
    parallelism: int
    n_inputs: int
    runtime: RuntimeConfig
    guarantee: Guarantee
    checkpoint_root: str
    run_id: str
    attempt: int
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    audit: Audit | None = None
    source_partitions: list[str] = field(default_factory=list)  # for a source chain: this subtask's
    all_partitions: list[str] = field(default_factory=list)  # every partition of the source, now
    input_sides: list[int] = field(default_factory=list)  # a join: the side (0, 1) of each input channel
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class OutputSpec:
    """One output edge: its partitioning and the (actor, input channel) of each target."""

    kind: EdgeKind
    targets: list[tuple[Any, int]]
    late: bool = False  # carries the late records of the chain's window step


@dataclass
class RestoreSpec:
    """The snapshots a subtask restores from, with the object-store copy when the
    coordinator still holds it (None: read the durable copy)."""

    checkpoint_id: int
    snapshots: list[tuple[SnapshotMeta, Any]]
    root: str  # the checkpoint root the snapshot keys are relative to


@dataclass(frozen=True)
class RunOptions:
    """How a run starts: `resume` continues its own checkpoints (or its origin's, when it
    was started from another run's checkpoint); `allow_non_restored_state` drops the
    state of steps the job no longer has instead of refusing the checkpoint; `stop`: a
    stop was asked for before this coordinator took over (its predecessor died while
    stopping), so it stops the sources as soon as they run."""

    resume: bool = False
    allow_non_restored_state: bool = False
    stop: bool = False


@dataclass
class SubtaskReport:
    """What `run()` and `metrics()` return: counters per step, sink results, or the failure."""

    chain_name: str
    subtask: int
    steps: dict[str, tuple[int, int]]
    sink_results: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
    max_in_flight_seen: int = 0
    max_queued_seen: int = 0
    aligning: int | None = None  # the barrier being aligned
    errors: dict[str, int] = field(default_factory=dict)  # step id -> records that failed
    backpressure: float = 0.0  # seconds blocked sending to slower receivers
    state_keys: dict[str, int] = field(default_factory=dict)  # keyed step id -> keys held
    snapshot_bytes: int = 0  # the newest snapshot's size
    alignment: float = 0.0  # seconds the newest barrier alignment took
    late: dict[str, int] = field(default_factory=dict)  # window step id -> records too late for it
    watermark: int | None = None  # the subtask's event-time clock (ms), when it has one
