"""Nexmark as a partitioned, replayable source, per record or columnar.

Partition p of P emits events p, p + P, p + 2P, ... in order, and its offset is how many it
has emitted: since every event is a pure function of (seed, n), a partition resumes at any
offset. A columnar partition emits the same events as Arrow record batches (schema.py)
with the same offsets, so the two representations replay the same checkpoint positions.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from raystream.connectors.nexmark.columnar import event_batch
from raystream.connectors.nexmark.config import NexmarkConfig
from raystream.connectors.nexmark.model import Auction, Bid, Person
from raystream.connectors.nexmark.records import event
from raystream.event_time import EventTime
from raystream.source_api import Pacer, Source, SourcePartition

__all__ = ["NexmarkSource", "event_time"]


def event_time(max_delay: float | None = None, idle_after: float | None = None) -> EventTime:
    """Event time from `date_time` of per-record events; `max_delay` defaults to nothing (set
    it to at least the configuration's out_of_order so that no event is late). Columnar
    batches carry each event's time in their top-level `date_time` column."""
    return EventTime(lambda e: e.date_time / 1000, max_delay=max_delay or 0, idle_after=idle_after)


class NexmarkSource(Source):
    """Nexmark events in `config.partitions` partitions: `Person`, `Auction` and `Bid`
    tuples, or with `columnar=True` Arrow record batches of the layout in schema.py.

    Columnar is a setting of this source rather than a source of its own because only what
    a batch holds differs: the partitions, offsets, pacing and events are the same, so a
    checkpoint's offsets mean the same events to either."""

    def __init__(self, config: NexmarkConfig | None = None, *, columnar: bool = False):
        self.config = config or NexmarkConfig()
        self.columnar = columnar

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(self.config.partitions)]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        return _NexmarkPartition(self.config, int(key), resume_state or 0, batch_size, self.columnar)


class _NexmarkPartition(SourcePartition):
    def __init__(self, config: NexmarkConfig, partition: int, emitted: int, batch_size: int, columnar: bool = False):
        self.config, self.partition, self.emitted, self.batch_size = config, partition, emitted, batch_size
        self.columnar = columnar
        self._pacer = Pacer(None if config.rate is None else config.rate / config.partitions, emitted)

    def next_batch(self) -> list[Person | Auction | Bid] | pa.RecordBatch | None:
        c, p, step = self.config, self.partition, self.config.partitions
        first = p + self.emitted * step
        if c.events is not None and first >= c.events:
            return None
        count = self._pacer.allowed(self.emitted, self.batch_size)
        if count <= 0:
            return []
        stop = first + count * step
        if c.events is not None:
            stop = min(stop, c.events)
        if self.columnar:
            batch: list[Person | Auction | Bid] | pa.RecordBatch = event_batch(c, (first, stop, step))
            self.emitted += batch.num_rows
        else:
            batch = [event(c, n) for n in range(first, stop, step)]
            self.emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self.emitted

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self.emitted)
