"""Nexmark q3, local item suggestion: (name, city, state, auction id) for each auction in
category 10 whose seller lives in OR, ID or CA. An incremental join: a seller and their
auctions may arrive in either order, so each side waits in the key's state for the other."""
from __future__ import annotations

import os

import raystream as rs
from raystream.connectors import nexmark as nx

STATES = ("OR", "ID", "CA")


def wanted(e) -> bool:
    return (isinstance(e, nx.Person) and e.state in STATES) or (isinstance(e, nx.Auction) and e.category == 10)


def join(ctx: rs.ProcessContext, e) -> None:
    person, auctions = ctx.state or (None, [])
    if isinstance(e, nx.Person):
        for auction_id in auctions:
            ctx.emit((e.name, e.city, e.state, auction_id))
        ctx.state = (e, [])
    elif person is not None:
        ctx.emit((person.name, person.city, person.state, e.id))
    else:
        ctx.state = (None, auctions + [e.id])


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("nexmark_q3", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config))
    (events.filter("people_and_auctions", wanted)
        .key_by("by_person", lambda e: e.id if isinstance(e, nx.Person) else e.seller)
        .process("q3", join)
        .map("row", lambda kv: kv[1])
        .sink("out", sink))
    return job


def reference(events) -> list:
    people, auctions = {}, []
    for e in events:
        if isinstance(e, nx.Person) and e.state in STATES:
            people[e.id] = e
        elif isinstance(e, nx.Auction) and e.category == 10:
            auctions.append(e)
    return sorted((people[a.seller].name, people[a.seller].city, people[a.seller].state, a.id)
                  for a in auctions if a.seller in people)


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q3")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
