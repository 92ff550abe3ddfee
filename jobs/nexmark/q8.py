"""Nexmark q8, monitor new users: the people who opened an auction in the same 10-second
tumbling window in which they registered, as (person id, name, window start ms).

A window join of people (by id) and auctions (by seller); a seller with several
auctions in the window makes several pairs, so a tumbling window per person keeps one."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx
from raystream.event_time import to_millis
from raystream.windows import Tumbling

SIZE = 10


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q8", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    people = events.filter("people", lambda e: isinstance(e, nx.Person)).key_by("by_id", lambda p: p.id)
    sellers = events.filter("auctions", lambda e: isinstance(e, nx.Auction)).key_by("by_seller", lambda a: a.seller)
    (people.join("q8", sellers, Tumbling(SIZE), lambda person, auction: person.name)
        .key_by("by_person", lambda kv: kv[0], value=lambda kv: kv[1].value)
        .window(Tumbling(SIZE)).reduce("once", lambda first, _: first)
        .map("row", lambda kv: (kv[0], kv[1].value, to_millis(kv[1].start)))
        .sink("out", sink))
    return job


def reference(events) -> list:
    size = SIZE * 1000
    people, sellers = {}, set()
    for e in events:
        if isinstance(e, nx.Person):
            people[(e.id, e.date_time // size)] = e.name
        elif isinstance(e, nx.Auction):
            sellers.add((e.seller, e.date_time // size))
    return sorted((pid, name, w * size) for (pid, w), name in people.items() if (pid, w) in sellers)


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q8")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
