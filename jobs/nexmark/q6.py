"""Nexmark q6, average selling price by seller: for each seller, the average winning
price of their 10 most recently closed auctions, updated whenever one of them closes.

The winners come from q4's process step (the highest bid in an auction's lifetime,
emitted by an event-time timer at its end). Winners of one seller can reach the seller
step in any order when their auctions close close together, so the state keeps the 10
latest by (end, auction id) rather than the 10 that arrived last: the final average
of every seller is then the same in every run."""
from __future__ import annotations

import os
import runpy

import raystream as rs
from raystream.connectors import nexmark as nx

_q4 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "q4.py"), run_name="nexmark_q4")
winning_bid, auction_closed = _q4["winning_bid"], _q4["auction_closed"]

LAST = 10


def last_ten_average(state, closed):
    """state: up to LAST (end, auction id, price) of the seller, latest last."""
    kept = sorted((state or []) + [closed])[-LAST:]
    return kept, sum(p for _, _, p in kept) / len(kept)


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q6", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    (events.filter("auctions_and_bids", lambda e: not isinstance(e, nx.Person))
        .key_by("by_auction", lambda e: e.auction if isinstance(e, nx.Bid) else e.id)
        .process("winners", winning_bid, on_timer=auction_closed)
        .key_by("by_seller", lambda kv: kv[1][0].seller, value=lambda kv: (kv[1][0].expires, kv[1][0].id, kv[1][1]))
        .stateful_map("q6", last_ten_average)
        .sink("out", sink))
    return job


def reference(events) -> dict:
    auctions, best = _q4["winners"](events)
    per_seller: dict[int, list[tuple[int, int, int]]] = {}
    for auction_id, price in best.items():
        a = auctions[auction_id]
        per_seller.setdefault(a.seller, []).append((a.expires, a.id, price))
    return {seller: last_ten_average(closed[:-1], closed[-1])[1] for seller, closed in per_seller.items()}


def normalize(records: list) -> dict:
    """The newest average per seller (records are (seller, average) updates, in order)."""
    return dict((k, v) for k, v in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q6")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
