"""What a subtask snapshots (`SubtaskState`), how it acknowledges a snapshot
(`SnapshotMeta`), and how snapshot bytes are made and checked.

A snapshot is cloudpickle bytes whose SHA-256 is recorded in the signed manifest;
`decode` checks it before unpickling, so bytes that were damaged or replaced are never
unpickled. A snapshot that unpickles to something else than a snapshot is refused like a
damaged one; one that the job's code cannot unpickle stops the restore (RestoreError):
neither is retried as a crash.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from raystream._runtime.state import moved
from raystream.errors import CorruptCheckpointError, RestoreError


def encode(obj: Any) -> tuple[bytes, str]:
    data = cloudpickle.dumps(obj)
    return data, hashlib.sha256(data).hexdigest()


class _Unpickler(pickle.Unpickler):
    """Finds what an earlier version's snapshot names where it lives now (state/moved.py)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*moved.now(module, name))


def decode(data: bytes, sha256: str, what: str, expected: type | tuple[type, ...] = object) -> Any:
    """Unpickle `data` only if its SHA-256 is `sha256`. CorruptCheckpointError if it is
    not an `expected`; RestoreError if this code cannot unpickle it."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CorruptCheckpointError(
            f"{what} is damaged or was replaced: SHA-256 {actual[:16]}... where the manifest recorded "
            f"{sha256[:16]}...; it is not loaded")
    try:
        with warnings.catch_warnings():  # code pickled by value may name a module path of 0.1.0
            warnings.filterwarnings("ignore", r"raystream\.\w+ moved to ", FutureWarning)
            obj = _Unpickler(io.BytesIO(data)).load()  # what cloudpickle.loads does, with moved names
    except MemoryError:
        raise
    except Exception as exc:  # the bytes are what the job wrote: its code changed, nothing is damaged
        raise RestoreError(f"{what} does not decode with this job's code ({type(exc).__name__}: {str(exc)[:200]}); "
                           "restore it with the code that wrote it, or start without resume") from None
    if not isinstance(obj, expected):
        raise CorruptCheckpointError(f"{what} holds a {type(obj).__name__}, not a snapshot; it is not used")
    return obj


def read_exact(storage: Any, key: str, size: int) -> bytes:
    """The object `key` if it is `size` bytes, as recorded; a larger one is not read whole."""
    data = storage.get(key, limit=size)
    if len(data) != size:
        raise CorruptCheckpointError(f"{storage.uri(key)} is {'larger' if len(data) > size else len(data)} "
                                     f"{'than' if len(data) > size else 'bytes, not'} {size} bytes, as recorded; "
                                     "it is not loaded")
    return data


@dataclass
class SinkState:
    """A sink's part of a snapshot: the writer's own state and its transactions not yet committed."""

    writer_state: Any = None
    pending: list[tuple[int, Any]] = field(default_factory=list)  # (checkpoint id, transaction)


@dataclass(frozen=True)
class PartRef:
    """One part of a subtask's keyed state (changelog.py): a snapshot or a merged base,
    and its checksum."""

    key: str
    sha256: str
    size: int
    checkpoint_id: int
    full: bool  # a base: replaces the tables; else changes applied over them


@dataclass
class SubtaskState:
    """Everything one subtask needs to resume exactly where checkpoint `checkpoint_id` left it."""

    checkpoint_id: int
    chain: str
    subtask: int
    parallelism: int
    source_offsets: dict[str, Any] = field(default_factory=dict)  # partition key -> offset
    # step id -> {key: state}; or its changes (I2); window-major windows: Arrow rows
    # (state/window_entries.py) that `materialize` makes per key
    keyed: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, SinkState] = field(default_factory=dict)  # step id -> sink state
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # step id -> (in, out)
    audit: dict[str, tuple[int, int]] = field(default_factory=dict)  # "source:<step>"/"sink:<step>" -> (count, digest)
    errors: dict[str, int] = field(default_factory=dict)  # step id -> records that failed
    watermarks: dict[str, int] = field(default_factory=dict)  # step id -> the event-time clock of a timed step
    # window step id -> {key group: the watermark its old subtask had}, where ahead of the
    # step's, held since a rescale (R4, operators/group_watermarks.py); absent before 0.7.1
    group_watermarks: dict[str, dict[int, int]] = field(default_factory=dict)
    # step id -> the newest event time (ms) its watermark generator saw per source partition
    # ("" for an event-time step's own): the watermark after a restore is the one before
    event_times: dict[str, dict[str, int]] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)  # window step id -> records too late for it
    # step id -> what a keyed step's values are (KeyedOp.state_meta: a columnar step's
    # aggregates, its output's Arrow types), whole in every snapshot, checked and taken
    # on restore (KeyedOp.restore_meta); absent in snapshots of raystream before it
    step_meta: dict[str, Any] = field(default_factory=dict)
    # Incremental state (changelog.py): with `changelog`, `keyed` holds this epoch's changes
    # per step, (new values, deleted keys), over the tables of `parts`, oldest first.
    changelog: bool = False
    parts: list[PartRef] = field(default_factory=list)


@dataclass(frozen=True)
class SnapshotMeta:
    """One subtask's acknowledgement of a checkpoint; the manifest lists one per subtask."""

    chain: str
    subtask: int
    key: str
    sha256: str
    size: int
    alignment: float = 0.0
    source_records: int = 0
    audit: dict[str, list[int]] = field(default_factory=dict)  # see raystream.audit
    parts: tuple[str, ...] = ()  # keys of the earlier parts its keyed state builds on (retention)
    # The oldest checkpoint among the sink transactions it lists (0: none): a restore commits
    # them again, aborted checkpoints' included, so their output must stay (compaction.py).
    sink_from: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))  # a list when read from JSON
