"""Nexmark q6 over Arrow, average selling price by seller: for each seller, the average
winning price of their 10 most recently closed auctions, updated whenever one of them closes.

The winners come from the columnar q4's steps, all in Arrow: the filter, the narrow rows
keyed by auction id, and a `Lifetime` window per auction that fires its highest bid at
the auction's end (see q4.py). Then, keyed by seller in Arrow (`key_by` on the column),
per record a `stateful_map` keeps each seller's 10 latest winners by (end, auction id),
as the per-record q6 does: a "last N by order" state has no columnar aggregate (the
built-in ones fold partials that forget which rows made them). It runs once per closed
auction, about one event in 16.
"""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import raystream as rs
from raystream.connectors import nexmark as nx

_HERE = Path(__file__).resolve().parent
_PER_RECORD = runpy.run_path(str(_HERE.parent / "q6.py"), run_name="nexmark_q6")
_Q4 = runpy.run_path(str(_HERE / "q4.py"), run_name="nexmark_q4_arrow")
reference = _PER_RECORD["reference"]
last_ten_average = _PER_RECORD["last_ten_average"]


def seller_average(state, winner: dict):
    return last_ten_average(state, (winner["expires"], winner["auction"], winner["price"]))


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q6_arrow", parallelism=config.partitions)
    (_Q4["winners"](config, job)
        .select("closed", ["seller", "auction", "price", "expires"])  # no window bounds into Python per row
        .key_by("by_seller", "seller")
        .stateful_map("q6", seller_average)
        .sink("out", sink))
    return job


def normalize(records: list) -> dict:
    """The newest average per seller (records are (seller, average) updates, in order)."""
    return dict((k, v) for k, v in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q6_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
