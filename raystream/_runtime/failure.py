"""Why an attempt or a job stopped: `Failure`, plain data sent from subtasks to the
coordinator and from the coordinator to the driver, and its `FailureKind`."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from raystream.errors import JobFailedError, RestoreError, SourceError, StepFailedError


class FailureKind(str, enum.Enum):
    RECORD = "record"  # a user function raised on a record (under the `fail` policy)
    SOURCE = "source"  # a source cannot be opened or read
    INCOMPATIBLE = "incompatible"  # the checkpoint does not fit this job (graph, versions, key groups)
    RESTORE = "restore"  # the checkpoint cannot be restored (damaged, staged data gone): refuse it
    INTERNAL = "internal"  # a bug or an infrastructure error inside a subtask
    CHECKPOINT = "checkpoint"  # checkpoints failed past tolerable_failures, or the final one failed
    CRASH = "crash"  # Ray reports a subtask dead
    PEER = "peer"  # a subtask stopped because a peer it talks to died
    RESTARTS = "restarts"  # the restart strategy allows no more restarts

    @property
    def final(self) -> bool:
        """A restart would only repeat it: the job ends at once."""
        return self in (FailureKind.RECORD, FailureKind.SOURCE, FailureKind.INCOMPATIBLE, FailureKind.RESTARTS)

    @property
    def specificity(self) -> int:
        """Which failure explains an attempt's end best when several arrive together
        (higher first): a peer's failure is usually the echo of another's."""
        return _SPECIFICITY[self]


_SPECIFICITY = {
    FailureKind.RECORD: 8, FailureKind.SOURCE: 7, FailureKind.INCOMPATIBLE: 6, FailureKind.RESTORE: 5,
    FailureKind.INTERNAL: 4, FailureKind.CHECKPOINT: 3, FailureKind.CRASH: 2, FailureKind.RESTARTS: 1,
    FailureKind.PEER: 0,
}


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    step_id: str  # the step, subtask or phase that failed
    error: str
    record_repr: str = ""
    traceback_text: str = ""

    def to_error(self) -> JobFailedError:
        """The error the user sees."""
        if self.kind is FailureKind.RECORD:
            return StepFailedError(self.step_id, self.record_repr, self.error, self.traceback_text)
        if self.kind is FailureKind.SOURCE:
            err = JobFailedError(f"source {self.step_id!r} failed: {self.error}")
            err.__cause__ = SourceError(self.error)
            return err
        if self.kind is FailureKind.INCOMPATIBLE:
            err = JobFailedError(f"the checkpoint cannot be restored into this job: {self.error}")
            err.__cause__ = RestoreError(self.error)
            return err
        return JobFailedError(f"{self.step_id} failed: {self.error}\n{self.traceback_text}".rstrip())


def most_specific(failures: list[Failure]) -> Failure:
    return max(failures, key=lambda f: f.kind.specificity)
