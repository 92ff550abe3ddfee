"""Nexmark q5 over Arrow, hot items: for each 10-second window sliding every 2 seconds, the
auctions with the most bids (all of them on a tie), as (window start ms, auction, bids).

Columnar all the way, in three window steps over Arrow:

1. bids per auction per sliding window (`Sliding(10, 2)` with `count()`), one row per
   (auction, window) carrying the time window_end - 1;
2. keyed by the sliding window's start, the most bids of each sliding window: a 2 s
   tumbling window with `max("bids")` (window_end - 1 of a sliding window falls in the
   tumbling window just before its end, so one tumbling window holds one sliding window's
   rows);
3. a window join, in the same 2 s tumbling windows, of each sliding window's counts with
   its most bids, then `where` bids == most.

No Python runs per record: per (auction, window) and per window, in the operators."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.windows import Sliding, Tumbling

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q5.py"), run_name="nexmark_q5")
reference = _PER_RECORD["reference"]
SIZE, SLIDE = _PER_RECORD["SIZE"], _PER_RECORD["SLIDE"]


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q5_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    counts = (events.where("bids", pc.field("event_type") == nx.BID)
              .select("auctions", {"auction": pc.field("bid", "auction")})
              .key_by("by_auction", "auction")
              .window(Sliding(SIZE, SLIDE)).aggregate("bids_per_auction", bids=agg.count())
              # the sliding window's start as int64 ms: the key of the next steps
              .select("counts", {"start": pc.field("window_start").cast(pa.int64()), "auction": "auction",
                                 "bids": "bids"})
              .key_by("by_window", "start"))
    most = (counts.window(Tumbling(SLIDE)).aggregate("most_bids", most=agg.max("bids"))
            .select("most", ["start", "most"])
            .key_by("most_by_window", "start"))
    (counts.join("with_most", most, Tumbling(SLIDE))
        .where("hottest", pc.field("bids") == pc.field("most"))
        .select("q5", ["start", "auction", "bids"])
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    return sorted((r["start"], r["auction"], r["bids"]) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q5_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
