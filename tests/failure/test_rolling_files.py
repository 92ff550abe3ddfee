"""FileSink with a rolling policy, exactly once under crashes, locally and on S3: part
files stay open across checkpoints, a restore commits the open file cut back to what its
checkpoint recorded, and every event is still committed once."""
import dataclasses
import os
import random

import boto3
import pytest

import raystream as rs
from raystream.testing.faults import CrashAt
from tests.helpers.support import wait_until

from .harness import kill, load_billing, running

EVENTS = 9_000


def committed_files(out: str) -> list[str]:
    if out.startswith("s3://"):
        bucket, _, prefix = out[5:].partition("/")
        listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
        names = [o["Key"].rsplit("/", 1)[1] for o in listed]
        uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
        assert not uploads, f"multipart uploads left open: {[u['Key'] for u in uploads]}"
    else:
        names = os.listdir(out)
    assert not [n for n in names if n.startswith(("_", "."))], f"staged or temporary files left behind: {names}"
    return [n for n in names if n.startswith("part-")]


@pytest.mark.extended
def test_crash_after_pre_commit_and_again_during_restore(monkeypatch, tmp_path):
    out = str(tmp_path / "out")
    ns = load_billing(monkeypatch, events=EVENTS, rate=4_500, out=out, roll_size=300_000)
    faults = (CrashAt("sink_pre_committed", step="totals", subtask=0, checkpoint=3),
              CrashAt("restore", step="totals", subtask=1, checkpoint=1, attempt=2))
    job = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3),
                                 runtime=dataclasses.replace(ns["job"].runtime, faults=faults))
    result = job.run()
    assert ns["verify"]().ok, ns["verify"]()
    assert result.restarts >= 2
    files = committed_files(out)
    # About 1 MB of totals in 300 kB files (and the files open at each restore), not one
    # file per subtask and checkpoint.
    assert len(files) < 2 * result.checkpoints.completed, (len(files), result.checkpoints.completed)


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.extended)])
def test_a_subtask_killed_while_files_roll_by_time(monkeypatch, tmp_path, where, request):
    out = str(tmp_path / "out") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/out"
    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=out, roll_interval=1.0)
    handle = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3)).start()
    status = wait_until(lambda: running(handle, checkpoints=3), "three checkpoints")
    rng = random.Random(7)
    kill(status.pids[rng.choice(sorted(status.pids))])
    result = handle.wait()
    assert ns["verify"]().ok, ns["verify"]()
    assert result.restarts >= 1
    files = committed_files(out)
    assert len(files) < 2 * result.checkpoints.completed, (len(files), result.checkpoints.completed)


def row(i: int) -> dict:
    return {"id": i}


@pytest.mark.extended
def test_parquet_compacted_while_the_job_writes_and_a_subtask_is_killed(tmp_path):
    out, n = str(tmp_path / "out"), 24_000
    job = rs.Job("parquet_ids", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.2),
                 restart=rs.RestartStrategy(delay=0.1))
    (job.source("ids", rs.sources.SequenceSource(n, partitions=2, rate=3_000)).map("row", row)
     .sink("out", rs.sinks.FileSink(out, format="parquet", roll="checkpoint")))
    handle = job.start()
    status = wait_until(lambda: running(handle, checkpoints=8), "eight checkpoints")
    root = f"{os.getcwd()}/raystream-checkpoints/parquet_ids"
    first = rs.sinks.compact_files(out, checkpoints=root, target_size=1 << 20)  # while the job commits more
    kill(status.pids[sorted(status.pids)[-1]])
    wait_until(lambda: running(handle, attempt=status.attempt + 1, checkpoints=status.checkpoints.completed + 2)
               or handle.status().state == "finished", "two checkpoints after the restore")
    second = rs.sinks.compact_files(out, checkpoints=root, target_size=1 << 20)
    result = handle.wait()
    assert first.files_in >= 4 and second.files_in >= 2 and result.restarts >= 1
    ids = sorted(r["id"] for r in rs.sinks.read_files(out, format="parquet"))
    assert ids == list(range(n)), f"{len(ids)} rows, {len(set(ids))} distinct ids; expected {n} once each"
    rs.sinks.compact_files(out, checkpoints=root, target_size=1 << 20)  # the job has ended
    # one merged file, and what the retained checkpoints may commit again or retract
    assert len(committed_files(out)) <= 1 + 2 * rs.CheckpointConfig().retain
    assert sorted(r["id"] for r in rs.sinks.read_files(out, format="parquet")) == list(range(n))


