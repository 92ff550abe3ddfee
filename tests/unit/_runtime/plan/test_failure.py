"""Failure kinds: which end the job at once, which explains an attempt's end best, and
the error each becomes for the user."""
import pytest

import raystream as rs
from raystream._runtime.plan.failure import Failure, FailureKind, most_specific


def test_only_failures_a_restart_would_repeat_are_final():
    final = {k for k in FailureKind if k.final}
    assert final == {FailureKind.RECORD, FailureKind.SOURCE, FailureKind.INCOMPATIBLE, FailureKind.RESTARTS}


def test_a_peer_failure_never_hides_the_crash_or_record_behind_it():
    peer = Failure(FailureKind.PEER, "b[0]", "ActorDiedError")
    crash = Failure(FailureKind.CRASH, "subtask a[0]", "ActorDiedError")
    record = Failure(FailureKind.RECORD, "parse", "ValueError: x", "'x'")
    assert most_specific([peer, crash]) is crash
    assert most_specific([peer, crash, record]) is record
    assert len({k.specificity for k in FailureKind}) == len(FailureKind)  # no ties


@pytest.mark.parametrize("failure, error_type, message", [
    (Failure(FailureKind.RECORD, "parse", "ValueError: bad", "'x'", "tb"), rs.StepFailedError,
     "step 'parse' failed on record 'x': ValueError: bad"),
    (Failure(FailureKind.SOURCE, "lines", "no such file"), rs.JobFailedError, "source 'lines' failed: no such file"),
    (Failure(FailureKind.INCOMPATIBLE, "restore", "the job graph changed"), rs.JobFailedError,
     "the checkpoint cannot be restored into this job: the job graph changed"),
    (Failure(FailureKind.CHECKPOINT, "checkpoint", "4 checkpoints failed in a row"), rs.JobFailedError,
     "checkpoint failed: 4 checkpoints failed in a row"),
])
def test_each_failure_becomes_the_error_that_says_what_happened(failure, error_type, message):
    error = failure.to_error()
    assert type(error) is error_type and str(error).startswith(message)
    if failure.kind is FailureKind.INCOMPATIBLE:
        assert isinstance(error.__cause__, rs.RestoreError)
