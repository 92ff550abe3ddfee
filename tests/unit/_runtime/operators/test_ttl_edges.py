"""State time-to-live without Ray, at its edges (raystream/_runtime/operators/ttl.py,
time/expiry.py): a read never removes a value; one pending cleanup timer per key however
often it is deleted and written again; the end of a bounded input expires every key,
whatever timers write then; a processing-time timer's write under an event-time TTL."""
from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.operators import ttl as ttl_ops
from raystream._runtime.state.changelog import DELETED
from raystream._runtime.subtask.clock import ChainClock
from raystream._runtime.time.timers import now_ms
from raystream._runtime.time.watermarks import MAX_TIME
from raystream.graph import Step, StepKind
from raystream.process import KeyState
from tests.helpers.keyed import feed
from tests.helpers.ttl import TTL_MS, TTL_S, changelog_after_full, op_of, wall_clock


def process_op(on_record: Any, on_timer: Any = None, ttl: Any = TTL_S, clock: str = "event") -> Any:
    step = Step("p", StepKind.PROCESS, ("k",), fn=on_record, on_timer=on_timer, ttl=rs.TTL(ttl, time=clock))
    return ttl_ops.TtlProcessOp(step)


# --- a read changes nothing -----------------------------------------------------------

def read_or_write(ctx: rs.ProcessContext, value: str) -> None:
    if value == "boom":
        ctx.state  # noqa: B018 - read, then fail
        raise ValueError("boom")
    if value == "w":
        ctx.state = "v"
    ctx.emit(ctx.state)


def test_a_process_read_of_an_expired_key_leaves_it_for_earlier_records():
    errors = []
    op = process_op(read_or_write)
    op.on_error = lambda step_id, record, exc: errors.append(record)
    feed(op, [("a", "w", 1_000)])  # there for reads before 6 s
    assert feed(op, [("a", "r", 10_000)]) == [("a", None)]  # expired for a read at 10 s
    assert feed(op, [("a", "boom", 10_000)]) == [] and errors == [("a", "boom")]
    # no watermark yet: a record at 2 s is not late, and reads the key's newest write
    assert feed(op, [("a", "r", 2_000)]) == [("a", "v")]
    assert op.state["a"].value == "v" and op.state["a"].touched == 1_000
    # the timer removes it, and the next incremental snapshot holds the deletion
    log = changelog_after_full(op)
    op.on_watermark(5_999)
    assert "a" in op.state
    op.on_watermark(6_000)
    assert op.state == {}
    keyed, changes, _ = log.capture([op])
    assert changes and list(keyed[op.step_id][1]) == ["a"]


# --- one cleanup timer per key --------------------------------------------------------

def toggle_map(state: Any, value: int) -> tuple[Any, Any]:
    """stateful_map: deletes the key when it has a state, writes it when not."""
    return (None if state is not None else value), state


def toggle_process(ctx: rs.ProcessContext, value: int) -> None:
    ctx.state = None if ctx.state is not None else value


@pytest.mark.parametrize("kind", ["stateful_map", "process"])
def test_deleting_and_writing_a_key_again_keeps_one_cleanup_timer(kind):
    long_ttl = 1000 * 365 * 86_400  # never due in this test: nothing drains the queue
    if kind == "process":
        op = process_op(toggle_process, ttl=long_ttl)
    else:
        op = ttl_ops.TtlStatefulMapOp(Step("m", StepKind.STATEFUL_MAP, ("k",), fn=toggle_map, ttl=rs.TTL(long_ttl)))
    for n in range(2_000):
        feed(op, [("a", n, n * 10)])
        if n % 100 == 0:
            op.on_watermark(n * 10 - 1)
    assert op.state_keys() == 0 and len(op.expiry.queue) == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 200)), max_size=120), st.randoms(use_true_random=False))
