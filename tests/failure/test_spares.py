"""Spare actors: the driver's next job starts on processes that were up before it
(`RuntimeConfig.spare_actors`), and with `recovery_spares` a recovery restarts the
killed attempt's subtasks on spares, with every event still committed exactly once."""
import dataclasses

import ray

import raystream as rs
from raystream._runtime.control import driver
from raystream.sinks import CollectSink, read_files
from raystream.sources import SequenceSource

from tests.helpers.support import wait_until

from .harness import kill, load_billing, running, verify_stopped


def small_job() -> rs.Job:
    job = rs.Job("spares", parallelism=2)
    (job.source("nums", SequenceSource(20_000, partitions=2)).map("double", lambda x: 2 * x)
        .sink("out", CollectSink()))
    return job


def test_the_next_job_runs_on_the_spare_coordinator_and_its_spare_subtasks():
    assert sorted(small_job().run().outputs["out"]) == [2 * x for x in range(20_000)]
    # The job that ended left a spare coordinator with one spare per subtask (two here).
    spare = wait_until(lambda: driver._spare._handle, "the driver's spare coordinator")
    ready = set(ray.get(spare.spare_pids.remote(), timeout=60))
    assert len(ready) == 2
    handle = small_job().start()
    status = wait_until(lambda: running(handle), "the second job to run")
    assert set(status.pids.values()) == ready  # no process was started for this job
    assert sorted(handle.wait().outputs["out"]) == [2 * x for x in range(20_000)]


def test_a_recovery_restarts_every_subtask_on_a_spare(monkeypatch, tmp_path):
    # Endless events: on a loaded machine the four spares took about 5 s to come up, and
    # the kill below must come while the job still runs; it is stopped after the recovery.
    ns = load_billing(monkeypatch, events=10**9, rate=3_000, out=str(tmp_path / "out"))
    job = ns["job"]
    handle = job.with_options(checkpoint=rs.CheckpointConfig(interval=0.3),
                              runtime=dataclasses.replace(job.runtime, recovery_spares=1.0)).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    coordinator = handle._supervisor.coordinator
    # Spares start once the job has run a second and has a checkpoint, one per subtask (billing has four).

    def all_spares() -> set[int] | None:
        pids = set(ray.get(coordinator.spare_pids.remote()))
        return pids if len(pids) == len(status.pids) else None

    ready = wait_until(all_spares, "a spare per subtask")
    kill(status.pids[sorted(status.pids)[0]])
    after = wait_until(lambda: running(handle, attempt=status.attempt + 1), "the next attempt")
    assert set(after.pids.values()) == ready
    completed = after.checkpoints.completed
    wait_until(lambda: handle.status().checkpoints.completed > completed, "a checkpoint of the next attempt")
    handle.stop()
    result = handle.wait()
    events, lost, duplicated = verify_stopped(read_files(str(tmp_path / "out")), ns["usage_event"], partitions=4)
    assert (lost, duplicated) == (0, 0) and events > 0
    assert result.restarts == 1 and result.recoveries
