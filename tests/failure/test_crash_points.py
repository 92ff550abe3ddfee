"""A crash at every named point of the checkpoint protocol, each followed by a second
crash while the next attempt restores, and still every event exactly once."""
import dataclasses

import pytest

import raystream as rs
from raystream.testing.faults import COORDINATOR_POINTS, SUBTASK_POINTS, CrashAt

from .harness import load_billing

# billing at parallelism 2 has two chains: usage+event+by_customer (the sources) and
# running_total+row+totals (two inputs each, so it aligns barriers; holds the sink).
WHERE = {
    "mid_alignment": ("running_total", 0),
    "batch_before_barrier": ("usage", 0),
    "sink_pre_committed": ("totals", 0),
    "snapshot_uploaded": ("usage", 1),
    "sink_committed": ("totals", 1),
}


# The default run crashes while a manifest is being written (the commit point, C5); the
# rest run with `pytest -m extended`, which keeps the default run under 15 minutes on 2 cores.
EXTENDED = {"batch_before_barrier", "sink_committed", "acks_complete", "manifest_written", "snapshot_uploaded",
            "sink_pre_committed", "mid_alignment"}
# "stopping" needs a stop: tests/integration/test_savepoints.py crashes there.
POINTS = [pytest.param(p, marks=pytest.mark.extended) if p in EXTENDED else p
          for p in sorted(set(SUBTASK_POINTS) - {"restore"}) + sorted(set(COORDINATOR_POINTS) - {"stopping"})]


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_point_then_again_during_recovery(monkeypatch, tmp_path, point):
    step, subtask = WHERE.get(point, (None, None))
    faults = (
        CrashAt(point, step=step, subtask=subtask, checkpoint=2),
        # The second crash: the first restore after the first crash, whichever attempt that is.
        CrashAt("restore", step="totals", subtask=0, checkpoint=1, attempt=2),
    )
    # a rolling sink commits a file only once it rolls (60 s by default): to reach the
    # commit of checkpoint 2, the sink at sink_committed writes a file per checkpoint
    ns = load_billing(monkeypatch, events=8_000, rate=5_000, out=str(tmp_path / "out"),
                      roll="checkpoint" if point == "sink_committed" else "")
    job = ns["job"]
    job = job.with_options(checkpoint=rs.CheckpointConfig(interval=0.3),
                           runtime=dataclasses.replace(job.runtime, faults=faults))
    result = job.run()
    verdict = ns["verify"]()
    assert verdict.ok, (point, verdict)
    assert result.restarts >= 2, f"{point}: expected two crashes, saw {result.restarts} restarts"
