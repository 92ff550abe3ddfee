"""Nexmark q4, average price per category: the winning bid of an auction is its highest
bid between its opening and its end; the output is the running average of the winning
prices of each category, one update per closed auction.

Bids and auctions meet per auction id in a `process` step: an event-time timer at the
auction's end emits the winner when the watermark says that every bid up to that time
has arrived."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx
from raystream.event_time import to_millis

EARLY_BID_WAIT = 60.0  # seconds a bid waits for an auction that has not arrived


def winning_bid(ctx: rs.ProcessContext, e) -> None:
    auction, best, early = ctx.state or (None, None, ())
    if isinstance(e, nx.Auction):
        prices = [p for t, p in early if e.date_time <= t <= e.expires]
        ctx.state = (e, max(prices, default=None), ())
        ctx.set_event_timer(e.expires / 1000)
    elif auction is None:  # the bid came before its auction
        ctx.state = (None, None, early + ((e.date_time, e.price),))
        ctx.set_event_timer(e.date_time / 1000 + EARLY_BID_WAIT)
    elif auction.date_time <= e.date_time <= auction.expires and (best is None or e.price > best):
        ctx.state = (auction, e.price, ())


def auction_closed(ctx: rs.ProcessContext, when) -> None:
    if ctx.state is None:
        return
    auction, best, _ = ctx.state
    if auction is None:  # bids for an auction that never came (or had closed)
        ctx.state = None
    elif to_millis(when) == auction.expires:
        if best is not None:
            ctx.emit((auction, best))  # q6 reuses this step: it keys the winners by seller
        ctx.state = None


def running_mean(state, price):
    total, count = state or (0, 0)
    total, count = total + price, count + 1
    return (total, count), total / count


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q4", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    (events.filter("auctions_and_bids", lambda e: not isinstance(e, nx.Person))
        .key_by("by_auction", lambda e: e.auction if isinstance(e, nx.Bid) else e.id)
        .process("winners", winning_bid, on_timer=auction_closed)
        .key_by("by_category", lambda kv: kv[1][0].category, value=lambda kv: kv[1][1])
        .stateful_map("q4", running_mean)
        .sink("out", sink))
    return job


def winners(events) -> tuple[dict, dict]:
    """(auction id -> auction, auction id -> its winning price) in plain Python."""
    auctions, bids = {}, []
    for e in events:
        if isinstance(e, nx.Auction):
            auctions[e.id] = e
        elif isinstance(e, nx.Bid):
            bids.append(e)
    best: dict[int, int] = {}
    for b in bids:
        a = auctions.get(b.auction)
        if a is not None and a.date_time <= b.date_time <= a.expires:
            best[a.id] = max(best.get(a.id, 0), b.price)
    return auctions, best


def reference(events) -> dict:
    auctions, best = winners(events)
    per_category: dict[int, list[int]] = {}
    for auction_id, price in best.items():
        per_category.setdefault(auctions[auction_id].category, []).append(price)
    return {c: sum(p) / len(p) for c, p in per_category.items()}


def normalize(records: list) -> dict:
    """The newest average per category (records are (category, average) updates, in order)."""
    return dict((k, v) for k, v in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q4")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
