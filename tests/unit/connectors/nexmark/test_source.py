"""The Nexmark source without Ray: replayable partitions, per record and columnar."""
from __future__ import annotations

import time

import pyarrow as pa
import pytest

from raystream.connectors import nexmark as nx

from tests.helpers.nexmark import as_events


def batches_of(part) -> list:
    out = []
    while (batch := part.next_batch()) is not None:
        out.append(batch)
    return out


def test_a_partition_resumed_at_any_offset_continues_with_the_same_events():
    config = nx.NexmarkConfig(events=1_000, partitions=3, out_of_order=2.0)
    everything = list(nx.events(config))
    source = nx.NexmarkSource(config)
    for p in source.list_partitions():
        part = source.build_partition(p, None, 50)
        first = part.next_batch()
        resumed = source.build_partition(p, part.snapshot(), 50)
        rest = []
        while (batch := resumed.next_batch()) is not None:
            rest.extend(batch)
        assert first + rest == everything[int(p)::3]


@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_a_columnar_partition_emits_the_same_events_at_the_same_offsets(partitions):
    config = nx.NexmarkConfig(events=3_001, partitions=partitions, out_of_order=0.5, seed=11)
    records, columnar = nx.NexmarkSource(config), nx.NexmarkSource(config, columnar=True)
    for p in columnar.list_partitions():
        a, b = records.build_partition(p, None, 256), columnar.build_partition(p, None, 256)
        while (batch := a.next_batch()) is not None:
            rows = b.next_batch()
            assert isinstance(rows, pa.RecordBatch) and rows.schema == nx.SCHEMA and rows.num_rows <= 256
            assert as_events(rows) == [(type(e).__name__, tuple(e)) for e in batch]
            assert a.snapshot() == b.snapshot()
        assert b.next_batch() is None


@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_a_columnar_partition_resumed_from_its_snapshot_continues_exactly(partitions):
    config = nx.NexmarkConfig(events=5_000, partitions=partitions, out_of_order=1.0)
    source = nx.NexmarkSource(config, columnar=True)
    for p in source.list_partitions():
        whole = [e for b in batches_of(source.build_partition(p, None, 300)) for e in as_events(b)]
        assert whole == [(type(e).__name__, tuple(e)) for e in list(nx.events(config))[int(p)::partitions]]
        part = source.build_partition(p, None, 300)
        head = [e for _ in range(3) for e in as_events(part.next_batch())]
        resumed = source.build_partition(p, part.snapshot(), 777)  # another batch size: offsets are counts
        assert head + [e for b in batches_of(resumed) for e in as_events(b)] == whole


def test_an_unbounded_columnar_partition_resumes_ids_far_into_the_stream():
    config = nx.NexmarkConfig(events=None, partitions=2)
    part = nx.NexmarkSource(config, columnar=True).build_partition("1", 2_000_000, 4_096)
    batch = part.next_batch()
    assert part.snapshot() == 2_004_096
    assert as_events(batch) == [(type(e).__name__, tuple(e))
                                for e in (nx.event(config, n) for n in range(4_000_001, 4_008_193, 2))]


def test_a_paced_columnar_partition_waits_for_its_rate():
    config = nx.NexmarkConfig(events=None, partitions=2, rate=200.0)  # 100 events/s a partition
    part = nx.NexmarkSource(config, columnar=True).build_partition("0", 10, 4_096)
    assert part.next_batch() == [] and part.next_awake() > time.time()
    part._pacer.started -= 0.5  # as if half a second had passed
    batch = part.next_batch()
    assert 50 <= batch.num_rows < 4_096 and part.snapshot() == 10 + batch.num_rows  # the rate's, not the batch size
