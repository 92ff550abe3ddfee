"""Watermarks, timers and the chain's clock without Ray."""
from __future__ import annotations

import datetime as dt
import operator
import random
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.transport.batch import KeyedBatch, Timed, untimed
from raystream._runtime.transport.channel import BATCH, WATERMARK
from raystream._runtime.subtask.clock import ChainClock
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.operators.process import ProcessOp
from raystream._runtime.operators.event_time import AssignTimeOp
from raystream._runtime.time.watermarks import GREATEST, IDLE, MAX_TIME, MIN_TIME, InputWatermarks, WatermarkGenerator
from raystream._runtime.operators.windows import WindowOp
from raystream.errors import JobDefinitionError
from raystream.event_time import EventTime, to_millis
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Sliding, Tumbling


def test_timestamps_are_aware_datetimes_or_epoch_seconds():
    assert to_millis(dt.datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=dt.timezone.utc)) == 1_500
    assert to_millis(2.25) == 2_250
    with pytest.raises(TypeError, match="naive datetime"):
        to_millis(dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="timezone-aware datetime or seconds since the epoch; got str"):
        to_millis("2026-01-01")


def test_a_timestamp_function_returning_a_non_time_fails_naming_its_step():
    gen = WatermarkGenerator(EventTime(lambda r: r), [""])
    op = AssignTimeOp(Step("stamp", StepKind.EVENT_TIME, ("in",)), EventTime(lambda r: r["t"]), gen)
    with pytest.raises(RecordFailure) as err:
        op.process([{"t": 1.0}, {"t": "yesterday"}])
    assert err.value.step_id == "stamp" and "got str 'yesterday'" in err.value.error
    bad = []
    op.on_error = lambda step, record, exc: bad.append(record)
    out = op.process([{"t": 1.0}, {"t": None}, {"t": 3}])
    assert out.times == [1_000, 3_000] and bad == [{"t": None}]


def test_generator_trails_the_newest_time_by_the_delay_per_partition_and_skips_idle_ones():
    gen = WatermarkGenerator(EventTime(lambda r: r, max_delay=2, idle_after=10), ["p0", "p1"])
    assert gen.watermark(now=0) == MIN_TIME
    gen.observe("p0", [5_000, 9_000])
    gen.observe("p1", [4_000])
    assert gen.watermark() == 1_999  # min(9 - 2, 4 - 2) s, less 1 ms: more may come at 4 s
    assert 9 < gen.idle_deadline() - time.monotonic() <= 10
    gen.seen_at["p1"] -= 11  # p1 has been silent for 11 s: idle
    assert gen.watermark() == 6_999
    assert gen.idle_deadline() == gen.seen_at["p0"] + 10  # only p0 can still become idle
    gen.seen_at["p0"] -= 11
    assert gen.watermark() is IDLE and gen.idle_deadline() is None  # nothing to wake up for
    gen.end_all()
    assert gen.watermark() == MAX_TIME


def test_a_source_partition_is_idle_only_after_polls_found_it_empty_for_idle_after():
    """A source's generator counts idleness from the first of the polls in a row that found
    a partition empty, never from its last records: between two polls of a partition lies
    the time the subtask spent on the others' batches (review of stop 34: 65,536-row batches
    through a slow chain made a partition with records idle, and its rows came late)."""
    gen = WatermarkGenerator(EventTime(lambda r: r, max_delay=2, idle_after=10), ["p0", "p1"], polled=True)
    gen.observe("p0", [9_000])
    gen.observe("p1", [4_000])
    assert gen.watermark(now=time.monotonic() + 60) == 1_999  # a minute on others' batches: still active
    assert gen.idle_deadline() is None  # nothing can become idle before a poll finds it empty
    gen.polled_empty(["p1"])
    first_empty = gen.seen_at["p1"]
    gen.polled_empty(["p1"])  # a later empty poll does not restart the count
    assert gen.seen_at["p1"] == first_empty and gen.idle_deadline() == first_empty + 10
    assert gen.watermark(now=first_empty + 9) == 1_999 and gen.watermark(now=first_empty + 10) == 6_999
    gen.observe("p1", [5_000])  # records again: active, whatever the clock says
    assert gen.watermark(now=first_empty + 60) == 2_999


