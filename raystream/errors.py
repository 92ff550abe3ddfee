"""The raystream error hierarchy: every error the library raises derives from RaystreamError.

Messages say what went wrong and what to do about it.
"""
from __future__ import annotations


class RaystreamError(Exception):
    """Root of every error raised by raystream."""


class JobDefinitionError(RaystreamError):
    """The job graph or one of its arguments is invalid; raised before anything starts."""


class ConfigError(JobDefinitionError):
    """A setting (checkpointing, guarantee, runtime option) has an invalid value."""


class ClusterConnectionError(RaystreamError):
    """The Ray cluster (or its Jobs API) cannot be reached, or it refused this client."""


class CloudSetupError(RaystreamError):
    """`raystream cluster init` could not prepare a cluster's cloud resources: no
    credentials, access denied, an option refused (`--ssh-cidr 0.0.0.0/0`), or a template
    it cannot fill. Nothing is written then; what was made stays, and a rerun reuses it."""


class SourceError(RaystreamError):
    """A source could not be opened or read (missing file, malformed line)."""


class SinkError(RaystreamError):
    """A sink could not write or commit its output."""


class StagedDataMissingError(SinkError):
    """A committed checkpoint's transaction cannot be committed: its staged data is gone.
    The job falls back to the checkpoint before it, retracting what it must."""


class CorruptCheckpointError(RaystreamError):
    """A checkpoint object does not match the checksum (or signature) its manifest recorded;
    it is never unpickled. Raised by `audit_checkpoints` and handled by recovery, which
    refuses the checkpoint and falls back to the one before it."""


class RestoreError(RaystreamError):
    """A checkpoint cannot be restored into this job: the graph, a sink's parallelism,
    `max_parallelism` or the library versions changed, or no checkpoint of the run verifies."""


class StaleAttemptError(RaystreamError):
    """A process of an older attempt tried to commit after a newer attempt took over."""


class JobFailedError(RaystreamError):
    """The job stopped because of an error; `cause` holds the detail when known."""


class StepFailedError(JobFailedError):
    """A user function raised while processing a record.

    Carries the step id, a truncated repr of the record and the original traceback.
    """

    def __init__(self, step_id: str, record_repr: str, error: str, traceback_text: str):
        self.step_id = step_id
        self.record_repr = record_repr
        self.error = error
        self.traceback_text = traceback_text
        super().__init__(
            f"step {step_id!r} failed on record {record_repr}: {error}\n"
            f"--- traceback from the subtask ---\n{traceback_text}"
        )

    def __reduce__(self):  # keep the fields across Ray's process boundary
        return (StepFailedError, (self.step_id, self.record_repr, self.error, self.traceback_text))


class CheckpointKeyError(RestoreError):
    """A checkpoint is unsigned, or signed with another key than this process's, or this
    process has no checkpoint key: a matter of configuration, not damage, so the
    checkpoint is not refused; give the process the right key (docs/security.md)."""


class StorageKeyError(RaystreamError, ValueError):
    """A storage key that would name something outside its storage's root (`..`, an
    absolute path): refused, whoever wrote it."""
