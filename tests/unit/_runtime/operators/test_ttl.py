"""State time-to-live without Ray (raystream/_runtime/operators/ttl.py): reduce,
stateful_map and process with a TTL against a reference over random arrivals, watermarks
and wall clocks; an expired key reads as never written; timers; the definition.
Snapshots, restores and rescaling: test_ttl_restore.py."""
from __future__ import annotations

import datetime as dt
import operator
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.operators import ttl as ttl_ops
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import untimed
from raystream.errors import JobDefinitionError
from raystream.graph import Step, StepKind
from tests.helpers.keyed import feed
from tests.helpers.ttl import KINDS, TTL_MS, TTL_S, Reference, on_record, op_of, remember, values, wall_clock


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30_000), st.integers(1, 40)), max_size=60),
       st.integers(1, 8), st.randoms(use_true_random=False))
def test_event_time_ttl_equals_the_reference_over_random_arrivals_and_watermarks(events, ttl_s, rnd):
    for kind in KINDS:
        op, ref = op_of(kind, ttl_s), Reference(kind, ttl_s * 1000)
        watermark, i = -1, 0
        while i < len(events):
            if rnd.random() < 0.3:  # watermarks behind some records: those are late, and still follow the rule
                mark = max(watermark, events[i][1] - rnd.randint(0, 4_000))
                op.on_watermark(mark)
                if mark > watermark:
                    watermark = mark
                    ref.clock(mark)
                ref.assert_held_by(op, kind)
            batch = events[i:i + rnd.randint(1, 4)]
            i += len(batch)
            expected = [(k, ref.record(k, v, t)) for k, t, v in batch]
            assert feed(op, [(k, v, t) for k, t, v in batch]) == expected, kind
        op.on_watermark(MAX_TIME)  # the end of the input is the end of time: every key expires
        assert values(op) == {}, kind


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3_000), st.integers(1, 40)), max_size=60),
       st.integers(1, 8), st.randoms(use_true_random=False))
def test_processing_time_ttl_equals_the_reference_over_a_random_wall_clock(events, ttl_s, rnd):
    """events: (key, ms the wall clock moves before the record, value)."""
    for kind in KINDS:
        with wall_clock(1_000_000) as clock:
            op, ref = op_of(kind, ttl_s, "processing"), Reference(kind, ttl_s * 1000)
            for key, step_ms, value in events:
                clock[0] += step_ms
                if rnd.random() < 0.4:
                    due = op.next_timer()
                    if due is not None and due <= clock[0]:  # as the subtask's clock calls it
                        op.on_time(clock[0])
                    ref.clock(clock[0])
                    # the clock wakes the step a grain after a key's expiry at the latest:
                    # until then it still holds the key, which reads as absent
                    held = values(op)
                    assert {k: v for k, v in held.items() if op.state[k].touched + ttl_s * 1000 > clock[0]} == {
                        k: v for k, (v, _) in ref.state.items()}, kind
                    assert all(op.state[k].touched + ttl_s * 1000 + grain(ttl_s) > clock[0] for k in held), kind
                assert feed(op, [(key, value, 0)]) == [(key, ref.record(key, value, clock[0]))], kind
            # every value held has its timer, due by its expiry, and the clock is called by then
            held = {k: e for k, e in op.state.items() if e.value is not None}
            armed = op.expiry.armed
            assert all(k in armed and armed[k] <= e.touched + ttl_s * 1000 for k, e in held.items()), kind
            assert not held or op.next_timer() <= min(armed[k] for k in held) + grain(ttl_s) - 1, kind
            assert len(op.expiry.queue) == len(armed), kind  # one pending entry per key
            clock[0] += ttl_s * 1000
            op.on_time(clock[0])
            assert values(op) == {}, kind


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_key_reads_as_never_written_before_its_timer_fires(kind):
    op = op_of(kind, TTL_S)
    assert feed(op, [("a", 1, 1_000)])  # written at 1 s: there for reads before 6 s
    second = feed(op, [("a", 2, 5_999)])
    assert second == [("a", 3)] if kind == "reduce" else second == [("a", 1)]
    # no watermark came: the key is still held, but a read at or after 10.999 s finds nothing
    third = feed(op, [("a", 3, 10_999)])
    assert third == [("a", 3)] if kind == "reduce" else third == [("a", None)]
    assert "a" in op.state


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_written_within_the_ttl_lives_on_and_costs_one_timer_per_ttl(kind):
    op = op_of(kind, TTL_S)
    for t in range(0, 20_000, 1_000):  # written every second for 20 s
        feed(op, [("a", 1, t)])
        op.on_watermark(t)
    assert values(op) == {"a": 20} if kind == "reduce" else "a" in values(op)
    assert len(op.expiry.queue) == 1  # refreshed lazily: re-armed when due, not pushed per write
    op.on_watermark(19_000 + TTL_MS - 1)
    assert "a" in op.state
    op.on_watermark(19_000 + TTL_MS)
    assert op.state == {}


