"""A slow sink slows the source down: bounded in-flight batches, bounded lag, flat memory."""
import time

import psutil

import raystream as rs
from raystream.sinks import Sink, SinkWriter
from raystream.sources import SequenceSource

BATCH = 200
IN_FLIGHT = 2


class SlowSink(Sink):
    def build_writer(self, context):
        return SlowWriter()


class SlowWriter(SinkWriter):
    def write_batch(self, batch):
        time.sleep(0.01)  # a sink that takes 10 ms per batch: ~20k records/s at most


def poll(handle, step: str, at_least: int, timeout: float = 60.0) -> rs.JobStatus:
    deadline = time.monotonic() + timeout
    while (status := handle.status()).steps[step].records_in < at_least:
        assert time.monotonic() < deadline, f"{step} stuck: {status}"
    return status


def test_slow_sink_backpressures_an_unbounded_source():
    job = rs.Job("bp", parallelism=1, runtime=rs.RuntimeConfig(
        batch_size=BATCH, max_in_flight=IN_FLIGHT, chaining=False))
    (job.source("nums", SequenceSource(None))  # as fast as it can go
        .map("payload", lambda x: (x, "x" * 100))
        .sink("slow", SlowSink()))
    handle = job.start()
    try:
        poll(handle, "slow", 5 * BATCH)
        pids = list(handle.status().pids.values())
        assert len(pids) == 3
        rss_before = sum(psutil.Process(p).memory_info().rss for p in pids)
        lags = []
        for target in range(10, 60, 10):
            status = poll(handle, "slow", target * BATCH)
            lags.append(status.steps["nums"].records_out - status.steps["slow"].records_in)
        rss_after = sum(psutil.Process(p).memory_info().rss for p in pids)
    finally:
        handle.stop()
    result = handle.wait()
    # What can be between source and sink: per hop, IN_FLIGHT batches plus the one being
    # built and the source batch being emitted; two hops here. Unbounded, it would be millions.
    bound = 2 * (IN_FLIGHT + 2) * BATCH
    assert max(lags) <= bound, (lags, bound)
    assert result.max_in_flight_seen <= IN_FLIGHT
    assert result.max_queued_seen <= IN_FLIGHT
    assert rss_after - rss_before < 30 * 2**20, (rss_before, rss_after)
    assert result.records_out("nums") == result.records_in("slow")
