"""raystream: an exactly-once stream processor for Python, built on Ray.

    import raystream as rs

    job = rs.Job("wordcount", parallelism=2)
    (job.source("lines", rs.sources.FileSource("book.txt"))
        .flat_map("split", str.split)
        .map("one", lambda w: (w, 1))
        .key_by("by_word", lambda wc: wc[0])
        .reduce("count", lambda a, b: (a[0], a[1] + b[1]))
        .sink("out", rs.sinks.PrintSink()))
    job.run()
"""
import importlib as _importlib
import sys as _sys
from typing import Any

from raystream import aggregates, checkpoints, sinks, sources, windows
from raystream._moved_modules import MOVED as _MOVED
from raystream._moved_modules import MovedModules as _MovedModules
from raystream._version import __version__
from raystream.audit import audit_checkpoints
from raystream.config import (
    Audit,
    CheckpointConfig,
    ErrorPolicy,
    Guarantee,
    Resources,
    RestartKind,
    RestartStrategy,
    RuntimeConfig,
)
from raystream.errors import (
    CheckpointKeyError,
    CloudSetupError,
    ClusterConnectionError,
    ConfigError,
    CorruptCheckpointError,
    JobDefinitionError,
    JobFailedError,
    RaystreamError,
    RestoreError,
    SinkError,
    SourceError,
    StagedDataMissingError,
    StaleAttemptError,
    StepFailedError,
    StorageKeyError,
)
from raystream.event_time import EventTime
from raystream.retry import Retry
from raystream.graph import StepKind
from raystream.job import Job, KeyedStream, Stream, WindowedStream, WindowOutput
from raystream.process import ProcessContext
from raystream.testing import faults
from raystream.ttl import TTL
from raystream.result import CheckpointStats, JobHandle, JobResult, JobStatus, Rescale, StepMetrics

__all__ = [
    "Audit",
    "CheckpointConfig",
    "CheckpointKeyError",
    "CheckpointStats",
    "CloudSetupError",
    "ClusterConnectionError",
    "ConfigError",
    "CorruptCheckpointError",
    "ErrorPolicy",
    "EventTime",
    "Retry",
    "Guarantee",
    "Job",
    "JobDefinitionError",
    "JobFailedError",
    "JobHandle",
    "JobResult",
    "JobStatus",
    "ProcessContext",
    "KeyedStream",
    "RaystreamError",
    "Rescale",
    "Resources",
    "RestartKind",
    "RestartStrategy",
    "RestoreError",
    "RuntimeConfig",
    "SinkError",
    "SourceError",
    "StagedDataMissingError",
    "StaleAttemptError",
    "StepFailedError",
    "StorageKeyError",
    "TTL",
    "StepKind",
    "StepMetrics",
    "Stream",
    "WindowOutput",
    "WindowedStream",
    "__version__",
    "aggregates",
    "audit_checkpoints",
    "checkpoints",
    "faults",
    "sinks",
    "sources",
    "windows",
]

# Module paths of 0.1.0 (raystream.nexmark, raystream.faults, ...) stay importable, and
# attributes of the package as 0.1.0 had them after `import raystream`.
if not any(isinstance(finder, _MovedModules) for finder in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if f"{__name__}.{name}" in _MOVED:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
