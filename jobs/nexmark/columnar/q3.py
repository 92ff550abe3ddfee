"""Nexmark q3 over Arrow, local item suggestion: (name, city, state, auction id) for each
auction in category 10 whose seller lives in OR, ID or CA.

In Arrow, per batch: `where` keeps the people of those states and the auctions of
category 10 (one expression), `select` makes one narrow row per event with the person id
as the key (the person's id, or the auction's seller: `coalesce`, as exactly one side is
not null) and `key_by` routes by that column.

Per record: the incremental join, a `process` step. A seller and their auctions may arrive
in either order and wait in the key's state for each other, up to the per-record query's
`WAIT`, with no window to bound them: no columnar operator joins without a window (the
Arrow join is a window join). It sees only the rows the `where` kept (about 2% of the
events), as dicts."""
from __future__ import annotations

import functools
import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream.connectors import nexmark as nx

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q3.py"), run_name="nexmark_q3")
reference, meet, expire = _PER_RECORD["reference"], _PER_RECORD["meet"], _PER_RECORD["expire"]
STATES, WAIT = _PER_RECORD["STATES"], _PER_RECORD["WAIT"]


def join(ctx: rs.ProcessContext, row: dict, wait_ms: int) -> None:
    """A person row has a name, an auction row an auction id."""
    if row["auction"] is None:
        meet(ctx, (row["name"], row["city"], row["state"]), None, wait_ms)
    else:
        meet(ctx, None, row["auction"], wait_ms)


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink, wait: float = WAIT) -> rs.Job:
    wait_ms = round(wait * 1000)
    job = rs.Job("nexmark_q3_arrow", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    kind = pc.field("event_type")
    wanted = (((kind == nx.PERSON) & pc.field("person", "state").isin(list(STATES)))
              | ((kind == nx.AUCTION) & (pc.field("auction", "category") == 10)))
    (events.where("people_and_auctions", wanted)
        .select("sides", {"person": pc.coalesce(pc.field("person", "id"), pc.field("auction", "seller")),
                          "name": pc.field("person", "name"), "city": pc.field("person", "city"),
                          "state": pc.field("person", "state"), "auction": pc.field("auction", "id")})
        .key_by("by_person", "person")
        .process("q3", functools.partial(join, wait_ms=wait_ms), on_timer=functools.partial(expire, wait_ms=wait_ms))
        .map("row", lambda kv: kv[1])
        .sink("out", sink))
    return job


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q3_arrow"), format="parquet"))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
