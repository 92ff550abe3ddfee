"""Checkpoints on a misbehaving S3 (moto server, faults injected with botocore hooks in
every process): transient errors are retried, slow PUTs still complete, a lost response
to a manifest PUT is recognised as the success it was, and an outage aborts checkpoints
while the job carries on and commits again once S3 is back."""
import dataclasses

import pytest

import raystream as rs
from raystream.testing.faults import S3Faults
from raystream.sinks import read_files
from tests.helpers.support import wait_until

from .harness import kill, load_billing, running, verify_stopped


def s3_job(monkeypatch, tmp_path, bucket, faults: S3Faults, events=12_000, ns_out=None, **checkpoint):
    ns = load_billing(monkeypatch, events=events, rate=4_000, out=str(tmp_path / "out"))
    job = ns["job"]
    cp = rs.CheckpointConfig(**{"interval": 0.3, "storage": f"s3://{bucket}/chk", **checkpoint})
    job = job.with_options(checkpoint=cp, runtime=dataclasses.replace(job.runtime, faults=(faults,)))
    if ns_out is not None:
        ns_out.update(ns)
    return job, ns["verify"]


def injected(log) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        what = line.split(" ", 1)[1]
        counts[what] = counts.get(what, 0) + 1
    return counts


@pytest.mark.extended  # moved out of the default run to keep it under 15 minutes
def test_transient_errors_are_retried(monkeypatch, tmp_path, s3_bucket):
    log = tmp_path / "faults.log"
    job, verify = s3_job(monkeypatch, tmp_path, s3_bucket, S3Faults(error_every=4, log=str(log)))
    result = job.run()
    assert verify().ok
    assert sum(v for k, v in injected(log).items() if k.startswith("error")) >= 5
    # Two or more (how many fit in the 3 s of events depends on the machine's load), none failed.
    assert result.checkpoints.completed >= 2 and result.checkpoints.failed == 0 and result.restarts == 0


def test_slow_puts_still_complete_checkpoints(monkeypatch, tmp_path, s3_bucket):
    log = tmp_path / "faults.log"
    job, verify = s3_job(monkeypatch, tmp_path, s3_bucket, S3Faults(put_delay=0.2, log=str(log)))
    result = job.run()
    assert verify().ok
    assert injected(log)["slow PUT"] >= 10
    assert result.checkpoints.completed >= 2 and result.checkpoints.last_duration >= 0.2


def test_a_lost_manifest_response_is_recognised_not_failed(monkeypatch, tmp_path, s3_bucket):
    log = tmp_path / "faults.log"
    job, verify = s3_job(monkeypatch, tmp_path, s3_bucket, S3Faults(lose_manifest_responses=2, log=str(log)))
    result = job.run()
    assert verify().ok
    assert injected(log)["lost manifest response"] == 2
    assert result.checkpoints.failed == 0 and result.restarts == 0


@pytest.mark.extended  # 17 s; the simulation plays outages in every calm schedule of the default run
def test_an_outage_aborts_checkpoints_and_the_job_carries_on(monkeypatch, tmp_path, s3_bucket):
    flag, log = tmp_path / "s3-down", tmp_path / "faults.log"
    ns: dict = {}
    # An input that outlasts any outage: the job is stopped once S3 is back, so the
    # sources never end (and the final checkpoint is never due) while S3 is down.
    job, _ = s3_job(monkeypatch, tmp_path, s3_bucket, S3Faults(down_while_exists=str(flag), log=str(log)),
                    events=10**8, ns_out=ns, timeout=2.0, tolerable_failures=100)
    handle = job.start()
    before = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints").checkpoints
    flag.touch()  # S3 goes down
    try:
        wait_until(lambda: handle.status().checkpoints.failed >= before.failed + 2, "checkpoints to fail")
    finally:
        flag.unlink()  # and comes back
    down = handle.status().checkpoints
    wait_until(lambda: handle.status().checkpoints.completed > down.completed, "a checkpoint after the outage")
    handle.stop()
    result = handle.wait()
    events, lost, duplicated = verify_stopped(read_files(str(tmp_path / "out")), ns["usage_event"], partitions=4)
    assert events > 0 and lost == 0 and duplicated == 0
    assert result.restarts == 0 and result.checkpoints.failed >= 2
    assert injected(log)["down PUT"] >= 1


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_kills_while_a_slow_manifest_put_is_in_flight(monkeypatch, tmp_path, s3_bucket):
    """A manifest PUT in flight when a subtask dies lands before recovery chooses what to
    restore (the ended attempt's publish is awaited), so a second crash right after the
    restart restores a checkpoint whose staged files all exist."""
    log = tmp_path / "faults.log"
    job, verify = s3_job(monkeypatch, tmp_path, s3_bucket, S3Faults(manifest_put_delay=1.0, log=str(log)),
                         events=16_000)
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=1), "a checkpoint")
    puts = injected(log).get("slow manifest PUT", 0)
    status = wait_until(lambda: injected(log).get("slow manifest PUT", 0) > puts and running(handle),
                        "a manifest PUT in flight")
    kill(status.pids[sorted(status.pids)[-1]])
    status = wait_until(lambda: running(handle, attempt=2), "the restart")
    kill(status.pids[sorted(status.pids)[0]])  # before attempt 2 completes any checkpoint
    result = handle.wait()
    assert verify().ok
    assert result.restarts == 2 and result.checkpoints.refused == 0
