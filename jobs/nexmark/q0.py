"""Nexmark q0, pass-through: every bid, unchanged."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q0", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config))
    events.filter("bids", lambda e: isinstance(e, nx.Bid)).map("q0", tuple).sink("out", sink)
    return job


def reference(events) -> list:
    return sorted(tuple(e) for e in events if isinstance(e, nx.Bid))


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q0")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