def grain(ttl_s: float) -> int:
    """How much later than a key's expiry the wall clock may wake the step to remove it (ms)."""
    return min(1_000, max(10, round(ttl_s * 1000) // 10))


def test_processing_time_expires_by_the_wall_clock_and_says_when():
    with wall_clock(50_000) as clock:
        op = op_of("reduce", TTL_S, "processing")
        feed(op, [("a", 1, 0)])
        assert op.next_timer() == 55_000
        clock[0] = 54_999
        assert feed(op, [("a", 1, 0)]) == [("a", 2)]
        op.on_time(55_000)
        # re-armed: written at 54.999 s, so due at 59.999 s; the clock wakes the step at the
        # next 0.5 s (a tenth of the TTL), not once per key
        assert op.state["a"].value == 2 and op.next_timer() == 60_000
        op.on_time(59_998)
        assert "a" in op.state
        op.on_time(60_000)
        assert op.state == {} and op.next_timer() is None


def test_process_timers_keep_working_and_see_an_expired_state_as_none():
    seen = []

    def on_rec(ctx: rs.ProcessContext, value: int) -> None:
        ctx.state = value
        ctx.set_event_timer((ctx.millis + 8_000) / 1000)  # fires after the state expired (5 s)

    def on_timer(ctx: rs.ProcessContext, when: Any) -> None:
        seen.append((ctx.key, ctx.state))
        ctx.emit("timer")

    op = ttl_ops.TtlProcessOp(Step("p", StepKind.PROCESS, ("k",), fn=on_rec, on_timer=on_timer, ttl=rs.TTL(5)))
    feed(op, [("a", 1, 1_000)])
    op.on_watermark(6_000)
    assert op.state["a"].value is None and op.state["a"].event_timers == {9_000}  # the value went, the timer stays
    out, _ = untimed(op.on_watermark(9_000))
    assert list(zip(out.keys, out.values)) == [("a", "timer")] and seen == [("a", None)]
    assert op.state == {}


def test_a_user_timer_due_after_the_ttl_sees_none_even_before_the_cleanup():
    seen = []

    def on_rec(ctx: rs.ProcessContext, value: int) -> None:
        ctx.state = value
        ctx.set_event_timer((ctx.millis + TTL_MS) / 1000)  # due at the same time as the TTL

    op = ttl_ops.TtlProcessOp(Step("p", StepKind.PROCESS, ("k",), fn=on_rec,
                                   on_timer=lambda ctx, when: seen.append(ctx.state), ttl=rs.TTL(TTL_S)))
    feed(op, [("a", 1, 1_000)])
    op.on_watermark(1_000 + TTL_MS)
    assert seen == [None] and op.state == {}


def test_emit_last_with_a_ttl():
    op = op_of("reduce", TTL_S, emit="last")
    assert feed(op, [("a", 1, 1_000), ("b", 1, 1_000), ("a", 2, 1_500)]) == [("b", 1), ("a", 3)]
    assert feed(op, [("a", 1, 6_500), ("a", 1, 6_600)]) == [("a", 2)]  # a expired at 6 s for these records


def test_a_failing_record_changes_nothing_and_the_rest_go_on():
    errors = []
    step = Step("r", StepKind.REDUCE, ("k",), fn=lambda a, b: a + b if b else 1 / 0, ttl=rs.TTL(TTL_S))
    op = ttl_ops.TtlReduceOp(step)
    op.on_error = lambda step_id, record, exc: errors.append(record)
    assert feed(op, [("a", 1, 1_000), ("a", 0, 1_100), ("a", 2, 1_200)]) == [("a", 1), ("a", 3)]
    assert errors == [("a", 0)] and op.state["a"].touched == 1_200


# --- the definition -------------------------------------------------------------------

def test_definition():
    assert rs.TTL(dt.timedelta(minutes=1)).ms == 60_000 and rs.TTL(2.5, time="processing").ms == 2_500
    with pytest.raises(JobDefinitionError, match="TTL time must be 'event' or 'processing'"):
        rs.TTL(5, time="ingestion")
    job = rs.Job("defs")
    keyed = job.source("s", rs.sources.SequenceSource(10)).key_by("k", lambda x: x)
    with pytest.raises(JobDefinitionError, match="step 'r': TTL duration must be at least 1 ms"):
        keyed.reduce("r", operator.add, ttl=0)
    with pytest.raises(JobDefinitionError, match="TTL duration must be a timedelta or a number of seconds"):
        keyed.stateful_map("m", remember, ttl="1h")
    with pytest.raises(JobDefinitionError, match="TTL duration must be at most 1,000 years"):
        keyed.process("p", on_record, ttl=rs.TTL(1e12))
    with pytest.raises(JobDefinitionError, match="reduce needs a keyed stream"):
        job.source("t", rs.sources.SequenceSource(10)).reduce("r2", operator.add, ttl=5)
    keyed.reduce("r", operator.add, ttl=60).sink("out", rs.sinks.CollectSink())
    assert job.steps["r"].ttl == rs.TTL(60)
    with pytest.raises(JobDefinitionError, match="has a TTL by event time, but its input has none"):
        job.validate()
    ok = rs.Job("ok")
    keyed = ok.source("s", rs.sources.SequenceSource(10)).key_by("k", lambda x: x % 3)
    keyed.reduce("r", operator.add, ttl=rs.TTL(60, time="processing"), emit="last").sink("o1", rs.sinks.CollectSink())
    keyed.process("p", on_record, on_timer=lambda c, w: None, ttl=rs.TTL(60, time="processing")) \
        .sink("o2", rs.sinks.CollectSink())
    ok.validate()
    assert ok.steps["r"].emit == "last" and ok.steps["p"].on_timer is not None and ok.steps["p"].ttl.ms == 60_000


def test_the_key_count_stays_bounded_over_a_long_run():
    """The gauge's figure (KeyedOp.state_keys): one new key per 100 ms of event time and a
    TTL of 5 s hold about 50 to 65 keys however long the stream runs; without a TTL, all."""
    rnd = random.Random(7)
    with_ttl, without = op_of("stateful_map", TTL_S), op_of("stateful_map")
    for n in range(5_000):
        t = n * 100
        key = n if rnd.random() < 0.9 else rnd.randrange(max(n, 1))
        for op in (with_ttl, without):
            feed(op, [(key, 1, t)])
            if n % 10 == 0:
                op.on_watermark(t - 500)
        # the keys written within the TTL and the watermark's lag behind them (0.5 to 1.5 s)
        assert with_ttl.state_keys() <= (TTL_MS + 1_500) // 100 + 1
    assert without.state_keys() > 4_000
