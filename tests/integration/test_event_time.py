"""Event time on a real local Ray: lateness and the late stream, idle partitions,
processing-time windows, and window results carried through the whole dataflow."""
from __future__ import annotations

import datetime as dt
import operator
import time

import pyarrow.compute as pc
import pytest

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.sources import Source, SourcePartition
from raystream.windows import Tumbling
from tests.helpers.support import wait_until


def _late_job(records: list[tuple[str, float, int]], lateness: float) -> rs.Job:
    # one record per batch and a watermark after each: whether a record is late depends
    # only on the records before it, never on timing
    job = rs.Job("late", runtime=rs.RuntimeConfig(batch_size=1, watermark_interval=0.0))
    out = (job.source("events", rs.sources.ListSource(records), event_time=rs.EventTime(lambda r: r[1]))
           .key_by("by_key", lambda r: r[0], value=lambda r: r[2])
           .window(Tumbling(10), allowed_lateness=lateness).reduce("sum", operator.add))
    out.sink("out", rs.sinks.CollectSink())
    out.late.sink("late_out", rs.sinks.CollectSink())
    return job


def test_a_late_record_within_the_lateness_updates_its_window_and_one_beyond_goes_to_the_late_stream():
    records = [("a", 1.0, 1), ("a", 2.0, 2), ("a", 12.0, 4),  # [0, 10) fires at 12 s
               ("a", 3.0, 8),  # 12 s < 10 s + 5 s lateness: an update of [0, 10)
               ("a", 16.0, 16),  # the watermark passes 15 s: [0, 10) is dropped
               ("a", 4.0, 32)]  # too late: to the late stream
    result = _late_job(records, lateness=5).run()
    got = [(k, r.start.timestamp(), r.value, r.update) for k, r in result.outputs["out"]]
    assert got == [("a", 0, 3, False), ("a", 0, 11, True), ("a", 10, 20, False)]
    assert result.outputs["late_out"] == [("a", 32)]
    assert result.steps["sum"].late == 1 and result.steps["sum.late"].records_in == 1


def test_without_lateness_the_late_record_is_counted_and_sent_to_the_late_stream_only():
    records = [("a", 1.0, 1), ("b", 11.0, 2), ("a", 2.0, 4)]
    result = _late_job(records, lateness=0).run()
    assert [(k, r.value) for k, r in result.outputs["out"]] == [("a", 1), ("b", 2)]
    assert result.outputs["late_out"] == [("a", 4)]
    rows = {row["step"]: row for row in result.metrics}
    assert rows["sum"]["late_records"] == 1


class _Silent(SourcePartition):
    """A partition of an unbounded source that has no data (yet)."""

    def next_batch(self):
        return []

    def snapshot(self):
        return 0


class _OneBusyOneSilent(Source):
    def __init__(self, records):
        self.records = records

    def list_partitions(self):
        return ["busy", "silent"]

    def build_partition(self, key, resume_state, batch_size):
        if key == "silent":
            return _Silent()
        return rs.sources.ListSource(self.records).build_partition("0", resume_state, batch_size)


def test_an_idle_partition_stops_holding_windows_back(tmp_path):
    records = [{"key": "k", "t": float(t), "n": 1} for t in range(30)]
    job = rs.Job("idle", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.2))
    (job.source("events", _OneBusyOneSilent(records),
                event_time=rs.EventTime(lambda r: r["t"], idle_after=dt.timedelta(seconds=0.5)))
        .key_by("by_key", lambda r: r["key"], value=lambda r: r["n"])
        .window(Tumbling(10)).reduce("count", operator.add)
        .map("row", lambda kv: {"start": kv[1].start.timestamp(), "count": kv[1].value})
        .sink("out", rs.sinks.FileSink(str(tmp_path / "out"), roll="checkpoint")))  # read while it runs
    handle = job.start()
    try:
        # the silent partition never ends; once idle, the busy one's watermark fires [0, 10) and [10, 20)
        rows = wait_until(lambda: (r := rs.sinks.read_files(str(tmp_path / "out"))) and len(r) >= 2 and r,
                          "two windows committed while the source still runs")
        assert sorted((r["start"], r["count"]) for r in rows)[:2] == [(0, 10), (10, 10)]
        assert handle.status().state == "running"
    finally:
        handle.stop()


def test_processing_time_windows_count_every_record_once():
    job = rs.Job("processing", parallelism=2)
    (job.source("numbers", rs.sources.SequenceSource(3_000, partitions=2, rate=3_000))
        .key_by("parity", lambda n: n % 2, value=lambda n: 1)
        .window(Tumbling(0.25, clock="processing")).reduce("count", operator.add)
        .sink("out", rs.sinks.CollectSink()))
    result = job.run()
    windows = result.outputs["out"]
    assert sum(r.value for _, r in windows) == 3_000
    assert len({r.start for _, r in windows}) > 1, "a run of about a second spans several 0.25 s windows"
    for key in (0, 1):
        starts = [r.start for k, r in windows if k == key]
        assert len(starts) == len(set(starts)), "one result per key and window"


def test_a_timestamp_function_returning_a_non_time_fails_the_job_naming_its_step():
    job = rs.Job("bad_time")
    (job.source("events", rs.sources.ListSource([{"t": 1.0}, {"t": "noon"}]))
        .with_event_time("stamp", rs.EventTime(lambda r: r["t"]))
        .key_by("k", lambda r: 0).window(Tumbling(10)).reduce("count", lambda a, b: a)
        .sink("out", rs.sinks.CollectSink()))
    with pytest.raises(rs.StepFailedError) as err:
        job.run()
    assert err.value.step_id == "stamp"
    assert "a timestamp must be a timezone-aware datetime or seconds since the epoch; got str 'noon'" in str(err.value)


def test_a_partition_with_records_is_not_idle_while_the_subtask_works_on_another_ones_batch():
    """Two columnar Nexmark partitions in one subtask, idle_after 0.5 s, a chain that takes
    about 0.26 s per 65,536-row batch: between two polls of a partition lie two batches, yet
    no bid comes late (review of stop 34: idleness counted from a partition's last records,
    so it went idle with records waiting, the watermark passed them and 31% came late)."""
    config = nx.NexmarkConfig(events=400_000, partitions=2, event_rate=10_000, out_of_order=0.0)

    def slow(batch):
        time.sleep(batch.num_rows * 4e-6)
        return batch

    job = rs.Job("idle-while-busy", parallelism=1, runtime=rs.RuntimeConfig(arrow_batch_size=65_536))
    windows = (job.source("events", nx.NexmarkSource(config, columnar=True),
                          event_time=rs.EventTime.column("date_time", max_delay=0, idle_after=0.5))
               .map_batches("slow", slow)
               .where("only_bids", pc.field("event_type") == nx.BID)
               .select("bids", {"auction": pc.field("bid", "auction")})
               .key_by("by_auction", "auction")
               .window(Tumbling(2)).aggregate("per_auction", bids=agg.count()))
    windows.sink("out", rs.sinks.CollectSink())
    windows.late.sink("late", rs.sinks.CollectSink())
    result = job.run()
    bids = sum(1 for e in nx.events(config) if isinstance(e, nx.Bid))
    assert not result.outputs["late"]
    assert sum(r["bids"] for r in result.outputs["out"]) == bids
