"""A lost node: several raylets on one machine (ray.cluster_utils.Cluster); removing the
node that holds subtasks and the object-store copies of their snapshots makes the job
recover from durable storage, with nothing lost or duplicated."""
from collections.abc import Iterator

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource
from tests.failure.harness import load_billing, running
from tests.helpers.support import wait_until

pytestmark = pytest.mark.extended  # a cluster of its own: the second CI run


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[tuple[Cluster, list]]:
    """A head for the driver and the coordinator, and two worker nodes for the subtasks."""
    ray.shutdown()  # the local Ray other modules share (tests/conftest.py `ray_local`), if one is up
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, resources={"subtasks": 100}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def node_of(pid: int, nodes: list):
    """The cluster node whose raylet started the process `pid`."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    for parent in psutil.Process(pid).parents():
        if parent.pid in raylets:
            return raylets[parent.pid]
    return None


def test_losing_a_node_recovers_from_durable_storage(cluster, monkeypatch, tmp_path):
    c, workers = cluster
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BILLING_CUSTOMERS", "40000")  # snapshots of ~1 MB live in the object store
    ns = load_billing(monkeypatch, events=90_000, rate=8_000, out=str(tmp_path / "out"))
    job = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.5),
                                 runtime=rs.RuntimeConfig(subtask_resources={"subtasks": 1}))
    handle = job.start()
    # Each keyed subtask's snapshot must outgrow Ray's inline limit (100 KB) to live in the
    # object store of its node.
    status = wait_until(lambda: (s := running(handle, checkpoints=2)) and s.checkpoints.last_bytes > 400_000 and s,
                        "snapshots large enough for the object store", timeout=120)
    victim = next(n for n in (node_of(pid, workers) for pid in status.pids.values()) if n is not None)
    on_victim = [name for name, pid in status.pids.items() if node_of(pid, workers) is victim]
    c.remove_node(victim)  # its raylet, its workers and its object store go
    result = handle.wait()
    assert on_victim and result.restarts >= 1
    assert result.restores.get("durable", 0) >= 1, result.restores
    assert ns["verify"]().ok, ns["verify"]()


def test_a_step_that_asks_for_a_resource_runs_on_a_node_that_has_it(cluster, tmp_path):
    """Per-step Resources: the `heavy` step's subtask (chained with the sink) lands on the
    one node with the custom resource it asks for."""
    c, _ = cluster
    highmem = c.add_node(num_cpus=1, resources={"highmem": 1})
    c.wait_for_nodes()
    try:
        out = CollectSink()
        job = rs.Job("placed", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.2,
                                                                             storage=str(tmp_path / "chk")))
        (job.source("nums", SequenceSource(5_000, partitions=2, rate=20_000))
            .map("heavy", lambda i: i * 2, parallelism=1, resources=rs.Resources(num_cpus=1, custom={"highmem": 1}))
            .sink("out", out, parallelism=1))
        handle = job.start()
        status = wait_until(lambda: (s := running(handle, checkpoints=1)) and s, "the job running", timeout=60)
        placed = {name: node_of(pid, [highmem]) for name, pid in status.pids.items()}
        result = handle.wait()
        assert placed["heavy+out[0]"] is highmem
        assert sorted(result.outputs["out"]) == [i * 2 for i in range(5_000)]
    finally:
        c.remove_node(highmem)
