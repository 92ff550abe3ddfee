"""The simulation finds each defect it was built against: with a protection removed
(tests/simulation/protections.py), some of the first 2,000 schedules fail."""
import logging
import os

import pytest

from .protections import MUTANTS, failing_seeds
from .test_protocol import EXTENDED_SCHEDULES


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # power loss is not simulated
    logging.disable(logging.CRITICAL)  # thousands of aborted checkpoints and restores say so
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.extended
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_removing_a_protection_fails_some_schedule(mutant, tmp_path):
    failed = failing_seeds(mutant, range(EXTENDED_SCHEDULES), str(tmp_path), stop_after=1)
    assert failed, f"no schedule of {EXTENDED_SCHEDULES} fails without the protection: {MUTANTS[mutant][0]}"
