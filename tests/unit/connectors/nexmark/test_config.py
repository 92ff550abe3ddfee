"""NexmarkConfig: its settings from the environment, and the checks that keep it in the
domain where the per-record and the columnar generator agree."""
from __future__ import annotations

import pytest

from raystream.connectors import nexmark as nx
from raystream.errors import JobDefinitionError


def test_configuration_from_the_environment_and_its_checks(monkeypatch):
    monkeypatch.setenv("NEXMARK_EVENTS", "1234")
    monkeypatch.setenv("NEXMARK_RATE", "500")
    config = nx.NexmarkConfig.from_env(event_rate=1_000)
    assert (config.events, config.rate, config.event_rate) == (1234, 500.0, 1_000)
    with pytest.raises(JobDefinitionError, match="partitions must be an integer >= 1"):
        nx.NexmarkConfig(partitions=0)


@pytest.mark.parametrize("setting, message", [
    ({"hot_auction_ratio": 2.5}, "hot_auction_ratio must be an integer >= 1"),
    ({"hot_bidder_ratio": 0}, "hot_bidder_ratio must be an integer >= 1"),
    ({"active_people": 0}, "active_people must be an integer >= 1"),
    ({"in_flight_auctions": -1}, "in_flight_auctions must be an integer >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"base_time": 2**63}, "base_time must be an integer number of milliseconds"),
    ({"event_rate": float("inf")}, "event_rate must be > 0"),
    ({"out_of_order": -1}, "out_of_order >= 0"),
    ({"events": True}, "events must be None or an integer"),
])
def test_settings_outside_the_generators_domain_are_refused(setting, message):
    with pytest.raises(JobDefinitionError, match=message):
        nx.NexmarkConfig(**setting)
