"""Nexmark q1 over Arrow, currency conversion: each bid's price in euros (0.908 per dollar).

Columnar all the way: `where` keeps the bids, `select` computes `price * 0.908` as an Arrow
expression. Arrow casts the int64 price to float64 (exact below 2**53) and multiplies in
IEEE double, as Python's `0.908 * price` does, so the values are the per-record query's to
the bit. No Python runs per record."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream.connectors import nexmark as nx

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q1.py"), run_name="nexmark_q1")
reference = _PER_RECORD["reference"]
RATE = 0.908
COLUMNS = ("auction", "bidder", "price", "date_time")


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q1_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True))
    (events.where("bids", pc.field("event_type") == nx.BID)
        .select("q1", {"auction": pc.field("bid", "auction"), "bidder": pc.field("bid", "bidder"),
                       "price": pc.field("bid", "price") * RATE, "date_time": pc.field("bid", "date_time")})
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    return sorted(tuple(r[name] for name in COLUMNS) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q1_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
