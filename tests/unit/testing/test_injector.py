"""Crash points fire once per run, on their attempt or a later one, in whichever process
reaches them first."""
import pytest

from raystream.testing import injector
from raystream.testing.injector import Injector
from raystream._storage import LocalStorage
from raystream.testing.faults import CrashAt


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch):
    def fake_exit(code):
        raise Exited(code)
    monkeypatch.setattr(injector.os, "_exit", fake_exit)


def subtask(plan, storage, attempt, subtask=0):
    return Injector(plan, attempt=attempt, steps=("totals",), subtask=subtask, claims=storage, run_id="run")


def test_a_crash_fires_once_in_the_run_even_if_its_attempt_ended_for_another_reason(tmp_path, exits):
    storage = LocalStorage(str(tmp_path))
    plan = (CrashAt("restore", step="totals", subtask=0, checkpoint=1, attempt=2),)
    assert not subtask(plan, storage, attempt=1)  # not yet: attempt 1 is before the plan's
    # Attempt 2 ended before its restore (a worker died on its own); attempt 3 restores.
    with pytest.raises(Exited):
        subtask(plan, storage, attempt=3).hit("restore", 1)
    again = subtask(plan, storage, attempt=4)
    again.hit("restore", 1)  # claimed by attempt 3: no second crash
    assert not again
    assert storage.list("run/faults/") == ["run/faults/0000"]


def test_only_the_first_process_to_reach_a_point_claims_it(tmp_path, exits):
    storage = LocalStorage(str(tmp_path))
    plan = (CrashAt("sink_pre_committed", checkpoint=3),)
    first, second = subtask(plan, storage, 1, subtask=0), subtask(plan, storage, 1, subtask=1)
    first.hit("sink_pre_committed", 2)  # before the plan's checkpoint
    with pytest.raises(Exited):
        first.hit("sink_pre_committed", 3)
    second.hit("sink_pre_committed", 3)
    assert not second


def test_coordinator_points_apply_to_the_coordinator_only(tmp_path, exits):
    storage = LocalStorage(str(tmp_path))
    plan = (CrashAt("manifest_writing"), CrashAt("restore", step="totals"))
    assert not Injector(plan[:1], attempt=1, steps=("totals",), subtask=0, claims=storage, run_id="run")
    coordinator = Injector(plan, attempt=1, coordinator=True, claims=storage, run_id="run")
    with pytest.raises(Exited):
        coordinator.hit("manifest_writing", 2)
    assert storage.list("run/faults/") == ["run/faults/0000"]  # numbered by place in the plan
