"""Nexmark q2 over Arrow, selection: (auction, price) of the bids on auctions whose id is a
multiple of 123.

Columnar all the way: one `where` (a bid, and `auction % 123 == 0` with Arrow's modulo),
then `select`. No Python runs per record."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream.connectors import nexmark as nx

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q2.py"), run_name="nexmark_q2")
reference = _PER_RECORD["reference"]


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q2_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True))
    (events.where("q2", (pc.field("event_type") == nx.BID) & (pc.modulo(pc.field("bid", "auction"), 123) == 0))
        .select("project", {"auction": pc.field("bid", "auction"), "price": pc.field("bid", "price")})
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    return sorted((r["auction"], r["price"]) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q2_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
