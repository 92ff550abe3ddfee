"""Nexmark q7 over Arrow, highest bid: per 10-second tumbling window, the bids with the
highest price, as (auction, price, bidder, date_time).

Columnar all the way: bids keyed by their window's number (`date_time // 10,000` in
Arrow, so windows spread over the subtasks as in the per-record q7), a tumbling window
with `max("price")` gives each window's top price, and a window join in the same
tumbling windows pairs each bid with its window's top; `where` keeps price == top. The
join holds a window's bids as Arrow until it fires (the per-record aggregate keeps only
the top ones, but runs Python per bid). No Python runs per record."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.windows import Tumbling

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q7.py"), run_name="nexmark_q7")
reference = _PER_RECORD["reference"]
SIZE = _PER_RECORD["SIZE"]
COLUMNS = ("auction", "price", "bidder", "date_time")


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q7_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    bids = (events.where("bids", pc.field("event_type") == nx.BID)
            .select("slim", {"window": pc.divide(pc.field("bid", "date_time"), SIZE * 1000),  # int64: floors
                             **{name: pc.field("bid", name) for name in COLUMNS}})
            .key_by("by_window", "window"))
    top = (bids.window(Tumbling(SIZE)).aggregate("top_price", top=agg.max("price"))
           .select("top", ["window", "top"])
           .key_by("top_by_window", "window"))
    (bids.join("with_top", top, Tumbling(SIZE))
        .where("highest", pc.field("price") == pc.field("top"))
        .select("q7", list(COLUMNS))
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    return sorted(tuple(r[name] for name in COLUMNS) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q7_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
