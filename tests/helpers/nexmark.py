"""What the Nexmark tests share: the events of a record batch as the per-record generator's tuples."""
from __future__ import annotations

from typing import Any

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
