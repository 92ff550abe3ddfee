"""Event-time windows over Arrow on a real local Ray: columnar Nexmark with event time from
its `date_time` column, bids per auction in sliding windows (and a tumbling window join
of sellers with their auctions, q8's shape), equal to what pyarrow and numpy compute
over `raystream.connectors.nexmark.batches(config)`."""
from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.sinks import CollectSink, FileSink, read_files
from raystream.windows import Sliding, Tumbling
from tests.helpers.nexmark import all_events, bid_windows, window_rows

# 30 s of event time, out of order by up to half a second within each partition
CONFIG = nx.NexmarkConfig(events=60_000, partitions=2, event_rate=2_000, out_of_order=0.5)
SIZE, SLIDE = 10_000, 2_000


def start_ms(value) -> int:
    return int(value.timestamp() * 1000)


def test_bids_per_auction_in_sliding_windows_equal_pyarrow_over_the_events(tmp_path):
    job = rs.Job("columnar-windows", parallelism=2, runtime=rs.RuntimeConfig(arrow_batch_size=4096),
                 checkpoint=rs.CheckpointConfig(interval=0.5))
    (job.source("events", nx.NexmarkSource(CONFIG, columnar=True),
                event_time=rs.EventTime.column("date_time", unit="ms", max_delay=CONFIG.out_of_order))
     .where("only_bids", pc.field("event_type") == nx.BID)
     .select("bids", {"auction": pc.field("bid", "auction"), "price": pc.field("bid", "price")})
     .key_by("by_auction", "auction")
     .window(Sliding(SIZE / 1000, SLIDE / 1000)).aggregate("per_auction", bids=agg.count(), top=agg.max("price"))
     .sink("out", FileSink(str(tmp_path / "out"), format="parquet")))
    result = job.run()
    assert result.state == "finished"
    rows = read_files(str(tmp_path / "out"), format="parquet")
    got = dict(window_rows(rows))
    assert len(got) == len(rows) and not any(r["update"] for r in rows)  # each window once
    assert all(start_ms(r["window_end"]) - start_ms(r["window_start"]) == SIZE for r in rows)
    assert got == bid_windows(CONFIG, SIZE, SLIDE)
    assert result.steps["per_auction"].records_out == len(rows) and result.steps["per_auction"].late == 0


def test_a_tumbling_window_join_of_sellers_and_their_auctions_equals_a_nested_loop(tmp_path):
    config = nx.NexmarkConfig(events=20_000, partitions=2, event_rate=1_000)
    job = rs.Job("columnar-join", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.5))
    events_ = job.source("events", nx.NexmarkSource(config, columnar=True),
                         event_time=rs.EventTime.column("date_time"))
    persons = (events_.where("only_persons", pc.field("event_type") == nx.PERSON)
               .select("persons", {"id": pc.field("person", "id"), "name": pc.field("person", "name")})
               .key_by("by_id", "id"))
    auctions = (events_.where("only_auctions", pc.field("event_type") == nx.AUCTION)
                .select("auctions", {"seller": pc.field("auction", "seller"), "item": pc.field("auction", "id")})
                .key_by("by_seller", "seller"))
    persons.join("q8", auctions, Tumbling(10)).sink("out", FileSink(str(tmp_path / "out"), format="parquet"))
    result = job.run()
    assert result.state == "finished"
    got = collections.Counter((r["id"], start_ms(r["window_start"]), r["name"], r["item"])
                              for r in read_files(str(tmp_path / "out"), format="parquet"))

    table = all_events(config)
    people, items = nx.persons(table).to_pylist(), nx.auctions(table).to_pylist()
    want = collections.Counter()
    for p in people:
        for a in items:
            window = p["date_time"] - p["date_time"] % 10_000
            if p["id"] == a["seller"] and a["date_time"] - a["date_time"] % 10_000 == window:
                want[(p["id"], window, p["name"], a["id"])] += 1
    assert got == want and sum(want.values()) > 10


@pytest.mark.parametrize("sink", ["collect", "parquet"])
def test_windows_of_keys_in_columns_of_types_no_one_column_holds_fire_and_flow_on(tmp_path, sink):
    """Review 47: keys "5" (a string column in one file) and 5 (an int column in another)
    fired at one watermark failed the subtask there, and again after every restore. Each
    kind now fires as a batch of its own through the step after the window to the sink
    (a Parquet sink, review 48: a file of its own)."""
    from raystream.sources import FileSource
    for name, keys in (("strings", pa.array(["5", "5", "x"])), ("ints", pa.array([5, 5, 7]))):
        pq.write_table(pa.table({"k": keys, "t": pa.array([1_000, 2_000, 3_000])}), tmp_path / f"{name}.parquet")
    job = rs.Job("mixed-keys", parallelism=1, checkpoint=rs.CheckpointConfig(interval=0.5))
    (job.source("rows", FileSource(str(tmp_path / "*.parquet"), format="parquet", columnar=True),
                event_time=rs.EventTime.column("t", unit="ms"))
     .key_by("by_k", "k")
     .window(Tumbling(10)).aggregate("per_k", n=agg.count())
     .map_batches("doubled", lambda b: b.append_column("twice", pc.multiply(b.column("n"), 2)))
     .sink("out", CollectSink() if sink == "collect" else FileSink(str(tmp_path / "out"), format="parquet")))
    result = job.run()
    assert result.state == "finished"
    rows = result.outputs["out"] if sink == "collect" else read_files(str(tmp_path / "out"), format="parquet")
    got = sorted(((r["k"], r["n"], r["twice"]) for r in rows), key=repr)
    assert got == sorted([("5", 2, 4), ("x", 1, 2), (5, 2, 4), (7, 1, 2)], key=repr)
