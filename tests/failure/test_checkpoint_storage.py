"""Checkpoints on S3 (moto server), a damaged snapshot refused by its checksum, and a
whole program killed and resumed."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import ray

import raystream as rs

from tests.helpers.support import live_job_actors, wait_until

from .harness import BILLING, kill, load_billing, running

EVENTS = 12_000


def test_exactly_once_with_checkpoints_and_output_on_s3(monkeypatch, s3_bucket):
    ns = load_billing(monkeypatch, events=EVENTS, rate=4_000, out=f"s3://{s3_bucket}/out")
    job = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3, storage=f"s3://{s3_bucket}/chk"))
    handle = job.start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    kill(status.pids[sorted(status.pids)[0]])
    result = handle.wait()
    assert ns["verify"]().ok
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=s3_bucket, Prefix=f"chk/billing/{result.run_id}/manifests/")["Contents"]]
    ids = [int(k.rsplit("/", 1)[1].split(".")[0]) for k in keys]
    assert ids == sorted(ids) and len(ids) <= job.checkpoint.retain  # retention kept the newest
    assert max(ids) == result.checkpoints.last_id


def run_then_kill_program(tmp_path, after_manifests: int) -> Path:
    """Run billing through the CLI in another process on this Ray; SIGKILL that process
    once `after_manifests` checkpoints are committed. Returns the run's directory."""
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    root, errors = tmp_path / "raystream-checkpoints" / "billing", tmp_path / "program.err"
    with errors.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "raystream.cli", "run", str(BILLING)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)

    def first_manifest() -> Path | None:
        # a program that ended (could not start) says why now, not after the wait's deadline
        assert proc.poll() is None, f"the program exited with {proc.returncode}: {errors.read_text()[-2000:]}"
        return next(iter(root.glob("*/manifests")), None)

    try:
        run_dir = wait_until(first_manifest, "the first manifest").parent
        wait_until(lambda: len(list((run_dir / "manifests").glob("*.json"))) >= after_manifests,
                   f"{after_manifests} manifests")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_until(lambda: not live_job_actors("billing"), "the killed program's actors to end")
    return run_dir


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_resume_after_the_whole_program_was_killed(monkeypatch, tmp_path):
    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=str(tmp_path / "out"))
    run_dir = run_then_kill_program(tmp_path, after_manifests=2)
    result = ns["job"].run(resume=True)
    assert result.run_id == run_dir.name
    assert ns["verify"]().ok, ns["verify"]()


def test_a_damaged_snapshot_is_refused_and_the_previous_checkpoint_restores(monkeypatch, tmp_path):
    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=str(tmp_path / "out"))
    run_dir = run_then_kill_program(tmp_path, after_manifests=3)
    newest = max((run_dir / "manifests").glob("*.json"))
    snapshot = next((run_dir / "snapshots" / newest.stem).glob("*.snap"))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    snapshot.write_bytes(bytes(data))
    result = ns["job"].run(resume=True)
    assert result.checkpoints.refused == 1
    assert ns["verify"]().ok, ns["verify"]()


@pytest.mark.extended  # 12 s; tests/unit/_runtime/state/test_store_tampering.py covers signatures in the default run
def test_a_tampered_manifest_is_refused_by_its_signature(monkeypatch, tmp_path):
    import json

    assert os.environ.get("RAYSTREAM_CHECKPOINT_KEY"), "the test session signs manifests"
    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=str(tmp_path / "out"))
    run_dir = run_then_kill_program(tmp_path, after_manifests=3)
    newest = max((run_dir / "manifests").glob("*.json"))
    manifest = json.loads(newest.read_text())
    manifest["snapshots"][0]["source_records"] += 1  # any change, however small
    newest.write_text(json.dumps(manifest))
    result = ns["job"].run(resume=True)
    assert result.checkpoints.refused == 1
    assert ns["verify"]().ok, ns["verify"]()


@pytest.mark.extended  # 15 s; the damaged-snapshot test above refuses a snapshot in the default run
def test_a_snapshot_that_does_not_decode_is_refused_not_retried_as_a_crash(monkeypatch, tmp_path):
    """A snapshot whose checksum and signature hold but whose pickle is not a snapshot (a
    pickle that ran code returns whatever it likes) is refused like a damaged one: the
    checkpoint before it restores at once, instead of a crash loop decoding it again."""
    import hashlib
    import json

    import cloudpickle

    from raystream._runtime.state import signing

    ns = load_billing(monkeypatch, events=EVENTS, rate=3_000, out=str(tmp_path / "out"))
    run_dir = run_then_kill_program(tmp_path, after_manifests=3)
    newest = max((run_dir / "manifests").glob("*.json"))
    raw = json.loads(newest.read_text())
    data = cloudpickle.dumps({"not": "a snapshot"})
    snapshot = raw["snapshots"][0]
    (run_dir.parent / snapshot["key"]).write_bytes(data)
    snapshot["sha256"], snapshot["size"] = hashlib.sha256(data).hexdigest(), len(data)
    key = signing.current()  # signed with the job's own key: only the decoding can tell
    raw.pop("signature")
    raw["signature"] = signing.sign(raw, key)
    newest.write_text(json.dumps(raw))
    result = ns["job"].run(resume=True)
    assert result.checkpoints.refused == 1
    assert result.restarts <= 2, "no crash loop: the attempt that met it, then the checkpoint before it"
    assert ns["verify"]().ok, ns["verify"]()
