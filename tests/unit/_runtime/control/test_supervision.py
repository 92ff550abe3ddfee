"""The coordinator's watch loop and the driver's supervisor, without Ray processes."""
import asyncio

import pytest
import ray

from raystream._runtime.control import driver
from raystream._runtime.control.coordinator import JobCoordinator
from raystream._runtime.control.reports import JobOutcome
from raystream.errors import JobFailedError
from raystream.result import CheckpointStats, JobResult, JobStatus, StepMetrics


def test_metrics_are_not_polled_once_every_subtask_has_finished():
    """A job whose last subtask finished just as metrics were due was reported failed:
    asyncio.wait refuses an empty set."""
    coordinator = object.__new__(JobCoordinator.__ray_metadata__.modified_class)
    asyncio.run(coordinator._poll_metrics(set(), {}))  # returns; used to raise ValueError


class FakeMethod:
    def __init__(self, results):
        self.results = results
        self.calls = 0

    def remote(self):
        self.calls += 1
        return self.results.pop(0)


class FakeCoordinator:
    def __init__(self, results):
        self.outcome = FakeMethod(results)


class FakeTracker:
    def next_delay(self, failure, **_):
        return 0.0


def supervise(monkeypatch, first, launched, tracker=None, last_status=None):
    """Run Supervisor._supervise with `ray.get` answering from the refs themselves: an
    exception instance is raised, anything else returned."""
    def fake_get(ref, timeout=None):
        if isinstance(ref, BaseException):
            raise ref
        return ref

    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: (refs, []))  # every outcome is ready at once
    monkeypatch.setattr(driver.time, "sleep", lambda seconds: None)  # the supervisor's backoff
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: launched.append(("killed", actor)))
    sup = object.__new__(driver.Supervisor)
    sup.job = type("J", (), {"name": "j"})()
    sup.tracker, sup.generation, sup.error, sup.outcome, sup._reported, sup._waiting = (
        tracker or FakeTracker(), 1, None, None, 0, "")
    sup._last_status, sup._started = last_status, driver.time.monotonic()
    sup._check_ray = lambda: None  # the fake Ray is always up
    sup.coordinator = first
    sup._first_ref = first.outcome.remote()
    sup._done = __import__("threading").Event()

    def launch(resume):
        launched.append(("launched", resume))
        sup.coordinator = FakeCoordinator([JobOutcome(None, None)])
        return sup.coordinator.outcome.remote()

    sup._launch = launch
    sup._supervise()
    return sup


def test_a_lost_reply_is_asked_again_and_never_starts_a_second_coordinator(monkeypatch):
    done = JobOutcome(None, None)
    first = FakeCoordinator([ray.exceptions.ActorUnavailableError("may or may not have run", b"x" * 16),
                             ray.exceptions.ActorUnavailableError("still unreachable", b"x" * 16), done])
    launched = []
    sup = supervise(monkeypatch, first, launched)
    assert sup.error is None and sup.outcome is done
    assert launched == [] and first.outcome.calls == 3  # the same coordinator, asked again


def test_a_dead_coordinator_is_killed_before_a_new_one_resumes(monkeypatch):
    first = FakeCoordinator([ray.exceptions.ActorDiedError()])
    launched = []
    sup = supervise(monkeypatch, first, launched)
    assert sup.error is None
    assert launched == [("killed", first), ("launched", True)]


def test_supervision_ends_when_ray_was_shut_down_under_the_job(monkeypatch):
    """A job left running when its Ray is shut down (a notebook's ray.shutdown(), a test
    module's teardown) must not poll the next Ray this process starts with references of
    the old one: the supervisor ends with an error instead."""
    sup = object.__new__(driver.Supervisor)
    sup.job = type("J", (), {"name": "j"})()
    sup._node_id = "node-of-the-first-ray"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(JobFailedError, match="Ray was shut down while job 'j' was running"):
        sup._check_ray()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: type("C", (), {"get_node_id": lambda self: "node-of-another-ray"})())
    with pytest.raises(JobFailedError):
        sup._check_ray()


def test_status_after_the_end_is_the_final_one_and_asks_no_coordinator(monkeypatch):
    """wait() kills the coordinator once the job ended; status() went on asking it and
    said "restarting" for good. Once the job ended, no coordinator is asked."""
    from raystream._runtime.plan.failure import Failure, FailureKind

    def no_ray(*args, **kwargs):
        raise AssertionError("asked Ray after the job ended")

    steps = {"lookup": StepMetrics(4242, 4241)}
    at_failure = JobStatus("j", "failed", 2.5, steps, checkpoints=CheckpointStats(completed=3))
    failed = JobOutcome(None, Failure(FailureKind.RECORD, "lookup", "KeyError"), at_failure, [{"step": "lookup"}])
    sup = supervise(monkeypatch, FakeCoordinator([failed]), [])
    monkeypatch.setattr(ray, "get", no_ray)
    assert sup.status() == at_failure and sup.metrics() == [{"step": "lookup"}]

    result = JobResult("j", "finished", 3.0, steps, {}, restarts=1, metrics=[{"step": "out"}])
    sup = supervise(monkeypatch, FakeCoordinator([JobOutcome(result, None)]), [])
    monkeypatch.setattr(ray, "get", no_ray)
    status = sup.status()
    assert (status.state, status.elapsed, status.steps, status.restarts) == ("finished", 3.0, steps, 1)
    assert sup.metrics() == [{"step": "out"}]


def test_status_after_supervision_failed_is_failed_with_the_newest_figures_seen(monkeypatch):
    """The coordinator died past the restart strategy: no outcome, so the newest status
    the driver polled, as failed, with no subtask running."""
    class GivingUp:
        def next_delay(self, failure, **_):
            raise JobFailedError(f"giving up: {failure}")

    running = JobStatus("j", "running", 1.0, {"lookup": StepMetrics(7, 7)}, subtasks=2, pids={"a[0]": 1})
    sup = supervise(monkeypatch, FakeCoordinator([ray.exceptions.ActorDiedError()]), [], GivingUp(), running)
    assert isinstance(sup.error, JobFailedError)
    status = sup.status()
    assert (status.state, status.steps, status.subtasks, status.pids) == ("failed", {"lookup": StepMetrics(7, 7)}, 0, {})
    assert sup.metrics() == []


def test_status_of_a_busy_coordinator_is_its_last_word_and_of_a_dead_one_restarting(monkeypatch):
    """A status call that timed out (the coordinator busy, say restoring a large state)
    said "restarting" with 0 s elapsed while the job ran."""
    running = JobStatus("j", "running", 1.0, {"lookup": StepMetrics(7, 7)}, subtasks=2, pids={"a[0]": 1})
    sup = object.__new__(driver.Supervisor)
    sup.job = type("J", (), {"name": "j"})()
    sup._done, sup._last_status, sup._started = type("E", (), {"is_set": lambda self: False})(), running, 0.0
    sup.coordinator = type("C", (), {"status": FakeMethod([ray.exceptions.GetTimeoutError(),
                                                          ray.exceptions.ActorDiedError()])})()
    monkeypatch.setattr(driver.time, "monotonic", lambda: 42.0)

    def fake_get(ref, timeout=None):
        raise ref

    monkeypatch.setattr(ray, "get", fake_get)
    busy = sup.status()
    assert (busy.state, busy.elapsed, busy.subtasks, busy.steps) == ("running", 42.0, 2, running.steps)
    dead = sup.status()
    assert (dead.state, dead.elapsed) == ("restarting", 42.0)
