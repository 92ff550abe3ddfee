"""Window steps without Ray: records and watermarks scripted, windows compared."""
from __future__ import annotations

import operator

import pytest

from raystream._runtime.operators import windows as windowing
from raystream._runtime.transport.batch import KeyedBatch, Timed, untimed
from raystream._runtime.operators.windows import JoinOp, WindowOp
from raystream._runtime.time.watermarks import MAX_TIME
from raystream.errors import JobDefinitionError
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Aggregator, Session, Sliding, Tumbling, WindowResult


def window_op(assigner, fn=operator.add, how="reduce", lateness_ms=0, kind=StepKind.WINDOW) -> WindowOp:
    assigner.check("w")
    step = Step("w", kind, ("in",), fn=fn, window=WindowSpec(assigner, lateness_ms, how))
    return (JoinOp if kind is StepKind.JOIN else WindowOp)(step)


def feed(op: WindowOp, records: list[tuple]) -> list[tuple]:
    """records: (key, value, time ms); returns (key, start s, end s, value, update, time) fired."""
    keys, values, times = zip(*records) if records else ((), (), ())
    return results(op.process(Timed(KeyedBatch(list(keys), list(values)), list(times))))


def results(batch) -> list[tuple]:
    if not len(batch):
        return []
    inner, times = untimed(batch)
    out = []
    for k, v, t in zip(inner.keys, inner.values, times):
        if isinstance(v, WindowResult):
            out.append((k, v.start.timestamp(), v.end.timestamp(), v.value, v.update, t))
        else:
            out.append((k, v, t))
    return out


def test_tumbling_windows_fire_when_the_watermark_passes_their_end_with_the_end_as_time():
    op = window_op(Tumbling(10))
    assert feed(op, [("a", 1, 1_000), ("a", 2, 9_999), ("b", 5, 3_000), ("a", 4, 10_000)]) == []
    assert results(op.on_watermark(9_998)) == []
    assert results(op.on_watermark(9_999)) == [("a", 0, 10, 3, False, 9_999), ("b", 0, 10, 5, False, 9_999)]
    assert results(op.on_watermark(MAX_TIME)) == [("a", 10, 20, 4, False, 19_999)]
    assert op.state == {}


def test_sliding_windows_hold_each_record_in_size_over_slide_windows():
    op = window_op(Sliding(10, 5))
    feed(op, [("k", 1, 7_000), ("k", 10, 12_000)])
    fired = results(op.on_watermark(MAX_TIME))
    assert [(s, e, v) for _, s, e, v, _, _ in fired] == [(0, 10, 1), (5, 15, 11), (10, 20, 10)]


def test_session_windows_merge_when_a_record_bridges_them():
    op = window_op(Session(5))
    feed(op, [("u", 1, 0), ("u", 1, 20_000)])  # two sessions: [0, 5) and [20, 25)
    assert sorted(op.state["u"]) == [(0, 5_000), (20_000, 25_000)]
    feed(op, [("u", 1, 4_000)])  # extends the first to [0, 9)
    feed(op, [("u", 1, 12_000), ("u", 1, 16_000)])  # [12, 17) then [12, 21) touches [20, 25)
    assert sorted(op.state["u"]) == [(0, 9_000), (12_000, 25_000)]
    fired = results(op.on_watermark(MAX_TIME))
    assert [(s, e, v) for _, s, e, v, _, _ in fired] == [(0, 9, 2), (12, 25, 3)]


def test_records_exactly_gap_apart_share_a_session_and_one_more_ms_apart_do_not():
    op = window_op(Session(5))
    feed(op, [("u", 1, 0), ("u", 1, 5_000)])  # [0, 5) and [5, 10) touch: one session, as in Flink
    feed(op, [("v", 1, 0)])
    feed(op, [("v", 1, 5_001)])  # [0, 5) and [5.001, 10.001): a gap between them
    assert sorted(op.state["u"]) == [(0, 10_000)]
    assert sorted(op.state["v"]) == [(0, 5_000), (5_001, 10_001)]


def test_a_record_within_the_allowed_lateness_updates_its_window_and_one_beyond_goes_to_late():
    op = window_op(Tumbling(10), lateness_ms=5_000)
    feed(op, [("a", 1, 2_000)])
    assert results(op.on_watermark(10_000)) == [("a", 0, 10, 1, False, 9_999)]
    # within the lateness (window end - 1 + 5 s > watermark): re-emitted as an update
    assert feed(op, [("a", 2, 3_000)]) == [("a", 0, 10, 3, True, 9_999)]
    assert results(op.on_watermark(14_999)) == []  # the window is dropped now
    assert op.state == {}
    assert feed(op, [("a", 7, 4_000)]) == []
    assert op.late_records == 1
    late, times = untimed(op.take_late())
    assert (late.keys, late.values, times) == (["a"], [7], [4_000])
    assert op.take_late() == []


