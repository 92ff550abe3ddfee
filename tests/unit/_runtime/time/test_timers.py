"""SpreadTimers (numpy over timers whose times mostly differ) hands out what GroupedTimers
(a heap entry per distinct time) does, when every (time, payload) differs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raystream._runtime.time.timers import GroupedTimers, SpreadTimers

PUSHES = st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["a", "b", ("c", 1), None])), max_size=12)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(PUSHES, st.integers(-1, 110)), max_size=12))
def test_spread_timers_pop_what_grouped_timers_pop(steps):
    spread, grouped, n = SpreadTimers(), GroupedTimers(), 0
    for pushes, now in steps:
        for t, key in pushes:
            payload = ((n, n + 1), 0)  # each its own, as a window's
            n += 1
            spread.push(t, key, payload)
            grouped.push(t, key, payload)
        assert list(spread.pop_due(now)) == list(grouped.pop_due(now))
        assert (len(spread), spread.next_time()) == (len(grouped), grouped.next_time())


def test_a_timer_pushed_while_popping_comes_out_if_due():
    timers = SpreadTimers()
    timers.push(5, "a", "fire")
    out = []
    for t, key, payload in timers.pop_due(10):
        out.append((t, key, payload))
        if payload == "fire":
            timers.push(t + 3, key, "cleanup")  # as a window with allowed lateness does
    assert out == [(5, "a", "fire"), (8, "a", "cleanup")] and len(timers) == 0
