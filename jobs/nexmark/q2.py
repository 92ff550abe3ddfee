"""Nexmark q2, selection: (auction, price) of the bids on auctions whose id is a multiple of 123."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx


def selected(e) -> bool:
    return isinstance(e, nx.Bid) and e.auction % 123 == 0


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q2", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config))
    events.filter("q2", selected).map("project", lambda b: (b.auction, b.price)).sink("out", sink)
    return job


def reference(events) -> list:
    return sorted((e.auction, e.price) for e in events if selected(e))


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q2")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
