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
from raystream import faults, sinks, sources
from raystream.audit import Audit, audit_checkpoints
from raystream.config import CheckpointConfig, ErrorPolicy, Guarantee, RestartStrategy, RuntimeConfig
from raystream.errors import (
    ConfigError,
    JobDefinitionError,
    JobFailedError,
    RaystreamError,
    SinkError,
    SourceError,
    StepFailedError,
)
from raystream.job import Job, KeyedStream, Stream
from raystream.result import CheckpointStats, JobHandle, JobResult, JobStatus, StepMetrics

__version__ = "0.1.0"

__all__ = [
    "Audit",
    "CheckpointConfig",
    "CheckpointStats",
    "ConfigError",
    "ErrorPolicy",
    "Guarantee",
    "Job",
    "JobDefinitionError",
    "JobFailedError",
    "JobHandle",
    "JobResult",
    "JobStatus",
    "KeyedStream",
    "RaystreamError",
    "RestartStrategy",
    "RuntimeConfig",
    "SinkError",
    "SourceError",
    "StepFailedError",
    "StepMetrics",
    "Stream",
    "audit_checkpoints",
    "faults",
    "sinks",
    "sources",
]