def test_the_cleanup_queue_holds_one_entry_per_key_held_or_written_within_the_ttl(events, rnd):
    """events: (key, ms the event time moves on); the keys are deleted and written again at
    random, the watermark follows some records."""
    op = ttl_ops.TtlStatefulMapOp(Step("m", StepKind.STATEFUL_MAP, ("k",), fn=toggle_map, ttl=rs.TTL(1)))
    t, watermark, newest = 0, -1, {}
    for key, step_ms in events:
        t += step_ms
        feed(op, [(key, 1, t)])
        newest[key] = t
        if rnd.random() < 0.3:
            watermark = max(watermark, t - rnd.randint(0, 1_500))
            op.on_watermark(watermark)
        recent = {k for k, w in newest.items() if w + 1_000 > watermark}
        assert len(op.expiry.queue) == len(op.expiry.armed) <= len(set(op.state) | recent)


def test_a_key_written_again_earlier_waits_for_its_timer_and_late_records_read_at_the_watermark():
    op = ttl_ops.TtlStatefulMapOp(Step("m", StepKind.STATEFUL_MAP, ("k",), fn=toggle_map, ttl=rs.TTL(TTL_S)))
    feed(op, [("a", 1, 9_000), ("a", 2, 9_100), ("a", 3, 1_000)])  # written, deleted, written at 1 s
    assert op.expiry.armed == {"a": 9_000 + TTL_MS}  # the timer of the first life stays the only one
    op.on_watermark(7_000)  # past 1 s + TTL: expired, still held until that timer
    assert op.state["a"].value == 3 and len(op.expiry.queue) == 1
    # a late record at 2 s reads as at the watermark: absent, as if the timer had removed it
    assert feed(op, [("a", 4, 2_000)]) == [("a", None)]
    op.on_watermark(9_000 + TTL_MS)
    assert op.state_keys() == 0 and len(op.expiry.queue) == 0


# --- the end of a bounded input ---------------------------------------------------------

def end_of_input(op: Any) -> None:
    """As a subtask's clock ends a bounded input (MAX_TIME through the chain)."""
    ChainClock([op], 0, None, None, 0.2).end_of_input()


def write_in_timer(ctx: rs.ProcessContext, when: Any) -> None:
    ctx.state = f"written by a {ctx.clock} timer"


def arm_both_timers(ctx: rs.ProcessContext, value: int) -> None:
    ctx.state = value
    if ctx.millis < 10**12:  # not for a time near MAX_TIME, past which a timer cannot be set
        ctx.set_event_timer((ctx.millis + 3_600_000) / 1000)
    ctx.set_processing_timer((now_ms() + 3_600_000) / 1000)  # an hour away: only the end fires it


@pytest.mark.parametrize("clock", ["event", "processing"])
def test_the_end_of_input_removes_every_value_after_the_timers_wrote(clock):
    op = process_op(arm_both_timers, write_in_timer, clock=clock)
    feed(op, [("a", 1, 1_000), ("b", 2, MAX_TIME - 1_000)])  # b's time is within a TTL of the end
    log = changelog_after_full(op)
    end_of_input(op)
    assert op.state == {} and len(op.expiry.queue) == 0 and op.next_timer() is None
    keyed, changes, _ = log.capture([op])
    assert changes and sorted(keyed[op.step_id][1]) == ["a", "b"]


@pytest.mark.parametrize("kind", ["reduce", "stateful_map"])
def test_the_end_of_input_removes_a_value_written_within_a_ttl_of_it(kind):
    op = op_of(kind, TTL_S)
    feed(op, [("a", 1, MAX_TIME - 1_000), ("b", 1, 1_000)])
    end_of_input(op)
    assert op.state == {} and op.written == {"a": DELETED, "b": DELETED}


def test_a_key_restored_without_a_time_is_removed_at_the_end_of_input():
    op = op_of("stateful_map", TTL_S)
    op.restore_meta([])
    op.restore({"x": 7}, None)  # from the step without a TTL: counts from the first watermark
    end_of_input(op)
    assert op.state == {} and op.written == {"x": DELETED}


