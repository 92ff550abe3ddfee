"""Nexmark q4 over Arrow, average price per category: the winning bid of an auction is its
highest bid between its opening and its end; the output is the running average of the
winning prices of each category, one update per category and batch of closed auctions.

All in Arrow, per batch: `where` drops the people, `select` makes one narrow row per
auction or bid keyed by the auction id (`coalesce` of the bid's auction and the auction's
id), and `key_by` routes by it. Each auction opens a `Lifetime` window of its id, from
its time to its `expires`: the bids of the auction in that time are in it (also a bid
that came before its auction, which waits for it), and it fires when the watermark
reaches `expires`, as the per-record q4's timer does, with the highest price. Then the
running mean per category is an `aggregate` (the mean of raystream.aggregates sums ints
exactly, as the reference's `sum / len` does)."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q4.py"), run_name="nexmark_q4")
reference = _PER_RECORD["reference"]

#: the columns of an auction or a bid that the winner needs (an auction's are null for a bid and back)
SIDES = {"auction": pc.coalesce(pc.field("bid", "auction"), pc.field("auction", "id")),
         "date_time": pc.field("date_time"), "price": pc.field("bid", "price"),
         "expires": pc.field("auction", "expires"), "category": pc.field("auction", "category"),
         "seller": pc.field("auction", "seller")}


def winners(config: nx.NexmarkConfig, job: rs.Job) -> rs.Stream:
    """Each closed auction's winner as a row: auction, window_start, window_end, price,
    expires, category, seller (and update, always false)."""
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    return (events.where("auctions_and_bids", pc.field("event_type") != nx.PERSON)
            .select("sides", SIDES)
            .key_by("by_auction", "auction")
            .window(rs.windows.Lifetime("expires"))
            .aggregate("winners", price=agg.max("price"), expires=agg.max("expires"),
                       category=agg.max("category"), seller=agg.max("seller"))  # an auction's own: bids have none
            .where("sold", pc.field("price").is_valid()))


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q4_arrow", parallelism=config.partitions)
    (winners(config, job)
        .key_by("by_category", "category")
        .aggregate("q4", average=agg.mean("price"))
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> dict:
    """The newest average per category (rows are (category, average) updates, in order)."""
    return {r["category"]: r["average"] for r in records}


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q4_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
