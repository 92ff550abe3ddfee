"""Nexmark q3, local item suggestion: (name, city, state, auction id) for each auction in
category 10 whose seller lives in OR, ID or CA. An incremental join: a seller and their
auctions may arrive in either order, so each side waits in the key's state for the other.

As in Beam's Query3, the wait is bounded (`WAIT`, 600 s of event time by default): a
seller and an auction whose times are further apart do not match, and an event-time timer
drops each side from the state once nothing within the wait can still come, so the state
holds what arrived in the last `WAIT` seconds (auctions of sellers outside the three states
included) instead of growing without bound. The generator picks a seller among the latest
1,000 people, so at the standard event rates every auction's seller is well within the wait."""
from __future__ import annotations

import functools
import os

import raystream as rs
from raystream.connectors import nexmark as nx

STATES = ("OR", "ID", "CA")
WAIT = 600.0  # seconds of event time a seller and their auction wait for each other (Beam's default)


def wanted(e) -> bool:
    return (isinstance(e, nx.Person) and e.state in STATES) or (isinstance(e, nx.Auction) and e.category == 10)


def join(ctx: rs.ProcessContext, e, wait_ms: int) -> None:
    if isinstance(e, nx.Person):
        meet(ctx, (e.name, e.city, e.state), None, wait_ms)
    else:
        meet(ctx, None, e.id, wait_ms)


def meet(ctx: rs.ProcessContext, person: tuple | None, auction: int | None, wait_ms: int) -> None:
    """A person (name, city, state) or an auction id arrives at `ctx.millis`. The state is
    ((the person, their time) or None, the (auction id, time) pairs waiting for the seller)."""
    seller, pending = ctx.state or (None, ())
    t = ctx.millis
    if person is not None:
        for auction_id, at in pending:
            if abs(at - t) <= wait_ms:
                ctx.emit((*person, auction_id))
        ctx.state = ((person, t), ())
    elif seller is not None:
        if abs(t - seller[1]) <= wait_ms:
            ctx.emit((*seller[0], auction))
        return
    else:
        ctx.state = (None, (*pending, (auction, t)))
    ctx.set_event_timer((t + wait_ms + 1) / 1000)  # a record at the watermark is not late


def expire(ctx: rs.ProcessContext, when, wait_ms: int) -> None:
    """Drop what nothing can match any more: whatever arrives from now on is at the
    watermark or later, so more than `wait_ms` after anything more than `wait_ms` older."""
    if ctx.state is None:
        return
    seller, pending = ctx.state
    now = ctx.millis
    seller = None if seller is None or seller[1] + wait_ms < now else seller
    pending = tuple(p for p in pending if p[1] + wait_ms >= now)
    ctx.state = None if seller is None and not pending else (seller, pending)


def build(config: nx.NexmarkConfig, sink: rs.sinks.Sink, wait: float = WAIT) -> rs.Job:
    wait_ms = round(wait * 1000)
    job = rs.Job("nexmark_q3", parallelism=config.partitions)
    events = job.source("events", nx.NexmarkSource(config), event_time=nx.event_time(max_delay=config.out_of_order))
    (events.filter("people_and_auctions", wanted)
        .key_by("by_person", lambda e: e.id if isinstance(e, nx.Person) else e.seller)
        .process("q3", functools.partial(join, wait_ms=wait_ms), on_timer=functools.partial(expire, wait_ms=wait_ms))
        .map("row", lambda kv: kv[1])
        .sink("out", sink))
    return job


def reference(events, wait: float = WAIT) -> list:
    people, auctions = {}, []
    for e in events:
        if isinstance(e, nx.Person) and e.state in STATES:
            people[e.id] = e
        elif isinstance(e, nx.Auction) and e.category == 10:
            auctions.append(e)
    return sorted((people[a.seller].name, people[a.seller].city, people[a.seller].state, a.id)
                  for a in auctions if a.seller in people
                  and abs(a.date_time - people[a.seller].date_time) <= round(wait * 1000))


def normalize(records: list) -> list:
    return sorted(tuple(r) for r in records)


job = build(nx.NexmarkConfig.from_env(event_rate=1_000),
            rs.sinks.FileSink(os.environ.get("NEXMARK_OUT", "out/nexmark/q3")))


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