def test_a_processing_time_restored_from_the_future_counts_as_written_at_the_restore():
    with wall_clock(100_000):
        op = process_op(read_or_write, clock="processing")
        op.restore_meta([{"ttl_time": "processing", "ttl_ms": TTL_MS}])
        op.restore({"a": KeyState("v", touched=MAX_TIME), "b": KeyState("w", touched=99_000)}, None)
        assert op.state["a"].touched == 100_000 and op.state["b"].touched == 99_000
        assert op.changed == {"a"} and op.expiry.armed == {"a": 100_000 + TTL_MS, "b": 99_000 + TTL_MS}


# --- a processing-time timer's write under an event-time TTL ----------------------------

def arm_soon(ctx: rs.ProcessContext, value: str) -> None:
    if value == "arm":
        ctx.set_processing_timer(1)  # 1 s after the epoch: due at the next tick of the clock
    ctx.emit(ctx.state)


def test_a_processing_timer_write_counts_at_its_keys_newest_event_time():
    op = process_op(arm_soon, write_in_timer, ttl=3_600)
    feed(op, [("a", "arm", 1_000)])  # no watermark yet
    assert op.state["a"].seen == 1_000
    op.on_time(now_ms())
    assert op.state["a"].touched == 1_000  # the key's newest call, not the watermark (MIN_TIME)
    assert op.state["a"].seen is None  # kept only while the key has processing-time timers
    assert feed(op, [("a", "read", 2_000)]) == [("a", "written by a processing timer")]
    # a watermark past the key's calls counts instead
    feed(op, [("b", "arm", 3_000)])
    op.on_watermark(10_000)
    op.on_time(now_ms())
    assert op.state["b"].touched == 10_000
    # each key's own time, whatever other keys (on this subtask or not) got: the key's
    # newest call, also across a snapshot
    feed(op, [("c", "arm", 50_000), ("d", "arm", 12_000), ("c", "read", 40_000)])
    restored = process_op(arm_soon, write_in_timer, ttl=3_600)
    restored.restore_meta([op.state_meta()])
    restored.restore(pickle.loads(pickle.dumps(op.snapshot())), op.watermark)
    restored.on_time(now_ms())  # before any record of the restored run
    assert restored.state["c"].touched == 50_000 and restored.state["d"].touched == 12_000


def test_a_processing_timer_write_before_any_event_time_counts_from_the_first_watermark():
    # restored from the step without a TTL: a value and a due processing timer, no times
    op = process_op(arm_soon, write_in_timer)
    op.restore_meta([])
    op.restore({"a": KeyState("old", processing_timers={1_000})}, None)
    op.on_time(now_ms())
    assert op.state["a"].value == "written by a processing timer" and op.state["a"].touched is None
    assert feed(op, [("a", "read", 2_000)]) == [("a", "written by a processing timer")]
    op.on_watermark(7_000)
    assert op.state["a"].touched == 7_000 and "a" in op.changed
    op.on_watermark(7_000 + TTL_MS)
    assert op.state == {}


def read_or_write_and_arm(ctx: rs.ProcessContext, value: str) -> None:
    arm_soon(ctx, value)
    if value == "w":
        ctx.state = "v"


def test_a_processing_timer_write_counts_from_the_keys_newest_write_if_later():
    op = process_op(read_or_write_and_arm, write_in_timer, ttl=3_600)
    feed(op, [("a", "w", 90_000), ("a", "arm", 0)])  # written at 90 s; the timer set at 0 s
    assert op.state["a"].seen == 0
    op.on_time(now_ms())
    assert op.state["a"].touched == 90_000


def test_a_late_records_write_lives_a_ttl_from_the_watermark():
    """Re-review: a late record read at the watermark but wrote at its own time, more than
    a TTL behind it, so its write was expired at once: three late records each started over."""
    op = op_of("reduce", 5)
    op.on_watermark(100_000)
    assert feed(op, [("a", 1, 10_000), ("a", 1, 10_000), ("a", 1, 10_000)]) == [("a", 1), ("a", 2), ("a", 3)]
    assert op.state["a"].touched == 100_000
