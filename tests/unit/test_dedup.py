"""The dedup step without Ray: a process step that passes each key's first record, drops
the key's later ones while its state lives, and expires the state by a timer."""
from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.operators.process import DedupOp, ProcessOp
from raystream._runtime.time.watermarks import MAX_TIME
from raystream.dedup import Dedup, expire
from raystream.errors import JobDefinitionError
from raystream.graph import Step, StepKind
from tests.helpers.keyed import feed


def dedup_op(within_s: float = 5, clock: str = "event", generic: bool = False) -> ProcessOp:
    """The step's operator (DedupOp), or, `generic`, the process step that runs `Dedup`
    per record through a ProcessContext: both keep the same state."""
    step = Step("dedup", StepKind.PROCESS, ("k",), fn=Dedup.of("dedup", within_s, clock), on_timer=expire)
    return ProcessOp(step) if generic else DedupOp(step)


def test_the_first_record_of_a_key_passes_and_later_ones_within_the_duration_are_dropped():
    op = dedup_op(5)
    assert feed(op, [("a", 1, 1_000), ("b", 2, 1_500), ("a", 3, 5_999), ("a", 4, 900)]) == [("a", 1), ("b", 2)]
    assert {k: ks.value for k, ks in op.state.items()} == {"a": 1_000, "b": 1_500}  # first seen, ms
    assert op.on_watermark(5_999) == []  # a's state lives until the watermark reaches 1 s + 5 s
    assert feed(op, [("a", 5, 6_500)]) == []
    op.on_watermark(6_000)
    assert set(op.state) == {"b"}  # a expired: its next record passes again
    assert feed(op, [("a", 6, 6_500)]) == [("a", 6)]
    op.on_watermark(MAX_TIME)
    assert op.state == {}  # every key expires: the state holds only the keys of the last `within`


def test_event_times_past_the_datetime_range_and_a_long_within_work():
    """Review: timers went through datetimes, which end at year 9999; every record failed."""
    far = 10**15  # ms: year 33658
    op = dedup_op(999 * 365 * 86_400)
    assert feed(op, [("a", 1, far), ("a", 2, far + 1)]) == [("a", 1)]
    assert op.state["a"].event_timers == {far + 999 * 365 * 86_400_000}
    op.on_watermark(far + 999 * 365 * 86_400_000)
    assert op.state == {}


def test_state_and_timers_survive_a_snapshot_and_restore():
    op = dedup_op(5)
    feed(op, [("a", 1, 1_000), ("b", 2, 4_000)])
    restored = dedup_op(5)
    restored.restore(op.snapshot(), 3_000)
    assert feed(restored, [("a", 3, 3_500), ("b", 4, 4_100)]) == []  # still duplicates after the restore
    restored.on_watermark(6_000)
    assert set(restored.state) == {"b"}
    assert feed(restored, [("a", 5, 6_100)]) == [("a", 5)]


def test_processing_time_expires_by_the_wall_clock():
    op = dedup_op(5, clock="processing")
    assert feed(op, [("a", 1, 0), ("a", 2, 0)]) == [("a", 1)]
    seen = op.state["a"].value
    assert op.next_timer() == seen + 5_000
    assert op.on_time(seen + 4_999) == [] and "a" in op.state
    op.on_time(seen + 5_000)
    assert op.state == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20_000)), max_size=60), st.integers(1, 8),
       st.randoms(use_true_random=False))
def test_equal_to_a_reference_over_random_arrivals_and_watermarks(events, within_s, rnd):
    for generic in (False, True):
        _check_against_reference(events, within_s, random.Random(rnd.random()), generic)


def _check_against_reference(events, within_s, rnd, generic):
    """A key's record passes when no record of the key passed within `within` before the
    watermark expired it; the reference replays the same arrivals and watermarks. (State
    expires when the watermark advances to or past its time: a late record's state, due
    already, lives until the watermark next advances, dropping its duplicates meanwhile.)"""
    op = dedup_op(within_s, generic=generic)
    passed, expected, first = [], [], {}
    watermark = -1
    for i, (key, t) in enumerate(events):
        if rnd.random() < 0.3:
            advanced = max(watermark, t - rnd.randint(0, 3_000))
            op.on_watermark(advanced)
            if advanced > watermark:
                watermark = advanced
                first = {k: s for k, s in first.items() if s + within_s * 1000 > watermark}
        passed += feed(op, [(key, i, t)])
        if key not in first:
            first[key] = t
            expected.append((key, i))
    assert passed == expected
    assert {k: ks.value for k, ks in op.state.items()} == first  # the same state either way


def test_definition_errors():
    job = rs.Job("defs")
    keyed = job.source("s", rs.sources.SequenceSource(10)).key_by("k", lambda x: x)
    with pytest.raises(JobDefinitionError, match="dedup within must be at least 1 ms"):
        keyed.dedup("d", 0)
    with pytest.raises(JobDefinitionError, match="dedup within must be at least 1 ms"):
        keyed.dedup("d", dt.timedelta(microseconds=500))
    with pytest.raises(JobDefinitionError, match="dedup within must be at most 1,000 years"):
        keyed.dedup("d", 1e12)
    with pytest.raises(JobDefinitionError, match="dedup time must be 'event' or 'processing'"):
        keyed.dedup("d", 5, time="ingestion")
    with pytest.raises(JobDefinitionError, match="dedup needs a stream keyed"):
        job.source("t", rs.sources.SequenceSource(10)).dedup("d", 5)
    keyed.dedup("d", dt.timedelta(minutes=1)).sink("out", rs.sinks.CollectSink())
    with pytest.raises(JobDefinitionError, match="deduplicates by event time, but its input has none"):
        job.validate()
    ok = rs.Job("ok")
    (ok.source("s", rs.sources.SequenceSource(10)).key_by("k", lambda x: x % 3)
        .dedup("d", 60, time="processing").sink("out", rs.sinks.CollectSink()))
    ok.validate()
