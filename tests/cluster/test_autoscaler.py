"""Ray's autoscaler with its fake multi-node provider (worker "nodes" are local raylets it
starts): a head with 1 CPU, worker nodes of 2 CPUs. A job whose subtasks need more CPUs
than the head has waits, says so in one line, and runs once the autoscaler added a node;
rescaling it up makes the autoscaler add another; its output is exactly once.

Ray's own helper (ray.cluster_utils.AutoscalingCluster) starts and stops with `ray stop
--force`, which would stop every Ray on the machine, so the head is started here with
the same settings and stopped by its process ids (tests/cluster/heads.py). The job's
driver runs in a subprocess, as `raystream run` would, so this test process never
connects to that cluster."""
import collections
import json
import subprocess
import sys
import textwrap

import pytest

from raystream.sinks import read_files
from tests.cluster.heads import free_port, ray_head, user_env

pytestmark = pytest.mark.extended

HEAD_CPUS, WORKER_CPUS, MAX_WORKERS = 1, 2, 3


def fake_cluster_config(gcs: str) -> dict:
    """An autoscaler config for the fake multi-node provider (its documented format)."""
    return {
        "cluster_name": "raystream-test",
        "max_workers": MAX_WORKERS,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu2": {"resources": {"CPU": WORKER_CPUS}, "node_config": {}, "min_workers": 0,
                                "max_workers": MAX_WORKERS},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "auth": {}, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autoscaler")
    gcs_port = free_port()
    config = folder / "autoscaling.yaml"
    config.write_text(json.dumps(fake_cluster_config(f"127.0.0.1:{gcs_port}")))  # JSON is YAML
    env = user_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    with ray_head(folder, f"--autoscaling-config={config}", f"--num-cpus={HEAD_CPUS}", env=env,
                  gcs_port=gcs_port) as head:
        yield head


DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray
    import raystream as rs
    from raystream.sinks import FileSink
    from raystream.sources import SequenceSource

    out, storage, report = sys.argv[1], sys.argv[2], sys.argv[3]
    job = rs.Job("scaled", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.5, storage=storage))
    (job.source("nums", SequenceSource(None, partitions=4, rate=400), resources=rs.Resources(num_cpus=1))
        .map("row", lambda i: {"id": i})
        .sink("out", FileSink(out)))

    def alive_nodes():
        return sum(1 for n in ray.nodes() if n["Alive"])

    def running(handle, checkpoints):
        deadline = time.monotonic() + 180
        while not (handle.status().state == "running" and handle.status().checkpoints.completed >= checkpoints):
            assert time.monotonic() < deadline, handle.status()
            time.sleep(0.2)

    handle = job.start()  # 2 subtasks of 1 CPU each; the head has 1
    running(handle, 2)
    nodes = [alive_nodes()]
    change = handle.rescale(4, timeout=180)  # 4 CPUs: more than the head and one worker have
    running(handle, 2)
    nodes.append(alive_nodes())
    handle.stop()
    result = handle.wait()
    with open(report, "w") as f:  # not stdout: Ray prints the autoscaler's events there too
        json.dump({"nodes": nodes, "pause": change.pause, "emitted": result.records_out("nums")}, f)
""")


def test_a_job_bigger_than_the_head_waits_for_nodes_and_rescaling_up_adds_one(autoscaling_head, tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "out"),
                           str(tmp_path / "chk"), str(tmp_path / "report.json")],
                          env=user_env(RAY_ADDRESS=autoscaling_head.gcs),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # the head alone, then a worker node for 2 CPUs, then another for 4
    assert report["nodes"][0] >= 2 and report["nodes"][1] > report["nodes"][0], report
    # the driver said, in one line, what was waiting and why
    assert "subtasks wait for resources (nums+row+out: CPU 1); an autoscaler adds nodes" in proc.stderr
    ids = collections.Counter(r["id"] for r in read_files(str(tmp_path / "out")))
    assert max(ids.values()) == 1 and sum(ids.values()) == report["emitted"]  # exactly once, across the rescale
    for p in range(4):
        mine = sorted(i for i in ids if i % 4 == p)
        assert mine == list(range(p, p + 4 * len(mine), 4))
