"""Single-process baselines of the columnar Nexmark workloads: each query computed with
pyarrow and numpy over the columnar generator (`nexmark.batches(config)`), in one
process, as a plain loop would be written without a stream processor.

Each baseline flattens and narrows every batch as it is generated (what a loop over the
generator does first), keeps what the query needs, and computes the result once the
input ends, vectorized: Arrow filters, group-bys and hash joins (with Arrow's own
threads, as a plain loop gets them), numpy sorts. It returns
the result as a table whose columns are, in order, the fields of the per-record query's
reference tuples (for q4 and q6, whose references are dicts, key then value), so a test
can hold each baseline to its reference. `timed(query, config)` is what the benchmark
reports: the seconds from the first batch generated to the result.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.connectors import nexmark as nx

__all__ = ["BASELINES", "timed"]

WINDOW = 10_000  # q7 and q8: 10 s tumbling windows, in ms
SIZE, SLIDE = 10_000, 2_000  # q5: 10 s windows sliding every 2 s
STATES = ["OR", "ID", "CA"]  # q3
LAST = 10  # q6

Baseline = Callable[[nx.NexmarkConfig, int], pa.Table]


def _concat(tables: list[pa.Table | pa.RecordBatch]) -> pa.Table:
    return pa.concat_tables([t if isinstance(t, pa.Table) else pa.Table.from_batches([t]) for t in tables])


def q0(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """Every bid."""
    return _concat([nx.bids(b) for b in nx.batches(config, batch_size)])


def q1(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """Each bid's price in euros: float64(price) * 0.908, Python's `0.908 * price`."""
    out = []
    for b in nx.batches(config, batch_size):
        bids = nx.bids(b)
        out.append(pa.table({"auction": bids.column("auction"), "bidder": bids.column("bidder"),
                             "price": pc.multiply(bids.column("price"), 0.908), "date_time": bids.column("date_time")}))
    return _concat(out)


def q2(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    out = []
    for b in nx.batches(config, batch_size):
        bids = nx.bids(b)
        auction = bids.column("auction")
        out.append(bids.filter(pc.equal(pc.modulo(auction, 123), 0)).select(["auction", "price"]))
    return _concat(out)


def q3(config: nx.NexmarkConfig, batch_size: int = 65_536, wait: float = 600.0) -> pa.Table:
    """People of OR, ID, CA joined with their auctions of category 10 (a hash join at the
    end), where the two are at most `wait` seconds apart (the job's WAIT)."""
    people, items = [], []
    for b in nx.batches(config, batch_size):
        p = nx.persons(b)
        people.append(p.filter(pc.is_in(p.column("state"), pa.array(STATES))).select(
            ["id", "name", "city", "state", "date_time"]).rename_columns(["id", "name", "city", "state", "joined"]))
        a = nx.auctions(b)
        items.append(a.filter(pc.equal(a.column("category"), 10)).select(["seller", "id", "date_time"]).rename_columns(
            ["seller", "auction", "listed"]))
    joined = _concat(items).join(_concat(people), keys="seller", right_keys="id", join_type="inner")
    apart = pc.abs(pc.subtract(joined.column("listed"), joined.column("joined")))
    return joined.filter(pc.less_equal(apart, round(wait * 1000))).select(["name", "city", "state", "auction"])


def _winners(config: nx.NexmarkConfig, batch_size: int) -> pa.Table:
    """auction, category, seller, expires, price: each auction's highest bid between its
    opening and its end (inclusive), for the auctions that had one."""
    auctions, bids = [], []
    for b in nx.batches(config, batch_size):
        a = nx.auctions(b)
        auctions.append(pa.table({"auction": a.column("id"), "opened": a.column("date_time"),
                                  "expires": a.column("expires"), "category": a.column("category"),
                                  "seller": a.column("seller")}))
        bids.append(nx.bids(b).select(["auction", "date_time", "price"]))
    joined = _concat(bids).join(_concat(auctions), keys="auction", join_type="inner")
    t = joined.column("date_time")
    alive = pc.and_(pc.greater_equal(t, joined.column("opened")), pc.less_equal(t, joined.column("expires")))
    grouped = joined.filter(alive).group_by(["auction", "category", "seller", "expires"])
    return grouped.aggregate([("price", "max")]).rename_columns(["auction", "category", "seller", "expires", "price"])


def _means(keys: np.ndarray, sums: np.ndarray, counts: np.ndarray, names: tuple[str, str]) -> pa.Table:
    # float64 of an int sum below 2**53 is exact, so sum / count rounds as Python's int / int
    return pa.table({names[0]: keys, names[1]: sums.astype(np.float64) / counts})


def q4(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """category, average winning price."""
    per = _winners(config, batch_size).group_by("category").aggregate(
        [("price", "sum"), ("price", "count")])
    return _means(per.column("category").to_numpy(), per.column("price_sum").to_numpy(),
                  per.column("price_count").to_numpy(), ("category", "average"))


def q5(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """start, auction, bids: per sliding window the most-bid auctions. Each batch's bids are
    counted per (auction, window) as they come; the partial counts are summed at the end."""
    windows = SIZE // SLIDE
    partials = []
    for b in nx.batches(config, batch_size):
        bids = nx.bids(b)
        t = bids.column("date_time").to_numpy()
        latest = t - t % SLIDE
        starts = np.concatenate([latest - k * SLIDE for k in range(windows)])  # the windows of each bid
        auctions = np.tile(bids.column("auction").to_numpy(), windows)
        partials.append(pa.table({"start": starts, "auction": auctions}).group_by(
            ["start", "auction"]).aggregate([([], "count_all")]))
    counts = _concat(partials).group_by(["start", "auction"]).aggregate([("count_all", "sum")])
    counts = counts.rename_columns(["start", "auction", "bids"])
    most = counts.group_by("start").aggregate([("bids", "max")])
    joined = counts.join(most, keys="start", join_type="inner")
    return joined.filter(pc.equal(joined.column("bids"), joined.column("bids_max"))).select(
        ["start", "auction", "bids"])


def q6(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """seller, average winning price of their LAST most recently closed auctions (by end,
    then auction id)."""
    w = _winners(config, batch_size)
    seller, expires, auction, price = (w.column(c).to_numpy() for c in ("seller", "expires", "auction", "price"))
    order = np.lexsort((auction, expires, seller))
    seller, price = seller[order], price[order]
    group_end = np.searchsorted(seller, seller, side="right")  # one past each row's seller's last row
    kept = group_end - np.arange(len(seller)) <= LAST
    seller, price = seller[kept], price[kept]
    firsts = np.flatnonzero(np.r_[True, seller[1:] != seller[:-1]])
    return _means(seller[firsts], np.add.reduceat(price, firsts), np.diff(np.r_[firsts, len(seller)]),
                  ("seller", "average"))


def q7(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """auction, price, bidder, date_time of the highest bids per tumbling window. Each
    batch keeps only the bids at its own top price per window (a window's top bids are
    among them); the windows' tops are taken over those at the end."""
    candidates = []
    for b in nx.batches(config, batch_size):
        bids = nx.bids(b)
        price = bids.column("price").to_numpy()
        window = bids.column("date_time").to_numpy() // WINDOW
        keep = np.zeros(len(price), np.bool_)
        for w in np.unique(window):  # a batch spans a few windows
            mine = window == w
            keep |= mine & (price == price[mine].max())
        candidates.append(pa.table({"window": window[keep], "auction": bids.column("auction").filter(keep),
                                    "price": price[keep], "bidder": bids.column("bidder").filter(keep),
                                    "date_time": bids.column("date_time").filter(keep)}))
    top = _concat(candidates)
    most = top.group_by("window").aggregate([("price", "max")])
    joined = top.join(most, keys="window", join_type="inner")
    return joined.filter(pc.equal(joined.column("price"), joined.column("price_max"))).select(
        ["auction", "price", "bidder", "date_time"])


def q8(config: nx.NexmarkConfig, batch_size: int = 65_536) -> pa.Table:
    """id, name, start: people who opened an auction in the window they registered in."""
    people, sellers = [], []
    for b in nx.batches(config, batch_size):
        p = nx.persons(b)
        people.append(pa.table({"id": p.column("id"), "name": p.column("name"),
                                "window": pc.divide(p.column("date_time"), WINDOW)}))  # int64: floors
        a = nx.auctions(b)
        sellers.append(pa.table({"id": a.column("seller"), "window": pc.divide(a.column("date_time"), WINDOW)}))
    opened = _concat(sellers).group_by(["id", "window"]).aggregate([])
    found = _concat(people).join(opened, keys=["id", "window"], join_type="left semi")
    return pa.table({"id": found.column("id"), "name": found.column("name"),
                     "start": pc.multiply(found.column("window"), WINDOW)})


BASELINES: dict[str, Baseline] = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7,
                                  "q8": q8}


def timed(query: str, config: nx.NexmarkConfig) -> float:
    """Seconds to generate `config`'s events and compute `query` over them, after a small
    run of the same query: a process's first batches pay for lazy imports and Arrow's
    kernels, once, which the job's subtasks do before the steady state that is measured."""
    BASELINES[query](dataclasses.replace(config, events=min(config.events or 10_000, 10_000)))
    started = time.perf_counter()
    BASELINES[query](config)
    return time.perf_counter() - started
