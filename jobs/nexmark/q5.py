"""Nexmark q5, hot items: for each 10-second window sliding every 2 seconds, the
auctions with the most bids (all of them on a tie), as (window start ms, auction, bids).

Two window steps: bids per auction per sliding window, then, keyed by window, a 2 s
tumbling window that collects the counts of one sliding window (each carries its
window's end - 1 as its time, which falls in the tumbling window just before the end)."""
from __future__ import annotations

import os
from datetime import timedelta

import raystream as rs
from raystream.connectors import nexmark as nx
from raystream.event_time import to_millis
from raystream.windows import Aggregator, Sliding, Tumbling

SIZE, SLIDE = 10, 2

COUNT = Aggregator(create=lambda: 0, add=lambda n, _: n + 1, merge=lambda a, b: a + b)


def hottest(window_start: int, _window, counts: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    top = max(n for _, n in counts)
    return sorted((window_start, auction, n) for auction, n in counts if n == top)


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q5", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    counts = (events.filter("bids", lambda e: isinstance(e, nx.Bid))
              .key_by("by_auction", lambda b: b.auction, value=lambda b: 1)
              .window(Sliding(SIZE, SLIDE)).aggregate("bids_per_auction", COUNT))
    (counts.key_by("by_window", lambda kv: to_millis(kv[1].start), value=lambda kv: (kv[0], kv[1].value))
        .window(Tumbling(timedelta(seconds=SLIDE))).apply("q5", hottest)
        .flat_map("rows", lambda kv: kv[1].value)
        .sink("out", sink))
    return job


def reference(events) -> list:
    size, slide = SIZE * 1000, SLIDE * 1000
    counts: dict[int, dict[int, int]] = {}
    for e in events:
        if not isinstance(e, nx.Bid):
            continue
        start = e.date_time - e.date_time % slide
        while start > e.date_time - size:
            per_auction = counts.setdefault(start, {})
            per_auction[e.auction] = per_auction.get(e.auction, 0) + 1
            start -= slide
    rows = []
    for start, per_auction in counts.items():
        top = max(per_auction.values())
        rows.extend((start, a, n) for a, n in per_auction.items() if n == top)
    return sorted(rows)


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q5")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