def test_partitions_going_idle_together_send_their_watermark_before_idle():
    """A subtask read its partitions' last records in one round, while one partition that
    never had any was not idle yet; all went idle together, and IDLE went out with the
    watermark of the records never sent: downstream windows waited for ever (CI of stop 35,
    the Kafka idle-partition test, 1 run in 4). Now the greatest watermark of the idle
    partitions goes first, as Flink's watermark valve does."""
    event_time = EventTime(lambda r: r, max_delay=1, idle_after=0.5)
    gen = WatermarkGenerator(event_time, ["p0", "p1", "p2"], polled=True)
    stamp = AssignTimeOp(Step("stamp", StepKind.EVENT_TIME, ("in",)), event_time, gen)
    clock = ChainClock([stamp], 0, gen, 0, 0.2)
    gen.polled_empty(["p2"])  # round 1: p2 has nothing; p0 and p1 their last records
    stamp.partition = "p0"
    stamp.process([3.0, 4.0])
    stamp.partition = "p1"
    stamp.process([7.0])
    assert clock.tick() == []  # p2 is not idle yet: it holds the watermark at its minimum
    gen.polled_empty(["p0", "p1"])  # round 2: nothing anywhere, from now on
    for p in gen.seen_at:
        gen.seen_at[p] -= 1  # half a second later, every partition is idle
    assert gen.watermark() is IDLE
    assert clock.tick(force=True) == [(WATERMARK, 5_999), (WATERMARK, IDLE)]  # the greatest: p1's
    assert clock.tick(force=True) == []
    stamp.partition = "p0"
    stamp.process([5.0])  # records again: active, from the watermark sent (p0's 3_999 is behind it)
    assert clock.tick(force=True) == [(WATERMARK, 5_999)]


def test_after_a_restore_partitions_quiet_together_send_the_greatest_watermark():
    """Idleness is not in checkpoints: after a restore every partition goes quiet in the
    first round, the one that was idle (or never had records) before the failure too; the
    windows the others completed fire as they did without the failure (review of stop 36:
    the minimum over them all sent nothing, and no window fired after a SIGKILL)."""
    event_time = EventTime(lambda r: r, max_delay=0, idle_after=4)
    gen = WatermarkGenerator(event_time, ["a", "e"], polled=True)
    gen.restore({"a": 3_000})  # e never had a record
    clock = ChainClock([AssignTimeOp(Step("s", StepKind.EVENT_TIME, ("in",)), event_time, gen)], 0, gen, 0, 0.2)
    gen.polled_empty(["a", "e"])
    for p in gen.seen_at:
        gen.seen_at[p] -= 4
    assert clock.tick(force=True) == [(WATERMARK, 2_999), (WATERMARK, IDLE)]


def test_a_restored_event_time_step_goes_idle_at_the_newest_time_of_the_subtasks_it_took_over():
    """It restores the oldest of their times (a newer one would make its records late) and
    the newest (GREATEST): idle, it goes there, as the old subtasks all would have (review
    of stop 36: after a kill at the same parallelism no window fired)."""
    event_time = EventTime(lambda r: r, max_delay=0, idle_after=4)
    gen = WatermarkGenerator(event_time, [""])
    gen.restore({"": 1_000, GREATEST: 3_000})
    assert gen.watermark() == 999 and gen.snapshot() == {"": 1_000, GREATEST: 3_000}
    gen.seen_at[""] -= 4
    assert gen.watermark() is IDLE and gen.watermark_when_idle() == 2_999
    gen.observe("", [5_000])
    assert gen.snapshot() == {"": 5_000}  # its own time is ahead now


def test_inputs_all_idle_send_the_greatest_of_their_watermarks_before_idle():
    """As the generator: one input subtask went idle with its watermark, the other never had
    one; when the second goes idle too, the first's watermark fires the windows."""
    window = WindowOp(Step("w", StepKind.WINDOW, ("k",), fn=operator.add, window=WindowSpec(_checked(Tumbling(1)))))
    value = build_operator(Step("v", StepKind.MAP, ("w",), fn=lambda kv: (kv[0], kv[1].value)))
    window.process(_timed_keyed(["a"], [1], [500]))
    clock = ChainClock([window, value], 2, None, None, 0.2)
    assert clock.on_input(0, 2_999) == []  # channel 1 holds it at the minimum
    assert clock.on_input(0, IDLE) == []
    out = clock.on_input(1, IDLE)
    assert [kind for kind, _ in out] == [BATCH, WATERMARK, WATERMARK]
    assert untimed(out[0][1])[0] == [("a", 1)] and out[1][1] == 2_999 and out[2][1] is IDLE
    # an input active again below that: the subtask says it is active (at its watermark), or
    # downstream goes on without it and its records come late (review of stop 36)
    assert clock.on_input(1, 1_999) == [(WATERMARK, 2_999)]
    assert clock.on_input(1, 2_500) == []
    assert clock.on_input(1, 3_999) == [(WATERMARK, 3_999)]  # channel 0 is still idle


