"""Nexmark q7, highest bid: per 10-second tumbling window, the bids with the highest
price, as (auction, price, bidder, date_time). Keyed by window, so windows spread over
the subtasks; the aggregate keeps only the top bids, not the whole window."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx
from raystream.windows import Aggregator, Tumbling

SIZE = 10


def _add(top, bid):
    price, bids = top
    if bid.price > price:
        return bid.price, [bid]
    if bid.price == price:
        bids.append(bid)
    return top


def _merge(a, b):
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    return a[0], a[1] + b[1]


TOP = Aggregator(create=lambda: (-1, []), add=_add, merge=_merge, result=lambda top: top[1])


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q7", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    (events.filter("bids", lambda e: isinstance(e, nx.Bid))
        .key_by("by_window", lambda b: b.date_time // (SIZE * 1000))
        .window(Tumbling(SIZE)).aggregate("q7", TOP)
        .flat_map("rows", lambda kv: [(b.auction, b.price, b.bidder, b.date_time) for b in kv[1].value])
        .sink("out", sink))
    return job


def reference(events) -> list:
    top: dict[int, list] = {}
    for e in events:
        if isinstance(e, nx.Bid):
            window = e.date_time // (SIZE * 1000)
            best = top.get(window)
            if best is None or e.price > best[0].price:
                top[window] = [e]
            elif e.price == best[0].price:
                best.append(e)
    return sorted((b.auction, b.price, b.bidder, b.date_time) for bids in top.values() for b in bids)


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q7")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
