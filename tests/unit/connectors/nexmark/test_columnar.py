"""The columnar generator makes exactly the per-record generator's events: same kinds,
ids, prices, strings and times, for any configuration and any event numbers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream.connectors import nexmark as nx
from raystream.errors import JobDefinitionError

from tests.helpers.nexmark import as_events, expected

configs = st.builds(
    nx.NexmarkConfig, events=st.none(), partitions=st.integers(1, 3), seed=st.integers(-2**70, 2**70),
    event_rate=st.sampled_from([1, 37.5, 1_000, 10_000.0, 123_456.789]),
    out_of_order=st.sampled_from([0, 0.5, 2.0, 3]), hot_auction_ratio=st.integers(1, 5),
    hot_seller_ratio=st.integers(1, 5), hot_bidder_ratio=st.integers(1, 5), active_people=st.integers(1, 2_000),
    in_flight_auctions=st.integers(0, 300), base_time=st.integers(0, 2**41))
# early events (where the id windows still grow), and far ones
starts = st.one_of(st.integers(0, 5_000), st.integers(0, 10**12))


@settings(max_examples=60, deadline=None)
@given(config=configs, start=starts, count=st.integers(0, 300), step=st.integers(1, 7))
def test_a_range_of_events_equals_the_per_record_events(config, start, count, step):
    numbers = range(start, start + count * step, step)
    assert as_events(nx.event_batch(config, (numbers.start, numbers.stop, step))) == expected(config, numbers)


@settings(max_examples=30, deadline=None)
@given(config=configs, numbers=st.lists(st.integers(0, nx.MAX_EVENT - 1), max_size=60))
def test_any_event_numbers_in_any_order_equal_the_per_record_events(config, numbers):
    array = np.array(numbers, dtype=np.int64)
    assert as_events(nx.event_batch(config, array)) == expected(config, numbers)


@pytest.mark.parametrize("out_of_order", [0.0, 2.0])
def test_a_large_batch_past_the_first_hundreds_of_thousands_of_events(out_of_order):
    config = nx.NexmarkConfig(seed=42, out_of_order=out_of_order)
    numbers = range(3_000_000, 3_000_000 + 65_536)
    assert as_events(nx.event_batch(config, numbers)) == expected(config, numbers)


@pytest.mark.parametrize("seed", [0, 1, 2**64 + 3])
def test_the_first_events_and_ones_near_the_largest_event_number(seed):
    config = nx.NexmarkConfig(seed=seed, out_of_order=1.0)
    for numbers in (range(0, 3_000), range(nx.MAX_EVENT - 500, nx.MAX_EVENT)):
        assert as_events(nx.event_batch(config, numbers)) == expected(config, numbers)


def test_batches_of_a_bounded_configuration_are_its_events_in_order():
    config = nx.NexmarkConfig(events=2_345, out_of_order=0.5, seed=9)
    got = list(nx.batches(config, 1_000))
    assert [b.num_rows for b in got] == [1_000, 1_000, 345]
    assert [e for b in got for e in as_events(b)] == [(type(e).__name__, tuple(e)) for e in nx.events(config)]


def test_event_numbers_as_a_list_a_range_or_start_stop_step_and_none():
    config = nx.NexmarkConfig()
    assert as_events(nx.event_batch(config, [7, 3, 7])) == expected(config, [7, 3, 7])
    assert nx.event_batch(config, range(10, 0, -3)).column("date_time").to_pylist() == \
        [e.date_time for e in (nx.event(config, n) for n in (10, 7, 4, 1))]
    empty = nx.event_batch(config, (5, 5, 1))
    assert empty.num_rows == 0 and empty.schema == nx.SCHEMA


@pytest.mark.parametrize("numbers, message", [
    ((-1, 5, 1), "must lie in"), ((0, nx.MAX_EVENT + 1, 1), "must lie in"), (np.array([3, -2]), "must lie in"),
    (np.array([1.0, 2.0]), "1-d integer array"), (np.zeros((2, 2), np.int64), "1-d integer array"),
    ((0, 1.5, 1), r"\(start, stop, step\) integers"),
])
def test_event_numbers_outside_the_domain_are_refused(numbers, message):
    with pytest.raises(JobDefinitionError, match=message):
        nx.event_batch(nx.NexmarkConfig(), numbers)


def test_batches_needs_a_bounded_configuration_and_a_batch_size():
    with pytest.raises(JobDefinitionError, match="bounded"):
        nx.batches(nx.NexmarkConfig(events=None))
    with pytest.raises(JobDefinitionError, match="batch_size >= 1"):
        nx.batches(nx.NexmarkConfig(), 0)
