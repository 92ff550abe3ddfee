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


@pytest.mark.parametrize("n, partitions, size", [(10, 3, 2), (1, 1, 5), (0, 2, 4), (1_000, 4, 64)])
def test_a_columnar_sequence_emits_the_same_numbers_as_int64_batches_and_resumes_alike(n, partitions, size):
    rows, columnar = SequenceSource(n, partitions=partitions), SequenceSource(n, partitions=partitions, columnar=True)
    assert columnar.columnar and not rows.columnar  # the runtime reads arrow_batch_size rows at a time for it
    for key in rows.list_partitions():
        part = columnar.build_partition(key, None, size)
        first = part.next_batch()
        if first is not None:
            assert first.schema == pa.schema([("value", pa.int64())]) and first.num_rows <= size
        resumed = columnar.build_partition(key, part.snapshot(), size)
        assert (first.to_pylist() if first is not None else []) + drain(resumed) == [
            {"value": v} for v in drain(rows.build_partition(key, None, size))]


def test_sequence_argument_checks():
    with pytest.raises(JobDefinitionError, match="columnar"):
        SequenceSource(5, columnar="yes")
    with pytest.raises(JobDefinitionError):
        SequenceSource(-1)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, partitions=0)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, rate=0)