def test_without_lateness_a_record_for_a_fired_window_is_late():
    op = window_op(Tumbling(10))
    feed(op, [("a", 1, 2_000)])
    op.on_watermark(9_999)
    assert feed(op, [("a", 1, 9_000), ("a", 1, 10_000)]) == []
    assert op.late_records == 1
    assert results(op.on_watermark(MAX_TIME)) == [("a", 10, 20, 1, False, 19_999)]


def test_aggregate_and_apply_see_the_window():
    mean = Aggregator(create=lambda: (0, 0), add=lambda acc, v: (acc[0] + v, acc[1] + 1),
                      merge=lambda a, b: (a[0] + b[0], a[1] + b[1]), result=lambda acc: acc[0] / acc[1])
    op = window_op(Session(5), fn=mean, how="aggregate")
    feed(op, [("k", 2, 0), ("k", 4, 8_000), ("k", 6, 4_000)])  # the last one merges both sessions
    assert [r[3] for r in results(op.on_watermark(MAX_TIME))] == [4.0]

    op = window_op(Tumbling(10), fn=lambda key, w, values: (key, w.start.timestamp(), sorted(values)), how="apply")
    feed(op, [("k", 3, 1_000), ("k", 1, 2_000)])
    assert [r[3] for r in results(op.on_watermark(MAX_TIME))] == [("k", 0, [1, 3])]


def test_processing_time_windows_fire_by_the_clock(monkeypatch):
    now = [100_000]
    monkeypatch.setattr(windowing, "now_ms", lambda: now[0])
    op = window_op(Tumbling(10, clock="processing"))
    assert op.process(KeyedBatch(["a", "a"], [1, 2])) == []
    assert op.next_timer() == 110_000  # a record at 109,999 ms is still in [100, 110)
    assert op.on_watermark(MAX_TIME - 1) == []  # event time does not fire it
    now[0] = 110_000
    op.process(KeyedBatch(["a"], [5]))
    fired = op.on_time(110_000)
    assert fired.keys == ["a"] and fired.values[0].value == 3  # untimed in, untimed out
    assert results(Timed(op.on_time(MAX_TIME), [0])) == [("a", 110, 120, 5, False, 0)]


def test_restored_windows_and_their_timers_fire_as_they_would_have():
    op = window_op(Tumbling(10), lateness_ms=2_000)
    feed(op, [("a", 1, 1_000), ("b", 2, 12_000)])
    op.on_watermark(10_500)  # [0, 10) of a fired, kept for lateness
    restored = window_op(Tumbling(10), lateness_ms=2_000)
    restored.restore(op.snapshot(), op.watermark)
    assert feed(restored, [("a", 1, 5_000)]) == [("a", 0, 10, 2, True, 9_999)]
    assert results(restored.on_watermark(MAX_TIME)) == [("b", 10, 20, 2, False, 19_999)]
    assert restored.state == {}


def test_a_fired_window_restored_at_an_older_watermark_does_not_fire_again():
    """Review 39: after a rescale the step starts from the oldest watermark of the old
    subtasks; a window that fired on one ahead fired again there, an update with the same
    value. Now what it takes is its update, at once, and the watermark fires it no more."""
    op = window_op(Tumbling(10), lateness_ms=5_000)
    feed(op, [("a", 1, 1_000)])
    assert results(op.on_watermark(10_500)) == [("a", 0, 10, 1, False, 9_999)]
    restored = window_op(Tumbling(10), lateness_ms=5_000)
    restored.restore(op.snapshot(), 2_000)  # the watermark of a subtask behind, as a 2 -> 1 rescale takes it
    assert results(restored.on_watermark(10_000)) == []
    assert feed(restored, [("a", 2, 3_000)]) == [("a", 0, 10, 3, True, 9_999)]
    assert results(restored.on_watermark(14_999)) == [] and restored.state == {}


def test_a_fired_session_restored_at_an_older_watermark_fires_again_only_once_extended():
    """The session kind of the test above: a fired session is marked with the end it was
    emitted at, so a restore at an older watermark does not fire it again; a record inside
    it is its update, at once; one that extends it past the watermark makes it fire again
    at its new end, also through a restore."""
    op = window_op(Session(5), lateness_ms=20_000)
    feed(op, [("a", 1, 1_000)])
    assert results(op.on_watermark(7_000)) == [("a", 1, 6, 1, False, 5_999)]
    restored = window_op(Session(5), lateness_ms=20_000)
    restored.restore(op.snapshot(), 2_000)
    assert feed(restored, [("a", 2, 1_000)]) == [("a", 1, 6, 3, True, 5_999)]  # inside it: at once
    assert results(restored.on_watermark(6_500)) == []
    assert feed(restored, [("a", 4, 5_000)]) == []  # now [1, 10): it fires at its new end
    again = window_op(Session(5), lateness_ms=20_000)
    again.restore(restored.snapshot(), restored.watermark)
    assert results(again.on_watermark(10_000)) == [("a", 1, 10, 7, True, 9_999)]
    assert results(again.on_watermark(40_000)) == [] and again.state == {}