def test_input_watermark_is_the_minimum_over_active_channels_and_never_goes_back():
    marks = InputWatermarks(3)
    assert marks.on_watermark(0, 10) is False
    assert marks.on_watermark(1, 20) is False
    assert marks.on_watermark(2, 5) == 5
    assert marks.on_watermark(2, IDLE) == 10  # an idle channel does not hold the others back
    assert marks.on_watermark(2, 7) is False  # active again, but behind: no step back
    marks.on_end(2)
    assert marks.on_watermark(0, 30) == 20
    assert marks.on_watermark(0, IDLE) is False and marks.on_watermark(1, IDLE) is IDLE


def _timed_keyed(keys, values, times):
    return Timed(KeyedBatch(list(keys), list(values)), list(times))


def test_chain_clock_fires_windows_then_forwards_the_watermark_after_their_results():
    window = WindowOp(Step("w", StepKind.WINDOW, ("k",), fn=operator.add, window=WindowSpec(_checked(Tumbling(10)))))
    double = build_operator(Step("double", StepKind.MAP, ("w",), fn=lambda kv: (kv[0], kv[1].value * 2)))
    clock = ChainClock([window, double], 2, None, None, 0.2)
    window.process(_timed_keyed(["a", "a"], [1, 2], [1_000, 2_000]))
    assert clock.on_input(0, 12_000) == []  # channel 1 holds it back
    out = clock.on_input(1, 11_000)
    assert [kind for kind, _ in out] == [BATCH, WATERMARK]
    assert untimed(out[0][1])[0] == [("a", 6)] and out[1][1] == 11_000
    assert clock.on_input(1, IDLE) == [(WATERMARK, 12_000)]
    assert clock.on_input(0, IDLE) == [(WATERMARK, IDLE)]


def test_a_generator_in_the_chain_stops_upstream_watermarks_and_sends_its_own():
    event_time = EventTime(lambda r: r, max_delay=1)
    gen = WatermarkGenerator(event_time, [""])
    stamp = AssignTimeOp(Step("stamp", StepKind.EVENT_TIME, ("in",)), event_time, gen)
    clock = ChainClock([stamp], 1, gen, 0, 0.0)
    assert clock.on_input(0, 50_000) == []  # not forwarded: the generator makes the watermark now
    stamp.process([3.0, 7.5])
    assert clock.tick() == [(WATERMARK, 6_499)]
    assert clock.tick() == []
    assert clock.on_input(0, MAX_TIME) == [(WATERMARK, MAX_TIME)]  # the end passes through


def _checked(assigner):
    assigner.check("w")
    return assigner


def test_process_step_timers_fire_per_key_and_survive_a_restore():
    def on_record(ctx, value):
        ctx.state = (ctx.state or 0) + value
        ctx.set_event_timer(ctx.timestamp + dt.timedelta(seconds=5))

    def on_timer(ctx, when):
        if ctx.state is not None:  # the first timer of a burst closes it; later ones find nothing
            ctx.emit(("closed", ctx.state))
            ctx.state = None

    step = Step("sessions", StepKind.PROCESS, ("k",), fn=on_record, on_timer=on_timer)
    op = ProcessOp(step)
    op.process(_timed_keyed(["a", "b", "a"], [1, 10, 2], [1_000, 2_000, 3_000]))
    assert sorted(op.state["a"].event_timers) == [6_000, 8_000]
    restored = ProcessOp(step)
    restored.restore(op.snapshot(), op.watermark)
    fired = restored.on_watermark(7_000)
    assert (fired.batch.keys, fired.batch.values, fired.times) == (["a", "b"], [("closed", 3), ("closed", 10)],
                                                                 [6_000, 7_000])
    assert list(restored.state) == ["a"] and restored.state["a"].event_timers == {8_000}
    assert restored.on_watermark(MAX_TIME) == [] and restored.state == {}


def test_a_failing_process_call_changes_nothing():
    def on_record(ctx, value):
        ctx.state = value
        ctx.set_processing_timer(1e12)
        ctx.emit(value)
        if value < 0:
            raise ValueError("negative")

    op = ProcessOp(Step("p", StepKind.PROCESS, ("k",), fn=on_record))
    failed = []
    op.on_error = lambda step, record, exc: failed.append(record)
    out = op.process(KeyedBatch(["a", "b"], [1, -1]))
    assert out.keys == ["a"] and list(op.state) == ["a"] and failed == [("b", -1)]
    assert op.next_timer() == 1e15


