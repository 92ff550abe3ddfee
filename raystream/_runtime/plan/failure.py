"""Why an attempt or a job stopped: `Failure`, plain data sent from subtasks to the
coordinator and from the coordinator to the driver, its `FailureKind`, and
`RecordFailure`, raised by an operator when a user function fails on a record."""
from __future__ import annotations

import dataclasses
import enum
import logging
import re
import traceback
from dataclasses import dataclass
from typing import Any

import ray

from raystream.errors import JobFailedError, RestoreError, SourceError, StepFailedError

logger = logging.getLogger(__name__)

_REPR_LIMIT = 200


def truncated_repr(record: Any) -> str:
    try:
        text = repr(record)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<unrepresentable {type(record).__name__}: {exc}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


class RecordFailure(Exception):
    """A user function raised on one record; carries what the job error must say."""

    def __init__(self, step_id: str, record: Any, exc: BaseException):
        self.step_id = step_id
        self.record_repr = record if isinstance(record, str) and record.startswith("<") else truncated_repr(record)
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        super().__init__(step_id, self.record_repr, self.error)


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
    transient: bool = False  # a connection or a timeout: may well go by itself (R2)

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


def failure_of(exc: BaseException, subtask: str, source_step: str | None) -> Failure:
    """What a subtask reports when `exc` ended its run (R1)."""
    if isinstance(exc, RecordFailure):
        return Failure(FailureKind.RECORD, exc.step_id, exc.error, exc.record_repr, exc.traceback_text)
    if isinstance(exc, SourceError):
        return Failure(FailureKind.SOURCE, source_step or subtask, str(exc), traceback_text=traceback.format_exc())
    if isinstance(exc, ray.exceptions.RayError):  # a peer died; the coordinator knows why
        logger.info("%s stopped: %s", subtask, type(exc).__name__)
        return Failure(FailureKind.PEER, subtask, f"{type(exc).__name__}: {exc}")
    logger.exception("%s failed", subtask)  # a bug or an infrastructure error: report it, never hang
    return Failure(FailureKind.INTERNAL, subtask, f"{type(exc).__name__}: {exc}", traceback_text=traceback.format_exc(),
                   transient=is_transient(exc))


#: Names of errors of client libraries (botocore, urllib3, psycopg, Kafka) that a retry may cure.
_TRANSIENT_NAMES = re.compile(r"Connection|Timeout|Endpoint|Unavailable|Throttl")


def is_transient(exc: BaseException) -> bool:
    """A connection or a timeout, which may go by itself, as opposed to an error that a
    restart repeats (a folder that cannot be made, a bug)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(_TRANSIENT_NAMES.search(type(exc).__name__))


class Repeats:
    """R2: an internal failure that is not transient, the same (step and error) `CERTAIN`
    times in a row before any checkpoint of the run completed, will happen again: the job
    ends instead of restarting."""

    CERTAIN = 3

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.count = 0

    def certain(self, failure: Failure, *, checkpoints_completed: int) -> bool:
        if failure.kind is not FailureKind.INTERNAL or failure.transient or checkpoints_completed:
            self.last, self.count = None, 0
            return False
        key = (failure.step_id, failure.error)
        self.count = self.count + 1 if key == self.last else 1
        self.last = key
        return self.count >= self.CERTAIN

    def final(self, failure: Failure) -> Failure:
        return dataclasses.replace(failure, kind=FailureKind.RESTARTS, error=(
            f"{failure.error} ({self.count} times the same before any checkpoint completed: not retried)"))
