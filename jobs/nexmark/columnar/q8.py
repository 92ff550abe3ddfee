"""Nexmark q8 over Arrow, monitor new users: the people who opened an auction in the same
10-second tumbling window in which they registered, as (person id, name, window start ms).

Columnar all the way: people (id, name) keyed by id and auctions (seller) keyed by seller,
both narrowed by `where` and `select` in Arrow, meet in the window join over Arrow; a
seller with several auctions in the window makes several rows, so a tumbling window per
person with `first("name")` keeps one (as the per-record q8's `reduce` does). No Python
runs per record."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.windows import Tumbling

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q8.py"), run_name="nexmark_q8")
reference = _PER_RECORD["reference"]
SIZE = _PER_RECORD["SIZE"]


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q8_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    people = (events.where("people", pc.field("event_type") == nx.PERSON)
              .select("persons", {"id": pc.field("person", "id"), "name": pc.field("person", "name")})
              .key_by("by_id", "id"))
    sellers = (events.where("auctions", pc.field("event_type") == nx.AUCTION)
               .select("sellers", {"seller": pc.field("auction", "seller")})
               .key_by("by_seller", "seller"))
    (people.join("q8", sellers, Tumbling(SIZE))
        .select("pairs", ["id", "name"])
        .key_by("by_person", "id")
        .window(Tumbling(SIZE)).aggregate("once", name=agg.first("name"))
        .select("rows", {"id": "id", "name": "name", "start": pc.field("window_start").cast(pa.int64())})
        .sink("out", sink))
    return job


def normalize(records: list[dict]) -> list:
    return sorted((r["id"], r["name"], r["start"]) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q8_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
