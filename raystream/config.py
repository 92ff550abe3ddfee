"""Job settings: the processing guarantee, checkpointing, data-plane tuning and the audit.

Each settings object is a small frozen dataclass validated on construction, so a bad
value fails at `Job(...)` time with a message that says which value to change.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable

from raystream.errors import ConfigError
from raystream.testing.faults import CrashAt, S3Faults
from raystream.sink_api import Sink


class Guarantee(str, enum.Enum):
    """What the job promises about each record's effect on committed output."""

    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"
    AT_MOST_ONCE = "at_most_once"

    @classmethod
    def parse(cls, value: "Guarantee | str") -> "Guarantee":
        if isinstance(value, Guarantee):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower().replace("-", "_"))
            except ValueError:
                pass
        choices = ", ".join(repr(g.value) for g in cls)
        raise ConfigError(f"guarantee must be a raystream.Guarantee or one of {choices}; got {value!r}")


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}; got {value!r}")


def _positive_int(name: str, value: object, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")


@dataclass(frozen=True)
class CheckpointConfig:
    """How often and where checkpoints are taken.

    Args:
        interval: seconds between the starts of two checkpoints.
        storage: `file:///dir`, a plain directory path, or `s3://bucket/prefix`; None
            means `./raystream-checkpoints/<job name>` under the working directory.
        retain: complete checkpoints kept, counting only those a restore could choose
            (not void, not refused); older ones are deleted.
        timeout: seconds a checkpoint may take before it is aborted.
        min_pause: minimum seconds between the end of one checkpoint and the next start.
        tolerable_failures: consecutive failed checkpoints tolerated before the job fails.
        incremental: snapshots write only the keys changed since the last checkpoint (a
            changelog over a base), not all keyed state (docs/protocol.md, "Incremental state").
        base_every: more than this many changelog parts are merged into a new base.
        compact_above: parts of at least this many bytes in all are merged into a new base
            by a background Ray task (or, when the newest holds at least half as many bytes
            as their base, the next snapshot is full instead); smaller ones are rewritten by
            the next snapshot. (The name is kept from 0.1.0; in the code and docs this is
            "merging" the parts.)
    """

    interval: float = 1.0
    storage: str | None = None
    retain: int = 3
    timeout: float = 60.0
    min_pause: float = 0.0
    tolerable_failures: int = 3
    incremental: bool = True
    base_every: int = 10
    compact_above: int = 8 << 20

    def __post_init__(self) -> None:
        _positive("CheckpointConfig.interval", self.interval)
        _positive("CheckpointConfig.timeout", self.timeout)
        _positive("CheckpointConfig.min_pause", self.min_pause, allow_zero=True)
        _positive_int("CheckpointConfig.retain", self.retain)
        _positive_int("CheckpointConfig.tolerable_failures", self.tolerable_failures, minimum=0)
        _positive_int("CheckpointConfig.base_every", self.base_every)
        _positive_int("CheckpointConfig.compact_above", self.compact_above, minimum=0)
        if self.storage is not None:
            if not isinstance(self.storage, str) or not self.storage.strip():
                raise ConfigError(
                    "CheckpointConfig.storage must be a directory path, file:///dir or "
                    f"s3://bucket/prefix; got {self.storage!r}"
                )
            scheme = self.storage.split("://", 1)[0] if "://" in self.storage else "file"
            if scheme not in ("file", "s3"):
                raise ConfigError(
                    f"CheckpointConfig.storage scheme {scheme!r} is not supported; "
                    "use a directory path, file:///dir or s3://bucket/prefix"
                )
            if scheme == "s3" and not self.storage[len("s3://"):].split("/", 1)[0]:
                raise ConfigError(f"CheckpointConfig.storage {self.storage!r} names no bucket")


@dataclass(frozen=True)
class Resources:
    """What each subtask of a step asks Ray for, so that Ray places it on a node that has
    it, and an autoscaler adds such nodes when none has room.

    Args:
        num_cpus: CPUs per subtask (default: RuntimeConfig.subtask_num_cpus, 0).
        memory: bytes of memory per subtask, reserved by Ray's scheduler.
        custom: custom Ray resources per subtask, such as {"highmem": 1}.

    Steps chained into one actor share it: the actor asks for the largest amount of
    each resource any of its steps asks for.
    """

    num_cpus: float | None = None
    memory: int | None = None
    custom: dict | None = None

    def __post_init__(self) -> None:
        if self.num_cpus is not None:
            _positive("Resources.num_cpus", self.num_cpus, allow_zero=True)
        if self.memory is not None:
            _positive_int("Resources.memory", self.memory)
        for name, amount in (self.custom or {}).items():
            if not isinstance(name, str) or name in ("CPU", "GPU", "memory"):
                raise ConfigError(f"Resources.custom names must be custom resource names (not CPU, GPU or memory); "
                                  f"got {name!r}: use num_cpus and memory for those")
            _positive(f"Resources.custom[{name!r}]", amount)

    @staticmethod
    def combine(resources: "list[Resources]") -> "Resources | None":
        """What one actor running steps with these resources asks for."""
        if not resources:
            return None
        cpus = [r.num_cpus for r in resources if r.num_cpus is not None]
        memory = [r.memory for r in resources if r.memory is not None]
        custom: dict[str, float] = {}
        for r in resources:
            for name, amount in (r.custom or {}).items():
                custom[name] = max(custom.get(name, 0), amount)
        return Resources(max(cpus) if cpus else None, max(memory) if memory else None, custom or None)


@dataclass(frozen=True)
class RuntimeConfig:
    """Data-plane tuning. The defaults suit a laptop and a small cluster alike.

    Args:
        batch_size: records per micro-batch before a channel flushes it, and records a
            source reads at a time.
        arrow_batch_size: rows a source of Arrow record batches reads at a time
            (`Source.columnar`: Parquet files, `NexmarkSource(columnar=True)`). Columnar
            steps cost little per row and a fixed amount per batch (an Arrow plan, a Ray
            call per target subtask), so their batches are larger than per-record ones.
        linger: seconds a partly filled micro-batch may wait before it is flushed.
        watermark_interval: at most how often (seconds) an event-time source or step sends
            its watermark downstream.
        max_in_flight: batches a sender keeps in flight per channel (the backpressure bound).
        max_parallelism: number of key groups; the upper bound of any keyed step's parallelism.
        chaining: run forward-connected steps of equal parallelism inside one actor.
        subtask_num_cpus: CPUs each subtask actor requests from Ray (0 packs freely).
        subtask_resources: custom Ray resources each subtask actor requests, to place
            subtasks on certain nodes or make an autoscaler add them.
        spare_actors: when a job ends, the driver starts a blank coordinator with up to
            this many blank subtask actors for its next job, so that it need not wait for
            new processes (about a second each). Only subtasks that ask for no resources
            use them. 0 turns this off.
        recovery_spares: a coordinator also keeps a blank actor per subtask (up to
            `spare_actors`), so that a recovery need not wait for new processes: a number
            (the default, 30) keeps them once the job has run that many seconds and has
            a checkpoint, so a long-running job has them and a short one never pays for
            them; True as soon as there is a checkpoint; False never. Each costs an idle
            process (about 150 MB resident here) and, when it starts, about a CPU-second.
        faults: crash points for fault-injection tests (`raystream.testing.faults.CrashAt`).
    """

    batch_size: int = 4096
    arrow_batch_size: int = 65_536
    linger: float = 0.05
    watermark_interval: float = 0.2
    max_in_flight: int = 4
    max_parallelism: int = 128
    chaining: bool = True
    subtask_num_cpus: float = 0.0
    subtask_resources: dict | None = None
    spare_actors: int = 8
    recovery_spares: bool | float = 30.0
    faults: tuple = ()

    def spares_after(self) -> float | None:
        """Seconds a job runs before its coordinator keeps recovery spares; None: never."""
        if self.recovery_spares is True:
            return 0.0
        return None if self.recovery_spares is False else float(self.recovery_spares)

    def __post_init__(self) -> None:
        _positive_int("RuntimeConfig.batch_size", self.batch_size)
        _positive_int("RuntimeConfig.arrow_batch_size", self.arrow_batch_size)
        _positive("RuntimeConfig.linger", self.linger, allow_zero=True)
        _positive("RuntimeConfig.watermark_interval", self.watermark_interval, allow_zero=True)
        _positive_int("RuntimeConfig.max_in_flight", self.max_in_flight)
        _positive_int("RuntimeConfig.max_parallelism", self.max_parallelism)
        _positive("RuntimeConfig.subtask_num_cpus", self.subtask_num_cpus, allow_zero=True)
        _positive_int("RuntimeConfig.spare_actors", self.spare_actors, minimum=0)
        if not isinstance(self.recovery_spares, bool):
            _positive("RuntimeConfig.recovery_spares (True, False, or seconds)", self.recovery_spares, allow_zero=True)
        for name, amount in (self.subtask_resources or {}).items():
            if not isinstance(name, str):
                raise ConfigError(f"RuntimeConfig.subtask_resources names must be strings; got {name!r}")
            _positive(f"RuntimeConfig.subtask_resources[{name!r}]", amount)
        if not isinstance(self.faults, tuple) or not all(isinstance(f, (CrashAt, S3Faults)) for f in self.faults):
            raise ConfigError("RuntimeConfig.faults must be a tuple of raystream.testing.faults.CrashAt and S3Faults; "
                              f"got {self.faults!r}")


class RestartKind(str, enum.Enum):
    """How the delay between restarts grows."""

    FIXED_DELAY = "fixed_delay"
    EXPONENTIAL_BACKOFF = "exponential_backoff"
    NONE = "none"  # the first failure ends the job


@dataclass(frozen=True)
class RestartStrategy:
    """How a failed job restarts, and when it gives up.

    `kind` is a RestartKind (or its value: "fixed_delay", "exponential_backoff",
    "none"). At most `max_restarts`
    restarts are allowed within any `window` seconds; one more fails the job with the
    last failure's message. With exponential backoff the first restart is immediate (a
    one-off crash costs no wait); the failures that follow it wait `delay`, then
    `delay * multiplier`, ... up to `max_delay`. The backoff starts over after
    `reset_after` seconds without a failure.
    `fixed_delay` waits `delay` before every restart, the first included.
    """

    kind: RestartKind = RestartKind.EXPONENTIAL_BACKOFF
    delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    max_restarts: int = 10
    window: float = 300.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", RestartKind(self.kind))
        except ValueError:
            raise ConfigError(
                f"RestartStrategy kind must be 'fixed_delay', 'exponential_backoff' or 'none'; got {self.kind!r}"
            ) from None
        _positive("RestartStrategy.delay", self.delay, allow_zero=True)
        _positive("RestartStrategy.max_delay", self.max_delay, allow_zero=True)
        _positive("RestartStrategy.window", self.window)
        _positive("RestartStrategy.reset_after", self.reset_after)
        _positive_int("RestartStrategy.max_restarts", self.max_restarts, minimum=0)
        if not isinstance(self.multiplier, (int, float)) or self.multiplier < 1:
            raise ConfigError(f"RestartStrategy.multiplier must be >= 1; got {self.multiplier!r}")

    @classmethod
    def fixed_delay(cls, delay: float = 1.0, *, max_restarts: int = 10, window: float = 300.0) -> "RestartStrategy":
        return cls(RestartKind.FIXED_DELAY, delay=delay, max_delay=delay, max_restarts=max_restarts, window=window)

    @classmethod
    def exponential_backoff(cls, initial: float = 0.2, *, max_delay: float = 10.0, multiplier: float = 2.0,
                            max_restarts: int = 10, window: float = 300.0,
                            reset_after: float = 30.0) -> "RestartStrategy":
        return cls(RestartKind.EXPONENTIAL_BACKOFF, initial, max_delay, multiplier, max_restarts, window, reset_after)

    @classmethod
    def none(cls) -> "RestartStrategy":
        return cls(RestartKind.NONE, max_restarts=0)


@dataclass(frozen=True)
class ErrorPolicy:
    """What happens to a record on which a user function raises.

    - `fail` (default): the job stops with the step id, the record and the traceback.
    - `skip`: the record is dropped and counted (`StepMetrics.errors`).
    - `dead_letter`: the record goes to `sink` as `{"step_id", "error", "record",
      "record_repr", "source"}` and is committed in the same checkpoints as the main
      output, so main output plus dead letters account for every input record once.
      `source` is the partition and offset of the record's source batch when the
      failing step runs in the source's subtask, else None.
    """

    mode: str = "fail"
    sink: object = None

    def __post_init__(self) -> None:
        if self.mode not in ("fail", "skip", "dead_letter"):
            raise ConfigError(f"ErrorPolicy mode must be 'fail', 'skip' or 'dead_letter'; got {self.mode!r}")
        if (self.mode == "dead_letter") != isinstance(self.sink, Sink):
            raise ConfigError("ErrorPolicy.dead_letter needs a raystream.sinks.Sink, and only it takes one")

    @classmethod
    def fail(cls) -> "ErrorPolicy":
        return cls("fail")

    @classmethod
    def skip(cls) -> "ErrorPolicy":
        return cls("skip")

    @classmethod
    def dead_letter(cls, sink: object) -> "ErrorPolicy":
        return cls("dead_letter", sink)

    @classmethod
    def parse(cls, value: "ErrorPolicy | str") -> "ErrorPolicy":
        if isinstance(value, ErrorPolicy):
            return value
        if value in ("fail", "skip"):
            return cls(value)
        raise ConfigError(f"errors must be 'fail', 'skip' or a raystream.ErrorPolicy; got {value!r}")


@dataclass(frozen=True)
class Audit:
    """Id functions for the audit: `source_id(record)` for what sources emit,
    `sink_id(record)` for what sinks receive. None: count records only. `sinks`: the sink
    step ids audited (None: all), for a job whose other sinks write something else
    (billing's invoices are per customer and hour, not per event)."""

    source_id: Callable[[Any], Any] | None = None
    sink_id: Callable[[Any], Any] | None = None
    sinks: tuple[str, ...] | None = None
