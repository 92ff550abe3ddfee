"""Nexmark q4 over Arrow, average price per category: the winning bid of an auction is its
highest bid between its opening and its end; the output is the running average of the
winning prices of each category, one update per category and batch of closed auctions.

In Arrow, per batch: `where` drops the people, `select` makes one narrow row per auction or
bid keyed by the auction id (`coalesce` of the bid's auction and the auction's id) and
`key_by` routes by it. At the end, the running mean per category is an `aggregate` (the
mean of raystream.aggregates sums ints exactly, as the reference's `sum / len` does).

Per record: the `process` step that finds each auction's winner, and a `map` that drops
its key. Bids and their auction meet per auction id with an event-time timer at the
auction's end (the winner is known only when the watermark passes it), and timers need
per-key state and code: no columnar operator has them. The `process` step reads every
auction and bid as a dict; it emits one row per closed auction."""
from __future__ import annotations

import os
import runpy
from pathlib import Path

import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.event_time import to_millis

_PER_RECORD = runpy.run_path(str(Path(__file__).resolve().parents[1] / "q4.py"), run_name="nexmark_q4")
reference = _PER_RECORD["reference"]
EARLY_BID_WAIT = _PER_RECORD["EARLY_BID_WAIT"]

#: the columns of an auction or a bid that the winner needs (an auction's are null for a bid and back)
SIDES = {"auction": pc.coalesce(pc.field("bid", "auction"), pc.field("auction", "id")),
         "date_time": pc.field("date_time"), "price": pc.field("bid", "price"),
         "expires": pc.field("auction", "expires"), "category": pc.field("auction", "category"),
         "seller": pc.field("auction", "seller")}


def winning_bid(ctx: rs.ProcessContext, row: dict) -> None:
    """The per-record q4's `winning_bid` over rows: the state is (the auction as (opened,
    expires, category, seller) or None, the best price, the bids that came before it)."""
    auction, best, early = ctx.state or (None, None, ())
    if row["expires"] is not None:  # an auction
        opened, expires = row["date_time"], row["expires"]
        prices = [p for t, p in early if opened <= t <= expires]
        ctx.state = ((opened, expires, row["category"], row["seller"]), max(prices, default=None), ())
        ctx.set_event_timer(expires / 1000)
    elif auction is None:  # the bid came before its auction
        ctx.state = (None, None, early + ((row["date_time"], row["price"]),))
        ctx.set_event_timer(row["date_time"] / 1000 + EARLY_BID_WAIT)
    elif auction[0] <= row["date_time"] <= auction[1] and (best is None or row["price"] > best):
        ctx.state = (auction, row["price"], ())


def auction_closed(ctx: rs.ProcessContext, when) -> None:
    if ctx.state is None:
        return
    auction, best, _ = ctx.state
    if auction is None:  # bids for an auction that never came (or had closed)
        ctx.state = None
    elif to_millis(when) == auction[1]:
        if best is not None:  # a dict, so that the next columnar step makes columns of it
            ctx.emit({"auction": ctx.key, "expires": auction[1], "category": auction[2], "seller": auction[3],
                      "price": best})
        ctx.state = None


def winners(config: nx.NexmarkConfig, job: rs.Job) -> rs.Stream:
    """Each closed auction's winner as a row: auction, expires, category, seller, price."""
    events = job.source("events", nx.NexmarkSource(config, columnar=True),
                        event_time=rs.EventTime.column("date_time", unit="ms", max_delay=config.out_of_order))
    return (events.where("auctions_and_bids", pc.field("event_type") != nx.PERSON)
            .select("sides", SIDES)
            .key_by("by_auction", "auction")
            .process("winners", winning_bid, on_timer=auction_closed)
            .map("winner", lambda kv: kv[1]))


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
