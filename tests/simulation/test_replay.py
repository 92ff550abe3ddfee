"""A schedule of the simulation depends on its seed alone, so that a failing seed replays.

Seeds of every story (two runs from a savepoint with PostgreSQL, a calm schedule with
compaction, a resume with a partition gone, Parquet and S3, a fork, a savepoint; Arrow
batches through the columnar aggregate in 0, event time in 3 and 5) run in
two processes: one plain, one with another PYTHONHASHSEED, the seeds in reverse order, a
wall clock that jumps, the garbage collector at a hair trigger, another thread taking
uuid4s and a longer output directory (tests/simulation/replay.py). Their fingerprints
(outcome, trace, log, committed output) must be equal.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from .world import World

SEEDS = [0, 3, 5, 12, 19, 36, 96]  # 96: a window schedule (windowed.py)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fingerprints(out: str, hash_seed: str, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "tests.simulation.replay", "--out", out, *flags,
                             *map(str, SEEDS)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_schedule_depends_on_its_seed_alone(tmp_path):
    plain = _fingerprints(str(tmp_path / "plain"), "0")
    perturbed = _fingerprints(str(tmp_path / "perturbed"), "1", "--perturb")
    runs = []
    for proc in (plain, perturbed):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        runs.append(dict(line.split(" ", 1) for line in out.splitlines()))
    assert sorted(map(int, runs[0])) == SEEDS
    differ = {seed: (runs[0][seed], runs[1].get(seed)) for seed in runs[0] if runs[0][seed] != runs[1].get(seed)}
    assert not differ, f"schedules that did not replay (plain, perturbed): {differ}"


def test_timers_of_the_code_under_test_wait_virtual_seconds():
    """asyncio.sleep in the code under test (a retry's backoff) wakes at its virtual time,
    among the world's events; on the wall clock it would wake wherever the machine's speed
    put it."""
    world = World(0)
    seen: list[tuple[str, float]] = []

    async def backoff() -> None:
        await asyncio.sleep(0.2)
        seen.append(("backoff", world.now))

    async def play() -> None:
        for at in (0.1, 0.3, 5.0):
            world.at(at, lambda at=at: seen.append((f"event {at}", world.now)))
        task = asyncio.ensure_future(backoff())
        await world.run(lambda: len(seen) == 4, limit=10.0)
        await task

    loop = world.new_loop()
    try:
        loop.run_until_complete(play())
    finally:
        loop.close()
    assert seen == [("event 0.1", 0.1), ("backoff", 0.2), ("event 0.3", 0.3), ("event 5.0", 5.0)]
