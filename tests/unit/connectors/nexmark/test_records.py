"""The per-record generator: what its events look like (the columnar one must match it)."""
from __future__ import annotations

import pickle
from collections import Counter

from raystream.connectors import nexmark as nx


def test_out_of_order_events_lag_behind_their_slot_by_at_most_the_setting():
    config = nx.NexmarkConfig(events=5_000, event_rate=1_000, out_of_order=1.5)
    lags = [config.base_time + n - e.date_time for n, e in enumerate(nx.events(config))]  # 1,000 events/s
    assert min(lags) >= 0 and max(lags) < 1_500 and len(set(lags)) > 100


def test_kinds_come_in_the_standard_proportion():
    kinds = Counter(type(e).__name__ for e in nx.events(nx.NexmarkConfig(events=5_000)))
    assert kinds == {"Person": 100, "Auction": 300, "Bid": 4_600}


def test_pickles_name_the_event_types_by_the_module_path_they_had_before_the_package_split():
    bid = nx.event(nx.NexmarkConfig(), 4)
    assert isinstance(bid, nx.Bid) and b"raystream.connectors.nexmark\x94" in pickle.dumps(bid)
    assert pickle.loads(pickle.dumps(bid)) == bid
    for cls in (nx.Person, nx.Auction, nx.Bid, nx.NexmarkConfig, nx.NexmarkSource):
        assert cls.__module__ == "raystream.connectors.nexmark"