def test_a_session_ending_at_the_epoch_keeps_its_mark():
    """The mark of a session that ends at 0 ms is still a mark (not a falsy 0)."""
    op = window_op(Session(5), lateness_ms=20_000)
    feed(op, [("a", 1, -5_000)])
    assert results(op.on_watermark(0)) == [("a", -5, 0, 1, False, -1)]
    restored = window_op(Session(5), lateness_ms=20_000)
    restored.restore(op.snapshot(), -6_000)
    assert feed(restored, [("a", 2, -5_000)]) == [("a", -5, 0, 3, True, -1)]
    assert results(restored.on_watermark(0)) == []


def test_a_session_emitted_by_raystream_0_6_2_fires_again_at_its_end_when_the_watermark_is_behind():
    """0.6.2 marked an emitted session True, also one extended past the watermark since,
    whose update is still to fire: such a mark is not taken as current."""
    restored = window_op(Session(5), lateness_ms=20_000)
    restored.restore({"a": {(1_000, 10_000): [7, True]}}, 6_500)
    assert results(restored.on_watermark(10_000)) == [("a", 1, 10, 7, True, 9_999)]


def test_a_0_6_session_mark_the_watermark_passed_is_rewritten_so_a_later_rescale_does_not_fire_it_again():
    """Review 40: 0.6's True mark of a session the watermark had passed was kept as it was,
    in every later snapshot, so a rescale after the upgrade still fired it again."""
    upgraded = window_op(Session(5), lateness_ms=20_000)
    upgraded.restore({"a": {(1_000, 6_000): [1, True]}}, 7_000)
    assert upgraded.snapshot()["a"][(1_000, 6_000)][1] == (6_000,)
    assert upgraded.changed_state()[0] == upgraded.snapshot()  # in the next incremental snapshot too (I1)
    rescaled = window_op(Session(5), lateness_ms=20_000)
    rescaled.restore(upgraded.snapshot(), 2_000)
    assert results(rescaled.on_watermark(6_500)) == []


def test_sessions_merged_after_a_restore_behind_are_emitted_when_either_step_would():
    """Review 40: two fired sessions restored at an older watermark and bridged by a
    record took the mark of the first one the step met: the per-record step emitted the
    merged session at once, the columnar one at its end. The part emitted at the merged
    end makes it current, in both."""
    op = window_op(Session(5), lateness_ms=30_000)
    feed(op, [("a", 1, 1_000), ("a", 2, 10_000)])  # [1, 6) and [10, 15)
    assert len(results(op.on_watermark(16_000))) == 2
    restored = window_op(Session(5), lateness_ms=30_000)
    restored.restore(op.snapshot(), 2_000)
    assert feed(restored, [("a", 4, 5_000)]) == [("a", 1, 15, 7, True, 14_999)]  # bridges both: at once
    assert results(restored.on_watermark(16_000)) == []


def test_window_join_emits_every_pair_of_a_key_and_window():
    op = window_op(Tumbling(10), fn=lambda left, right: (left, right), how="join", kind=StepKind.JOIN)
    op.process_side(Timed(KeyedBatch([1, 1, 2], ["p1", "p1b", "p2"]), [1_000, 2_000, 3_000]), 0)
    op.process_side(Timed(KeyedBatch([1, 2], ["a1", "a2"]), [5_000, 15_000]), 1)
    fired = results(op.on_watermark(MAX_TIME))
    # key 2 has no pair within one window
    assert sorted(fired) == [(1, 0, 10, ("p1", "a1"), False, 9_999), (1, 0, 10, ("p1b", "a1"), False, 9_999)]


@pytest.mark.parametrize("assigner, message", [
    (Tumbling(-5), "the window size must be more than 0"),
    (Sliding(10, 20), "slide (20s) is larger than its size (10s)"),
    (Session(0), "the session gap must be more than 0"),
    (Tumbling(10, clock="wall"), "clock must be 'event' or 'processing'"),
])
def test_invalid_windows_are_refused_naming_the_step(assigner, message):
    with pytest.raises(JobDefinitionError, match="step 'hourly'") as err:
        assigner.check("hourly")
    assert message in str(err.value)
