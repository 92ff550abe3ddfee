"""R2: a failure certain to repeat is not retried; a transient one, or one after progress, is."""
from raystream._runtime.plan.failure import Failure, FailureKind, Repeats, failure_of


def internal(error: str, step: str = "out[0]", transient: bool = False) -> Failure:
    return Failure(FailureKind.INTERNAL, step, error, transient=transient)


def test_the_same_internal_failure_three_times_in_a_row_before_any_checkpoint_is_certain():
    r = Repeats()
    assert not r.certain(internal("ValueError: bad folder"), checkpoints_completed=0)
    assert not r.certain(internal("ValueError: bad folder"), checkpoints_completed=0)
    assert r.certain(internal("ValueError: bad folder"), checkpoints_completed=0)
    final = r.final(internal("ValueError: bad folder"))
    assert final.kind is FailureKind.RESTARTS and "3 times the same before any checkpoint" in final.error


def test_a_different_failure_a_crash_progress_or_a_transient_error_starts_the_count_again():
    r = Repeats()
    for failure, completed in [(internal("A"), 0), (internal("A"), 0), (internal("B"), 0), (internal("A"), 0),
                               (internal("A"), 0), (Failure(FailureKind.CRASH, "m[0]", "died"), 0), (internal("A"), 0),
                               (internal("A"), 0), (internal("A"), 1), (internal("A", transient=True), 0)]:
        assert not r.certain(failure, checkpoints_completed=completed)


def test_connection_and_timeout_errors_are_transient():
    class EndpointConnectionError(Exception):  # as botocore names it
        pass

    assert failure_of(ConnectionResetError(104, "reset"), "s[0]", None).transient
    assert failure_of(TimeoutError(), "s[0]", None).transient
    assert failure_of(EndpointConnectionError("no endpoint"), "s[0]", None).transient
    assert not failure_of(ValueError("the device is full"), "s[0]", None).transient
