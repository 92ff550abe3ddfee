"""The Nexmark generator without Ray: replayable partitions and its configuration."""
from __future__ import annotations

import pytest

from raystream.connectors import nexmark as nx
from raystream.errors import JobDefinitionError


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


def test_out_of_order_events_lag_behind_their_slot_by_at_most_the_setting():
    config = nx.NexmarkConfig(events=5_000, event_rate=1_000, out_of_order=1.5)
    lags = [config.base_time + n - e.date_time for n, e in enumerate(nx.events(config))]  # 1,000 events/s
    assert min(lags) >= 0 and max(lags) < 1_500 and len(set(lags)) > 100


def test_configuration_from_the_environment_and_its_checks(monkeypatch):
    monkeypatch.setenv("NEXMARK_EVENTS", "1234")
    monkeypatch.setenv("NEXMARK_RATE", "500")
    config = nx.NexmarkConfig.from_env(event_rate=1_000)
    assert (config.events, config.rate, config.event_rate) == (1234, 500.0, 1_000)
    with pytest.raises(JobDefinitionError, match="partitions must be an integer >= 1"):
        nx.NexmarkConfig(partitions=0)