def test_definition_errors_name_the_step():
    job = rs.Job("defs")
    plain = job.source("plain", rs.sources.SequenceSource(10))
    with pytest.raises(JobDefinitionError, match="step 'hourly' windows by event time, but its input has none"):
        out = plain.key_by("k", lambda x: x).window(Tumbling(60)).reduce("hourly", operator.add)
        out.sink("s", rs.sinks.CollectSink())
        job.validate()
    job = rs.Job("defs2")
    timed = job.source("timed", rs.sources.SequenceSource(10), event_time=EventTime(float))
    plain = job.source("plain", rs.sources.SequenceSource(10))
    timed.union(plain).sink("s", rs.sinks.CollectSink())
    with pytest.raises(JobDefinitionError, match="step 's' takes streams with and without event time"):
        job.validate()
    with pytest.raises(JobDefinitionError, match="EventTime max_delay must be at least 0"):
        EventTime(float, max_delay=-1)


# --- property: windowed sums equal sums computed from the input ---------------------------

@st.composite
def disordered_partitions(draw):
    """2-3 partitions of (key, amount, time ms) whose times are out of order by at most 3 s."""
    parts = []
    for _ in range(draw(st.integers(2, 3))):
        n = draw(st.integers(0, 60))
        base = sorted(draw(st.lists(st.integers(0, 100_000), min_size=n, max_size=n)))
        jitter = draw(st.lists(st.integers(0, 3_000), min_size=n, max_size=n))
        keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
        parts.append([(k, 1 + t % 7, t + j) for k, t, j in zip(keys, base, jitter)])
    return parts


@settings(max_examples=60, deadline=None)
@given(parts=disordered_partitions(), size=st.sampled_from([1_000, 5_000, 30_000]), sliding=st.booleans(),
       seed=st.integers(0, 10**6))
def test_windowed_sums_equal_direct_sums_whatever_the_interleaving(parts, size, sliding, seed):
    """Each partition feeds its own channel with its own watermark (delay 3 s >= disorder),
    interleaved at random; nothing is late, and every window fires once with its sum."""
    rng = random.Random(seed)
    slide = size // 2 if sliding else size
    assigner = Sliding(size / 1000, slide / 1000) if sliding else Tumbling(size / 1000)
    window = WindowOp(Step("w", StepKind.WINDOW, ("k",), fn=operator.add, window=WindowSpec(_checked(assigner))))
    clock = ChainClock([window], len(parts), None, None, 0.0)
    gens = [WatermarkGenerator(EventTime(float, max_delay=3), [""]) for _ in parts]
    cursors = [0] * len(parts)
    fired = []

    def collect(messages):
        for kind, payload in messages:
            if kind == BATCH and len(payload):
                inner, _ = untimed(payload)
                fired.extend(zip(inner.keys, inner.values))

    while any(c < len(p) for c, p in zip(cursors, parts)):
        c = rng.choice([i for i, p in enumerate(parts) if cursors[i] < len(p)])
        take = parts[c][cursors[c]:cursors[c] + rng.randint(1, 5)]
        cursors[c] += len(take)
        collect([(BATCH, window.process(_timed_keyed(*zip(*take))))])
        gens[c].observe("", [t for _, _, t in take])
        collect(clock.on_input(c, gens[c].watermark()))
    for c in range(len(parts)):
        collect(clock.on_input(c, MAX_TIME))
    expected = Counter()
    for part in parts:
        for key, amount, t in part:
            start = t - t % slide
            while start > t - size:
                expected[(key, start)] += amount
                start -= slide
    got = Counter()
    for key, result in fired:
        got[(key, to_millis(result.start))] += result.value
    assert window.late_records == 0
    assert got == expected and len(fired) == len(expected)


def test_keyed_steps_on_a_stream_that_is_not_keyed_say_to_key_it_first():
    stream = rs.Job("unkeyed").source("s", rs.sources.SequenceSource(3))
    with pytest.raises(JobDefinitionError, match="step 'p': process needs a keyed stream"):
        stream.process("p", print)
    with pytest.raises(JobDefinitionError, match="window needs a keyed stream"):
        stream.window(Tumbling(1))
    with pytest.raises(JobDefinitionError, match="step 'j': join needs two keyed streams"):
        stream.join("j", stream, Tumbling(1), print)
