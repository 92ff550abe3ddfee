"""What Ray cannot report, the coordinator's own timeout finds; and a restart strategy
ends a crash loop with a clear error instead of restarting forever."""
import os
import signal

import psutil
import pytest

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource
from tests.helpers.support import wait_until

from .harness import load_billing, running


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_a_hung_subtask_is_found_by_the_checkpoint_timeout(monkeypatch, tmp_path):
    ns = load_billing(monkeypatch, events=12_000, rate=4_000, out=str(tmp_path / "out"))
    job = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3, timeout=1.0, tolerable_failures=0))
    handle = job.start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    pid = status.pids[sorted(status.pids)[-1]]
    os.kill(pid, signal.SIGSTOP)  # alive to Ray, but it never answers again
    try:
        result = handle.wait()
    finally:
        if psutil.pid_exists(pid):  # the restart killed it; never leave a stopped process
            os.kill(pid, signal.SIGKILL)
    assert ns["verify"]().ok, ns["verify"]()
    assert result.restarts >= 1 and result.checkpoints.failed >= 1


def crash_on_1234(x: int) -> int:
    if x == 1234:
        os._exit(1)  # the process dies, the same way, on every attempt
    return x


def test_a_crash_loop_ends_with_a_clear_error():
    job = rs.Job("crashloop", checkpoint=rs.CheckpointConfig(interval=0.2),
                 restart=rs.RestartStrategy.fixed_delay(0.1, max_restarts=2, window=60))
    job.source("nums", SequenceSource(5_000, rate=5_000)).map("fragile", crash_on_1234).sink("out", CollectSink())
    with pytest.raises(rs.JobFailedError, match=r"giving up after 2 restarts within 60s.*ActorDiedError"):
        job.run()
