"""PostgresSink exactly-once under crashes: at every named point around prepare and commit
(each followed by a second crash, at `restore`, while the next attempt restores), and under SIGKILL of a
subtask or of the coordinator at a random time. The tables must hold every order once,
totals equal to the input's sums, and no prepared transaction once the job has ended."""
import logging
import random

import pytest

from raystream.testing.faults import CrashAt
from tests.helpers.postgres import check_exactly_once, orders_job
from tests.helpers.support import wait_until

from .harness import kill, running

logger = logging.getLogger(__name__)

ORDERS = 8_000
# Chains at parallelism 2: source+order+rows (the append sink) and total+totals (the upsert sink).
WHERE = {
    "sink_pre_committed": ("rows", 0),
    "sink_committed": ("totals", 1),
    "snapshot_uploaded": ("total", 0),
}
# All of them run with `pytest -m extended`; the default run has PostgreSQL under SIGKILL in
# test_kafka_kills.py (an upsert sink fed from Kafka).
POINTS = [pytest.param(p, marks=pytest.mark.extended)
          for p in ("sink_pre_committed", "sink_committed", "snapshot_uploaded",
                    "acks_complete", "manifest_writing", "manifest_written")]


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_point_then_again_during_recovery(pg_dsn, point):
    step, subtask = WHERE.get(point, (None, None))
    faults = (CrashAt(point, step=step, subtask=subtask, checkpoint=2),
              CrashAt("restore", step="rows", subtask=1, checkpoint=1, attempt=2))
    result = orders_job(pg_dsn, ORDERS, rate=5_000, faults=faults).run()
    assert result.restarts >= 2, f"{point}: expected two crashes, saw {result.restarts} restarts"
    check_exactly_once(pg_dsn, ORDERS)


@pytest.mark.extended
@pytest.mark.parametrize("seed", [0, 1])
def test_a_subtask_killed_at_a_random_time(pg_dsn, seed):
    rng = random.Random(seed)
    handle = orders_job(pg_dsn, ORDERS, rate=4_000).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    # At random before 60% of the rows, or at once if a slow machine is past that already.
    seen = status.steps["totals"].records_in
    threshold = rng.randint(seen, max(seen, ORDERS * 6 // 10))
    wait_until(lambda: handle.status().steps["totals"].records_in >= threshold, f"{threshold} rows")
    victim = rng.choice(sorted(handle.status().pids))
    logger.warning("seed %d kills %s", seed, victim)
    kill(handle.status().pids[victim])
    result = handle.wait()
    assert result.restarts >= 1 and result.state == "finished"
    check_exactly_once(pg_dsn, ORDERS)


@pytest.mark.extended
def test_the_coordinator_killed(pg_dsn):
    handle = orders_job(pg_dsn, ORDERS, rate=4_000).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    kill(status.coordinator_pid)
    wait_until(lambda: running(handle, attempt=status.attempt + 1), "a new coordinator's attempt")
    result = handle.wait()
    assert result.state == "finished"
    check_exactly_once(pg_dsn, ORDERS)
