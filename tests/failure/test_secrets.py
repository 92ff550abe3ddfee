"""No credential travels into checkpoints, output, results or logs, even across a crash."""
from pathlib import Path

import boto3
import ray

import raystream as rs
from tests.conftest import SECRETS
from tests.helpers.support import wait_until

from .harness import kill, load_billing, running


def test_no_secret_in_checkpoints_output_results_or_logs(monkeypatch, tmp_path, s3_bucket):
    ns = load_billing(monkeypatch, events=8_000, rate=4_000, out=f"s3://{s3_bucket}/out")
    job = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3, storage=f"s3://{s3_bucket}/chk"))
    handle = job.start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    kill(status.pids[sorted(status.pids)[0]])  # a restore reads checkpoints back too
    result = handle.wait()
    assert ns["verify"]().ok

    s3 = boto3.client("s3")
    blobs = {f"s3://{s3_bucket}/{o['Key']}": s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
             for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert any("/manifests/" in k for k in blobs) and any(".snap" in k for k in blobs)
    blobs["result"] = repr(result).encode()
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*"):
        if path.is_file():
            blobs[str(path)] = path.read_bytes()
    assert len(blobs) > 20
    leaks = [(name, where) for where, data in blobs.items() for name, secret in SECRETS.items()
             if secret.encode() in data]
    assert leaks == []
