"""The three guarantees under real kills (the article's table): exactly-once neither loses
nor duplicates, at-least-once never loses, at-most-once never duplicates."""
import collections
import logging

import pytest

import raystream as rs
from raystream.sinks import FileSink, read_files
from raystream.sources import SequenceSource

from tests.helpers.support import wait_until

from .harness import kill, load_billing, running

logger = logging.getLogger(__name__)

EVENTS = 12_000


def run_with_kills(job, kills: int, step: str = "totals"):
    handle = job.start()
    status = wait_until(lambda: running(handle, checkpoints=1 if job.guarantee != rs.Guarantee.AT_MOST_ONCE else 0),
                        "the job to run")
    for k in range(kills):
        rows = status.steps[step].records_in
        status = wait_until(lambda: (s := running(handle, attempt=status.attempt)) and
                            s.steps[step].records_in > rows + 500 and s, "progress")
        victims = sorted(status.pids)
        kill(status.pids[victims[(k * 3 + 1) % len(victims)]])
        status = wait_until(lambda: running(handle, attempt=status.attempt + 1), "recovery")
    return handle.wait()


def test_at_least_once_loses_nothing(monkeypatch, tmp_path):
    ns = load_billing(monkeypatch, events=EVENTS, rate=4_000, out=str(tmp_path / "out"), file_rows=300)
    job = ns["job"].with_options(guarantee="at_least_once", checkpoint=rs.CheckpointConfig(interval=0.5))
    result = run_with_kills(job, kills=2)
    v = ns["verify"]()
    logger.warning("at-least-once after 2 kills: %d duplicated (allowed), %d missing", v.duplicated, v.missing)
    assert v.missing == 0 and result.restarts == 2


def test_at_most_once_duplicates_nothing(monkeypatch, tmp_path):
    ns = load_billing(monkeypatch, events=EVENTS, rate=4_000, out=str(tmp_path / "out"), file_rows=300)
    job = ns["job"].with_options(guarantee="at_most_once")
    result = run_with_kills(job, kills=2)
    v = ns["verify"]()
    logger.warning("at-most-once after 2 kills: %d missing (allowed), %d duplicated", v.missing, v.duplicated)
    assert v.duplicated == 0 and v.rows <= EVENTS and result.restarts == 2


class SlowPath:
    """The slow input of the union: while the file `hold` exists the step waits, so the
    barrier behind it cannot reach the union and the union stays aligning until the test
    has seen it and killed it (no race with the poll)."""

    def __init__(self, hold: str):
        self.hold = hold

    def __call__(self, x: int) -> int:
        import os
        import time

        while os.path.exists(self.hold):
            time.sleep(0.01)
        return x


@pytest.mark.extended  # moved out of the default run to keep it under 15 minutes
def test_kill_during_barrier_alignment_of_a_union(tmp_path):
    # Both inputs are paced by their sources to last ~20 s, so neither ends before the test
    # holds the slow one after two checkpoints, even on a loaded machine (a per-record sleep
    # in the slow step once made it the bottleneck: checkpoints came seconds apart and the
    # slow input could end first). An input that has ended is not aligned on.
    fast_n, slow_n = 60_000, 6_000
    hold = tmp_path / "hold"
    job = rs.Job("union", parallelism=1, checkpoint=rs.CheckpointConfig(interval=0.2),
                 runtime=rs.RuntimeConfig(batch_size=256))
    fast = job.source("fast", SequenceSource(fast_n, rate=3_000))
    slow = job.source("slow", SequenceSource(slow_n, rate=300)).map("offset", lambda x: x + fast_n) \
        .map("slow_path", SlowPath(str(hold)))
    (fast.union(slow)
        .key_by("by_mod", lambda x: x % 7)
        .stateful_map("sum", lambda total, x: ((total or 0) + x, {"id": x, "total": (total or 0) + x}))
        .map("row", lambda kv: kv[1])
        .sink("out", FileSink(str(tmp_path / "out"))))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    hold.touch()

    def union_aligning():
        s = handle.status()
        assert s.state not in ("finished", "failed"), "the job ended while the slow input was held"
        return s.state == "running" and "by_mod[0]" in s.aligning and s

    status = wait_until(union_aligning, "the union step (two inputs) to be aligning")
    kill(status.pids["by_mod[0]"])
    hold.unlink()
    result = handle.wait()
    rows = read_files(str(tmp_path / "out"))
    ids = collections.Counter(r["id"] for r in rows)
    assert sorted(ids) == list(range(fast_n + slow_n)) and set(ids.values()) == {1}
    final = {}
    for r in rows:
        final[r["id"] % 7] = max(final.get(r["id"] % 7, 0), r["total"])
    assert final == {k: sum(range(k, fast_n + slow_n, 7)) for k in range(7)}
    assert result.restarts == 1


def count_per_key(state, x):
    count = (state or 0) + 1
    return count, {"id": x, "key": x % 3, "count": count}


def test_at_most_once_keeps_keyed_state_across_a_kill(tmp_path):
    """At-most-once snapshots state without rewinding sources: after a kill, each key's
    count continues from the last complete checkpoint instead of starting over, and no
    id repeats. (Rows a sink flushed after that checkpoint stay written while their state
    updates are lost, so some counts repeat; that is the documented at-most-once loss.)"""
    n = 12_000
    job = rs.Job("amo_state", parallelism=1, guarantee="at_most_once", checkpoint=rs.CheckpointConfig(interval=0.2))
    (job.source("nums", SequenceSource(n, rate=4_000))
        .key_by("by_mod", lambda x: x % 3)
        .stateful_map("count", count_per_key)
        .map("row", lambda kv: kv[1])
        .sink("out", FileSink(str(tmp_path / "out"))))
    handle = job.start()
    status = wait_until(lambda: (s := running(handle, checkpoints=3)) and s.steps["row"].records_in > n // 3 and s,
                        "a third of the input and three checkpoints")
    kill(status.pids[next(k for k in status.pids if k.startswith("count"))])
    result = handle.wait()
    assert result.restarts == 1
    rows = read_files(str(tmp_path / "out"))
    ids = collections.Counter(r["id"] for r in rows)
    assert max(ids.values()) == 1  # nothing duplicated
    for key in range(3):
        counts = [r["count"] for r in rows if r["key"] == key]
        assert counts.count(1) == 1, f"key {key}: its count started over after the restart"
    assert len(ids) > n // 3  # what came after the kill was processed too
    assert result.records_replayed == 0  # its sources went on from the offsets they saved
