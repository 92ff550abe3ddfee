"""The simulation finds each defect it was built against: with a protection removed
(tests/simulation/protections.py), some of the first 2,000 schedules fail; and the
schedules recorded in CAUGHT still do, in the default run."""
import logging
import os

import pytest

from .protections import MUTANTS, failing_seeds
from .sim import SimFailure, run_schedule
from .test_protocol import MUTANT_SEARCH

#: Schedules that caught a defect with its fix undone, kept for the default run: the seed,
#: the mutant that puts the defect back, and what the failure says.
CAUGHT = [
    # Found with the code before a8c3978 (its windows.py and columnar_windows.py): r1 runs
    # at parallelism 2, partition 1 (5 ms of event time a record) on subtask 1 ahead of
    # partitions 0 and 2 (2 ms) on subtask 0, and stops with a savepoint; r2 restores it at
    # 1, from the older watermark, and key 1's window [90, 100) ms, which had fired on
    # subtask 1, fires again with count 2 as an update (windowed.py). 41 of the 150 window
    # schedules of the first 2,000 catch it, 4 of the first 200.
    (96, "fired_windows_fire_again", "not more than the row before it .*fired again with what it had"),
    # Found with the code before 96e1187 (no key group keeps its watermark): r1 at
    # parallelism 2, subtask 1 (partition 1, 5 ms a record) fires key 20016's window [80, 90)
    # ms with count 2 and drops it (lateness 10 ms) while subtask 0 is at 39 ms; r2 restores
    # the savepoint at 1, from 39 ms, and a straggler of partition 1 at 87 ms opens the window
    # again, which fires a second first result with count 1 (windowed.py). 4 of the 150
    # window schedules of the first 2,000 catch it (96, 340, 1713, 1983).
    (96, "group_watermarks_forgotten", r"2 first results \(update=False\) committed"),
    # Found with the code before review 47's fix (fired windows as one batch whatever their
    # keys): partitions 0 and 1 key their rows by strings ("10042"; "20015", "20022"),
    # partition 2 by ints (2); at parallelism 2 subtask 0 reads partitions 0 and 2, and its
    # window step's first watermark to fire both kinds fails building the output's key
    # column (windowed.py), and the run with it. 1 of the first 200 schedules catches it.
    (45, "fired_keys_in_one_column", "ArrowTypeError: Expected bytes, got a 'int' object"),
]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # power loss is not simulated
    logging.disable(logging.CRITICAL)  # thousands of aborted checkpoints and restores say so
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.extended
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_removing_a_protection_fails_some_schedule(mutant, tmp_path):
    failed = failing_seeds(mutant, range(MUTANT_SEARCH), str(tmp_path), stop_after=1)
    assert failed, f"no schedule of {MUTANT_SEARCH} fails without the protection: {MUTANTS[mutant][0]}"


@pytest.mark.parametrize("seed, mutant, message", CAUGHT)
def test_a_recorded_schedule_still_catches_its_defect(seed, mutant, message, tmp_path):
    with MUTANTS[mutant][1]():
        with pytest.raises(SimFailure, match=message):
            run_schedule(seed, str(tmp_path / "mutant"))
    run_schedule(seed, str(tmp_path / "fixed"))  # and passes with the fix
