"""The in-memory sources read in batches, report offsets, and resume from them exactly
(FileSource: tests/unit/connectors/files/test_source.py)."""

import pyarrow as pa
import pytest

from raystream.errors import JobDefinitionError
from raystream.sources import SequenceSource


def drain(part, limit=10_000):
    out = []
    for _ in range(limit):
        batch = part.next_batch()
        if batch is None:
            return out
        out.extend(batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch)
    raise AssertionError("partition never ended")


def test_sequence_partitions_interleave():
    src = SequenceSource(10, partitions=3)
    parts = [src.build_partition(k, None, 2) for k in src.list_partitions()]
    assert [drain(p) for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_sequence_resumes_from_its_offset():
    src = SequenceSource(20, partitions=2)
    part = src.build_partition("1", None, 3)
    first = part.next_batch()
    resumed = src.build_partition("1", part.snapshot(), 3)
    assert first + drain(resumed) == list(range(1, 20, 2))


def test_sequence_rate_limits():
    src = SequenceSource(None, rate=1000)
    part = src.build_partition("0", None, 10_000)
    assert len(part.next_batch()) <= 10  # only what the elapsed time allows
    assert part.next_awake() is not None


def test_sequence_argument_checks():
    with pytest.raises(JobDefinitionError):
        SequenceSource(-1)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, partitions=0)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, rate=0)
