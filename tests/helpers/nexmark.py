"""What the Nexmark tests share: the events of a record batch as the per-record generator's tuples,
and the reference of the columnar window jobs (bids per auction in sliding windows)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raystream.connectors import nexmark as nx

_TUPLES = {nx.PERSON: ("person", nx.Person), nx.AUCTION: ("auction", nx.Auction), nx.BID: ("bid", nx.Bid)}


def as_events(batch: pa.RecordBatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Each row as (kind, fields), checking that its other structs are null and its
    top-level date_time is its own (a Person and a Bid with equal fields differ here)."""
    out = []
    for row in batch.to_pylist():
        column, kind = _TUPLES[row["event_type"]]
        assert [name for name in ("person", "auction", "bid") if row[name] is not None] == [column], row
        event = kind(**row[column])
        assert row["date_time"] == event.date_time
        out.append((kind.__name__, tuple(event)))
    return out


def expected(config: nx.NexmarkConfig, numbers: Any) -> list[tuple[str, tuple[Any, ...]]]:
    return [(type(e).__name__, tuple(e)) for e in (nx.event(config, int(n)) for n in numbers)]


def all_events(config: nx.NexmarkConfig) -> pa.RecordBatch:
    """Every event of a bounded configuration as one batch."""
    return pa.Table.from_batches(list(nx.batches(config))).combine_chunks().to_batches()[0]


def bid_windows(config: nx.NexmarkConfig, size: int, slide: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(auction, window start ms) -> (bids, top price): every bid in each of its sliding
    windows of `size` every `slide` ms (size a multiple of slide), with numpy and pyarrow."""
    bids = nx.bids(all_events(config))
    t = bids.column("date_time").to_numpy()
    starts = np.concatenate([t - t % slide - k * slide for k in range(size // slide)])
    auctions = np.tile(bids.column("auction").to_numpy(), size // slide)
    prices = np.tile(bids.column("price").to_numpy(), size // slide)
    grouped = pa.table({"auction": auctions, "start": starts, "price": prices}).group_by(["auction", "start"]).aggregate(
        [("price", "count"), ("price", "max")])
    return {(r["auction"], r["start"]): (r["price_count"], r["price_max"]) for r in grouped.to_pylist()}


def window_rows(rows: list[dict]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((auction, window start ms), (bids, top)) of the rows a columnar window job wrote."""
    return [((r["auction"], int(r["window_start"].timestamp() * 1000)), (r["bids"], r["top"])) for r in rows]
