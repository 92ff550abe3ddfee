"""Sources: where records come from.

A source is split into partitions. Each partition reads in batches, reports its
offset with `snapshot()`, and is rebuilt from that offset after a failure
(`Source.build_partition(key, resume_state)`); nothing about its position is fixed in a
constructor that the resume state could contradict.

To write your own source, subclass `Source` and `SourcePartition`:

    class MySource(rs.sources.Source):
        def list_partitions(self) -> list[str]: ...
        def build_partition(self, key, resume_state, batch_size): ...

Partitions are assigned to the source step's subtasks round-robin in the order that
`list_partitions` returns them.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.errors import JobDefinitionError, SourceError  # noqa: F401 (SourceError: what a source raises)
from raystream.connectors.files.source import FileSource  # noqa: F401 (users name it rs.sources.FileSource)
from raystream.source_api import Pacer, Source, SourcePartition, check_rate  # noqa: F401 (the interface, for users)

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """Sources whose libraries are optional load on first use: `rs.sources.KafkaSource`."""
    if name in ("KafkaSource", "KafkaRecord"):
        import raystream.connectors.kafka
        return getattr(raystream.connectors.kafka, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- SequenceSource ----------------------------------------------------------------------


class SequenceSource(Source):
    """The integers 0..n-1 (unbounded when n is None) in `partitions` partitions.

    Partition p emits p, p+P, p+2P, ... where P = partitions. `rate` limits the records
    per second of all partitions together. `columnar=True` emits them as Arrow record
    batches of one int64 column, "value", made in numpy (`arrow_batch_size` rows at a
    time), for columnar steps: no Python per number.
    """

    def __init__(self, n: int | None = None, *, partitions: int = 1, rate: float | None = None,
                 columnar: bool = False):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise JobDefinitionError(f"SequenceSource n must be None or an integer >= 0; got {n!r}")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise JobDefinitionError(f"SequenceSource partitions must be an integer >= 1; got {partitions!r}")
        if not isinstance(columnar, bool):
            raise JobDefinitionError(f"SequenceSource columnar must be True or False; got {columnar!r}")
        check_rate("SequenceSource", rate)
        self.n = n
        self.partitions = partitions
        self.rate = rate
        self.columnar = columnar

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        rate = None if self.rate is None else self.rate / self.partitions
        return _SequencePartition(int(key), self.partitions, self.n, rate, resume_state or 0, batch_size,
                                  self.columnar)


class _SequencePartition(SourcePartition):
    def __init__(self, first: int, step: int, n: int | None, rate: float | None, emitted: int, batch_size: int,
                 columnar: bool):
        self._first, self._step, self._n = first, step, n
        self._emitted = emitted  # records of this partition emitted so far: the offset
        self._batch_size = batch_size
        self._pacer = Pacer(rate, emitted)
        self._columnar = columnar

    def next_batch(self) -> list[int] | pa.RecordBatch | None:
        start = self._first + self._emitted * self._step
        if self._n is not None and start >= self._n:
            return None
        count = self._pacer.allowed(self._emitted, self._batch_size)
        if count <= 0:
            return []
        stop = start + count * self._step
        if self._n is not None:
            stop = min(stop, self._n)
        if self._columnar:
            values = np.arange(start, stop, self._step, dtype=np.int64)
            self._emitted += len(values)
            return pa.RecordBatch.from_arrays([pa.array(values)], names=["value"])
        batch = list(range(start, stop, self._step))
        self._emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._emitted

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self._emitted)


# --- ListSource --------------------------------------------------------------------------


class ListSource(Source):
    """Records held in memory, in partitions: `ListSource([r1, r2, ...])` is one partition,
    `ListSource(partitions=[[...], [...]])` several, each read in its order. `rate` limits
    each partition's records per second. For tests, notebooks and examples: the records
    travel to the source's actors with the job."""

    def __init__(self, records: list[Any] | None = None, *, partitions: list[list[Any]] | None = None,
                 rate: float | None = None):
        if (records is None) == (partitions is None):
            raise JobDefinitionError("ListSource takes records or partitions=[...], one of them")
        self.partitions = [list(records)] if records is not None else [list(p) for p in partitions]
        check_rate("ListSource", rate)
        self.rate = rate

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(len(self.partitions))]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        return _ListPartition(self.partitions[int(key)], resume_state or 0, batch_size, self.rate)


class _ListPartition(SourcePartition):
    def __init__(self, records: list[Any], offset: int, batch_size: int, rate: float | None):
        self._records, self._offset, self._batch_size = records, offset, batch_size
        self._pacer = Pacer(rate, offset)

    def next_batch(self) -> list[Any] | None:
        if self._offset >= len(self._records):
            return None
        count = self._pacer.allowed(self._offset, self._batch_size)
        if count <= 0:
            return []
        batch = self._records[self._offset:self._offset + count]
        self._offset += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._offset

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self._offset)
