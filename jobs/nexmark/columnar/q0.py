"""Nexmark q0 over Arrow, pass-through: every bid, unchanged.

Columnar all the way: `where` keeps the bid rows and `select` flattens the bid struct into
its columns, per batch in Arrow; no Python runs per record (the sink writes batches)."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream.connectors import nexmark as nx

# the per-record query's reference is the truth this query is checked against
_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q0.py"), run_name="nexmark_q0")
reference = _PER_RECORD["reference"]


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q0_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True))
    (events.where("bids", pc.field("event_type") == nx.BID)
        .select("q0", {name: pc.field("bid", name) for name in nx.Bid._fields})
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    """Arrow rows (dicts) as the reference's Bid tuples."""
    return sorted(tuple(r[name] for name in nx.Bid._fields) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q0_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