def sink_pids(status, step: str) -> list[int]:
    """The processes of the subtasks whose chain holds sink `step`."""
    return [pid for name, pid in sorted(status.pids.items()) if step in name.split("[")[0].split("+")]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.extended)])
def test_the_default_rolling_policy_under_kills_of_the_sink_subtask(monkeypatch, tmp_path, seed):
    """JSON lines as a default FileSink writes them (nothing rolls in a run this short: each
    restore commits the open file cut back to its checkpoint, the end commits the last)."""
    out = str(tmp_path / "out")
    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=out)
    handle = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3)).start()
    rng = random.Random(seed)
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    for k in range(2):
        wait_until(lambda: handle.status().checkpoints.completed >= status.checkpoints.completed + rng.randint(1, 4),
                   "more checkpoints")
        kill(rng.choice(sink_pids(handle.status(), "totals")))
        status = wait_until(lambda: running(handle, attempt=status.attempt + 1, checkpoints=0), "the next attempt")
    result = handle.wait()
    assert ns["verify"]().ok, ns["verify"]()
    assert result.restarts >= 2
    # one file per subtask and restore, and the last: not one per checkpoint
    assert len(committed_files(out)) <= 2 * (result.restarts + 1), (committed_files(out), result.checkpoints.completed)


def parquet_job(out: str, n: int, rate: float, **sink_options) -> rs.Job:
    job = rs.Job("parquet_rolled", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.2),
                 restart=rs.RestartStrategy(delay=0.1))
    (job.source("ids", rs.sources.SequenceSource(n, partitions=2, rate=rate)).map("row", row)
     .sink("out", rs.sinks.FileSink(out, format="parquet", rows_per_file=400, **sink_options)))
    return job


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
@pytest.mark.parametrize("where, seed", [("local", 0), pytest.param("s3", 1, marks=pytest.mark.extended),
                                         pytest.param("local", 2, marks=pytest.mark.extended)])
def test_rolling_parquet_exactly_once_under_kills_of_the_sink_subtask(tmp_path, where, seed, request):
    """Parquet parts roll every second (segments a checkpoint, merged at the roll); the
    sink's subtasks are killed at random moments: every id committed once, no segment or
    staged file left, and files by the second, not by the checkpoint."""
    out = str(tmp_path / "out") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/out"
    n, rng = 15_000, random.Random(seed)
    handle = parquet_job(out, n, rate=3_000, roll_interval=1.0).start()
    status = wait_until(lambda: running(handle, checkpoints=3), "three checkpoints")
    for _ in range(2):
        pause = handle.status().checkpoints.completed + rng.randint(1, 8)
        wait_until(lambda: handle.status().checkpoints.completed >= pause or handle.status().state != "running",
                   "more checkpoints")
        if handle.status().state != "running":
            break
        kill(rng.choice(sink_pids(handle.status(), "out")))
        status = wait_until(lambda: running(handle, attempt=status.attempt + 1) or
                            handle.status().state == "finished", "the next attempt") or status
    result = handle.wait()
    assert result.state == "finished" and result.restarts >= 1
    ids = sorted(r["id"] for r in rs.sinks.read_files(out, format="parquet"))
    assert ids == list(range(n)), f"{len(ids)} rows, {len(set(ids))} distinct ids; expected {n} once each"
    files = committed_files(out)
    assert len(files) < result.checkpoints.completed, (len(files), result.checkpoints.completed)
