"""The checkpoint and recovery protocols under thousands of seeded schedules.

Each schedule runs the real protocol code (tests/simulation/sim.py) with random delays,
lost responses, slow writes that land late, process deaths and a damaged snapshot, and
then checks the invariants on committed output. A failure prints its seed; replay it
with RAYSTREAM_SIM_SEED=<seed>. `pytest -m simulation_deep` runs many more schedules
(RAYSTREAM_SIM_DEEP, default 20,000).
"""
import os

import pytest

from .sim import run_schedule

CI_SCHEDULES = 1_000


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Power loss is not simulated: skip fsync so that thousands of schedules stay fast."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def run_many(seeds, tmp_path) -> dict[str, int]:
    totals = {"attempts": 0, "crashes": 0, "coordinators": 0, "refused": 0, "commits": 0}
    for seed in seeds:
        trace = run_schedule(seed, str(tmp_path / f"out-{seed}"))
        totals["attempts"] += trace.attempts
        totals["crashes"] += trace.crashes
        totals["coordinators"] += trace.coordinators
        totals["refused"] += len(trace.refused)
        totals["commits"] += len(trace.commits)
    return totals


def test_seeded_schedules_keep_every_invariant(tmp_path):
    if os.environ.get("RAYSTREAM_SIM_SEED"):
        seeds = [int(os.environ["RAYSTREAM_SIM_SEED"])]
    else:
        seeds = range(CI_SCHEDULES)
    totals = run_many(seeds, tmp_path)
    print(f"{len(seeds)} schedules: {totals}")
    if len(seeds) == CI_SCHEDULES:  # the schedules really exercise recovery
        assert totals["crashes"] > len(seeds) // 2 and totals["coordinators"] > len(seeds) * 1.1
        assert totals["attempts"] > len(seeds) * 1.5 and totals["refused"] > 0


@pytest.mark.simulation_deep
def test_many_more_seeded_schedules(tmp_path):
    n = int(os.environ.get("RAYSTREAM_SIM_DEEP", "20000"))
    run_many(range(CI_SCHEDULES, CI_SCHEDULES + n), tmp_path)
