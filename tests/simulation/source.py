"""The simulated job's source: P partitions of record ids, read by SourceReader (sim.py,
job.py). A schedule's options shape its batches: Arrow record batches cut anew by every
reader (columnar.py), records that arrive over time on the simulated clock and polls that
find none (event_time.py)."""
from __future__ import annotations

import copy
import random
from typing import Any

import pyarrow as pa

from raystream.sources import Source, SourcePartition

from .columnar import Columns
from .event_time import Lateness, Timing
from .world import World


class SimSource(Source):
    """Partitions "0".."P-1" of record ids; `present` is what `list_partitions` finds now
    (a partition may be gone for a run and come back). A schedule's options shape its
    batches: `columns` (Arrow batches, cut anew by every reader) and `timing` (records
    that arrive over time, and the polls that find none: event_time.py)."""

    def __init__(self, partitions: int, records: int, present: list[int], columns: Columns | None = None,
                 timing: Timing | None = None):
        self.partitions, self.records, self.present = partitions, records, present
        self.columns, self.timing = columns, timing
        self.world: Any = None  # the clock records arrive by (`reading`)
        self.name = ""  # the reader's: its cuts
        self.lateness: Lateness | None = None

    def reading(self, world: World, name: str, lateness: Lateness | None) -> SimSource:
        """This source as one subtask attempt reads it: cut its own way (a replay cuts
        elsewhere), on the simulated clock, its polls told to `lateness`."""
        source = copy.copy(self)
        source.world, source.name, source.lateness = world, name, lateness
        return source

    def list_partitions(self) -> list[str]:
        return [str(p) for p in self.present]

    def build_partition(self, key: str, resume_state: Any, batch_size: int) -> SourcePartition:
        return _Ids(int(key), self, resume_state or 0, batch_size)


class _Ids(SourcePartition):
    """Record ids p, p + P, p + 2P, ...; the offset is how many were read."""

    def __init__(self, p: int, source: SimSource, offset: int, batch_size: int):
        self.p, self.partitions, self.records, self.offset = p, source.partitions, source.records, offset
        self.source, self.batch_size = source, batch_size
        self.cuts = random.Random(f"{source.name}/{p}") if source.columns is not None else None

    def next_batch(self) -> list[int] | pa.RecordBatch | None:
        if self.offset >= self.records:
            return None
        source, columns, timing = self.source, self.source.columns, self.source.timing
        end = min(self.records, self.offset + (columns.cut(self.cuts) if columns is not None else self.batch_size))
        if timing is not None:  # what has not arrived yet stays for a later poll
            end = timing.arrived(self.p, self.offset, end, source.world.now)
        batch = [self.p + k * self.partitions for k in range(self.offset, end)]
        self.offset = end
        if source.lateness is not None:
            source.lateness.polled(self.p, bool(batch))
        if columns is not None and batch:
            return columns.batch(batch, self.cuts, [timing.millis(i) for i in batch] if timing else None)
        return batch

    def snapshot(self) -> int:
        return self.offset


def record_ids(partition: int, partitions: int, records: int) -> list[int]:
    return [partition + k * partitions for k in range(records)]
