"""Metrics per step and subtask: `handle.metrics()` while a job runs and after it ends, and
the same series in Ray's Prometheus export (what the dashboard's metrics view reads)."""
import operator
import urllib.request

import ray

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource
from tests.helpers.support import wait_until


def prometheus() -> str:
    port = ray._private.worker.global_worker.node.metrics_export_port
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def series(text: str, name: str, **tags: str) -> float:
    """The sum of a series' samples whose tags include `tags`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_table_while_running_and_after_and_in_rays_prometheus_export():
    job = rs.Job("metered", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3))
    (job.source("numbers", SequenceSource(None, partitions=2, rate=2000))
        .key_by("key", lambda i: i % 50).reduce("sum", operator.add).sink("out", CollectSink(keep="last")))
    handle = job.start()

    def steady():
        rows = handle.metrics().to_pylist()
        sums = [r for r in rows if r["step"] == "sum"]
        ready = (len(sums) == 2 and all(r["in_per_s"] > 0 for r in sums)  # 50 keys reach both subtasks
                 and sum(r["state_keys"] for r in sums) == 50 and all(r["snapshot_bytes"] > 0 for r in sums))
        return ready and rows

    rows = wait_until(steady, "rates, keys and snapshots in handle.metrics()")
    assert {(r["step"], r["subtask"]) for r in rows} == {(s, i) for s in ("numbers", "key", "sum", "out") for i in (0, 1)}
    assert all(r["backpressure_s"] >= 0 and r["alignment_s"] >= 0 for r in rows)
    assert handle.metrics().schema.names[:5] == ["step", "subtask", "chain", "records_in", "records_out"]

    # Each process reports its series to Ray on its own cycle (every few seconds): wait for all of them
    def exported():
        text = prometheus()
        found = [series(text, "ray_raystream_records_in_total", job="metered", step="sum"),
                 series(text, "ray_raystream_records_out_total", job="metered", step="numbers", subtask="0"),
                 series(text, "ray_raystream_state_keys", job="metered", step="sum"),
                 series(text, "ray_raystream_snapshot_bytes", job="metered", chain="sum+out"),
                 series(text, "ray_raystream_checkpoints_completed", job="metered")]
        return all(v > 0 for v in found)

    wait_until(exported, "every raystream series in Ray's Prometheus export")

    handle.stop()
    result = handle.wait()
    final = handle.metrics().to_pylist()  # after the end: the last rows, from the result
    assert sum(r["records_in"] for r in final if r["step"] == "sum") == result.records_in("sum")
