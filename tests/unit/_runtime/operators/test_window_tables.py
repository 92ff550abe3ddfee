"""Tumbling and sliding windows over Arrow held window-major (operators/window_tables.py):
they fire exactly what the per-key layout fires (the same rows, in the same order, and
the updates of windows that take rows within the allowed lateness) and what the
per-record window step fires, keep the per-key state in snapshots (so snapshots written
before them restore), and move to the per-key layout when a batch does not fit."""
from __future__ import annotations

import operator
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators.windows import WindowOp
from raystream._runtime.state.changelog import StateChangelog
from raystream._runtime.state.snapshot import PartRef, SubtaskState
from raystream._runtime.state import window_entries
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Aggregator, Sliding, Tumbling
from tests.helpers.window_ops import AGGREGATES, fired, per_key_layout, rows_batch, window

WITH_SUM = AGGREGATES + (("total", agg.sum("v")),)
ASSIGNERS = {"tumbling": Tumbling(0.010), "sliding": Sliding(0.010, 0.004), "sliding-even": Sliding(0.012, 0.004)}


def _pick(a, b, f):
    return a if b is None else b if a is None else f(a, b)


#: The per-record reference of AGGREGATES, nulls skipped.
REFERENCE = Aggregator(
    create=lambda: (0, 0, None, None, None, None),
    add=lambda acc, v: (acc[0] + 1, acc[1] + (v is not None), _pick(acc[2], v, min), _pick(acc[3], v, max),
                        _pick(acc[4], v, lambda a, b: a), _pick(acc[5], v, lambda a, b: b)),
    merge=lambda a, b: a)
REFERENCE_SUM = Aggregator(
    create=lambda: REFERENCE.create() + (None,),
    add=lambda acc, v: REFERENCE.add(acc[:6], v) + (_pick(acc[6], v, operator.add),),
    merge=lambda a, b: a)


ROW = st.tuples(st.sampled_from(["a", "b", "c", "ü", "d"]), st.one_of(st.none(), st.integers(-1000, 1000)),
                st.integers(0, 120))
SCRIPT = st.lists(st.one_of(st.tuples(st.just("rows"), st.lists(ROW, min_size=1, max_size=25)),
                            st.tuples(st.just("wm"), st.integers(0, 130)),
                            st.tuples(st.just("snapshot"), st.just(None))), min_size=1, max_size=12)


def replay(op, script, restored_by=None):
    """What `op` emits for the script, step by step, with its state after each step; a
    "snapshot" step restores a new op (made by `restored_by`) from the op's pickled snapshot."""
    out = []
    for kind, item in script + [("wm", MAX_TIME)]:
        if kind == "rows":
            out.append(fired(op.process(rows_batch(item, keys=tuple(op.key_columns)))))
        elif kind == "wm":
            out.append(fired(op.on_watermark(item)))
        elif restored_by is not None:
            restored = restored_by()
            restored.restore(pickle.loads(pickle.dumps(op.snapshot())), op.watermark)
            if getattr(restored_by, "per_key", False):
                per_key_layout(restored)
            op = restored
            out.append("restored")
        keys = op.state_keys()  # counted without making the per-key state
        changed, deleted = op.changed_state()  # picked without making it
        changed = window_entries.per_key(pickle.loads(pickle.dumps(changed)))  # as a restore reads it
        out.append(pickle.loads(pickle.dumps(op.state)))
        assert keys == len(op.state)
        assert changed == {k: op.state[k] for k in op.changed if k in op.state}
        assert sorted(deleted) == sorted(k for k in op.changed if k not in op.state)
    return op, out


@pytest.mark.parametrize("keys", [("k",), ("k", "j")], ids=["one-key", "two-keys"])
@pytest.mark.parametrize("lateness", [0, 15])
@pytest.mark.parametrize("name", sorted(ASSIGNERS))
@settings(max_examples=60, deadline=None)  # per case: 12 cases
@given(script=SCRIPT)
def test_window_major_fires_exactly_what_the_per_key_layout_fires_in_order(name, lateness, keys, script):
    script = [step for step in script if step[0] != "snapshot"]
    fast_op, got = replay(window(ASSIGNERS[name], aggregates=WITH_SUM, lateness=lateness, keys=keys), script)
    slow_op, want = replay(window(ASSIGNERS[name], per_key=True, aggregates=WITH_SUM, lateness=lateness, keys=keys),
                           script)
    assert got == want
    assert fast_op._tables is not None and slow_op._tables is None  # each kept its layout
    assert fast_op.state == {} and fast_op.records_out == slow_op.records_out


@pytest.mark.parametrize("lateness", [0, 15])
@pytest.mark.parametrize("name", sorted(ASSIGNERS))
@settings(max_examples=40, deadline=None)  # per case: 6 cases
@given(script=SCRIPT)
def test_snapshots_restore_across_layouts_and_fire_what_an_unbroken_run_fires(name, lateness, script):
    """Snapshots of the per-key layout (what raystream wrote before) restore into the
    window-major one, and the other way: what fires, and the state after every step, are
    those of an unbroken run (rows of a window may come in another order after a restore)."""
    assigner = ASSIGNERS[name]

    def make(per_key=False):
        return window(assigner, per_key=per_key, aggregates=WITH_SUM, lateness=lateness)
    _, unbroken = replay(make(per_key=True), [s for s in script if s[0] != "snapshot"])

    def old():
        return per_key_layout(make())
    old.per_key = True
    for start, restore_into in ((make(per_key=True), make), (make(), old), (make(), make)):
        _, got = replay(start, script, restore_into)
        steps = script + [("wm", MAX_TIME)]
        kept = [entry for i, (kind, _) in enumerate(steps) if kind != "snapshot" for entry in got[2 * i:2 * i + 2]]
        assert [sorted(e, key=repr) if isinstance(e, list) else e for e in kept] == \
            [sorted(e, key=repr) if isinstance(e, list) else e for e in unbroken]


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
@settings(max_examples=80, deadline=None)
@given(script=SCRIPT)
def test_window_major_fires_what_the_per_record_window_step_fires(name, script):
    script = [step for step in script if step[0] != "snapshot"]
    assigner = ASSIGNERS[name]
    col = window(assigner, aggregates=WITH_SUM)
    ref = WindowOp(Step("w", StepKind.WINDOW, ("in",), fn=REFERENCE_SUM, window=WindowSpec(assigner, 0, "aggregate")))
    got, want = [], []
    for kind, item in script + [("wm", MAX_TIME)]:
        if kind == "rows":
            assert col.process(rows_batch(item)) == []  # no lateness: nothing updates
            ref.process(Timed(KeyedBatch([k for k, _, _ in item], [v for _, v, _ in item]), [t for _, _, t in item]))
            continue
        got += [(r[0], r[1], r[2], r[3:9] + r[10:11], r[11], r[12]) for r in fired(col.on_watermark(item))]
        inner, times = untimed(ref.on_watermark(item))
        if len(inner):
            want += [(k, r.start, r.end, r.value, r.update, int(t)) for k, r, t in zip(inner.keys, inner.values, times)]
    assert sorted(got, key=repr) == sorted(want, key=repr)  # the per-record step orders a window's keys otherwise
    assert col.late_records == ref.late_records


def test_a_snapshot_in_the_per_key_layout_restores_and_fires():
    """The layout raystream wrote before window-major tables (and reads back into): per key,
    per window, [state tuple, emitted]."""
    old = {"a": {(0, 10): [(2, 2, 3, 7, 7, 3, 7), False], (10, 20): [(1, 0, None, None, None, None, None), False]},
           "b": {(0, 10): [(1, 1, -4, -4, -4, -4, -4), False]}}
    state = SubtaskState(5, "w", 0, 1, keyed={"w": old}, watermarks={"w": 5})
    del state.__dict__["step_meta"]  # and before snapshots kept step_meta
    op = window(Tumbling(0.010))
    merged = merge_states([pickle.loads(pickle.dumps(state))], [op_step(op)], 0, 1, 128)
    op.restore(merged.keyed["w"], merged.watermarks["w"])
    op.restore_meta(merged.step_meta.get("w", []))
    assert op.state == old
    assert op.process(rows_batch([("a", 1, 8), ("c", 5, 9)])) == [] and op._tables is not None
    assert op.state["a"][(0, 10)] == [(3, 3, 1, 7, 7, 1, 7), False]
    assert fired(op.on_watermark(MAX_TIME)) == [
        ("a", *_window(0, 10), 3, 3, 1, 7, 7, 1, 7, False, 9), ("b", *_window(0, 10), 1, 1, -4, -4, -4, -4, -4, False, 9),
        ("c", *_window(0, 10), 1, 1, 5, 5, 5, 5, 5, False, 9),
        ("a", *_window(10, 20), 1, 0, None, None, None, None, None, False, 19)]
    assert op.state == {}


def op_step(op):
    return Step("w", StepKind.WINDOW, ("in",), key_columns=tuple(op.key_columns), arrow=AGGREGATES,
                window=WindowSpec(op.assigner, 0, "columnar"))


def _window(start, end):
    import datetime
    utc = datetime.timezone.utc
    return (datetime.datetime.fromtimestamp(start / 1000, utc), datetime.datetime.fromtimestamp(end / 1000, utc))


def test_a_restored_window_already_due_is_dropped_unfired_as_the_cleanup_would():
    for layout in (lambda: window(Tumbling(0.010)), lambda: window(Tumbling(0.010), per_key=True)):
        op = layout()
        op.restore({"a": {(0, 10): [(1, 1, 2, 2, 2, 2, 2), False]}, "b": {(10, 20): [(1, 1, 3, 3, 3, 3, 3), False]}}, 12)
        if op._columnar:
            op.process(rows_batch([("c", 1, 15)]))
            assert op._tables is not None and "a" in op.changed and "a" not in op.state
        else:
            op.process(rows_batch([("c", 1, 15)]))
        assert [r[0] for r in fired(op.on_watermark(MAX_TIME))] == ["b", "c"]


def test_incremental_snapshots_hold_the_keys_a_batch_or_a_fire_changed():
    op, changelog = window(Tumbling(0.010)), StateChangelog(incremental=True, base_every=10, compact_above=0)
    op.process(rows_batch([("a", 1, 1), ("b", 2, 12)]))
    changelog.capture([op])
    changelog.added(PartRef("run/snapshots/1/x.snap", "0" * 64, 1, 1, True))
    op.process(rows_batch([("c", 3, 15)]))
    op.on_watermark(9)  # fires a's window: a changes too
    keyed, is_changes, _ = changelog.capture([op])
    assert is_changes and op._tables is not None
    entries, deleted = keyed["w"]
    assert isinstance(entries, window_entries.WindowEntries) and len(entries) == 1  # Arrow rows: no Python per window
    updates = window_entries.per_key(pickle.loads(pickle.dumps(entries)))
    assert set(updates) == {"c"} and updates["c"] == {(10, 20): [(1, 1, 3, 3, 3, 3, 3), False]} and deleted == ["a"]


def test_a_failing_batch_leaves_the_window_major_state_as_it_was():
    op = window(Tumbling(0.010))
    op.process(rows_batch([("a", 1, 1)]))
    before = pickle.dumps(op.state)
    batch = pa.RecordBatch.from_pydict({"k": ["a"]})  # no column v
    with pytest.raises(Exception, match="no column v"):
        op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([2])))
    assert pickle.dumps(op.state) == before and op._tables is not None


def test_many_batches_of_one_window_are_merged_as_they_come_and_fire_in_arrival_order():
    op, ref = window(Sliding(1, 0.5)), window(Sliding(1, 0.5), per_key=True)
    rng = np.random.default_rng(7)
    for i in range(40):
        rows = [(f"k{int(rng.integers(0, 30))}", int(rng.integers(-50, 50)) if rng.random() > 0.2 else None, i * 20 + j)
                for j in range(20)]
        for o in (op, ref):
            o.process(rows_batch(rows))
        if i % 7 == 6:
            assert fired(op.on_watermark(i * 20)) == fired(ref.on_watermark(i * 20))
            assert op.state == ref.state
    assert max(len(t) for t in op._tables.windows.values()) < 12  # merged as they come
    assert fired(op.on_watermark(MAX_TIME)) == fired(ref.on_watermark(MAX_TIME))


def test_integer_sums_stay_window_major_while_no_sum_could_pass_int64():
    """Arrow's sum wraps around past int64 where Python's goes on: a window whose sums
    could pass it moves to the per-key layout before the batch, and sums as Python does."""
    sums = (("total", agg.sum("v")),)
    op, ref = window(Tumbling(0.010), aggregates=sums), window(Tumbling(0.010), per_key=True, aggregates=sums)
    for o in (op, ref):
        o.process(rows_batch([("a", 2 ** 61, 1), ("b", -2 ** 61, 2), ("a", 2 ** 61, 3)]))
        o.process(rows_batch([("a", 2 ** 61, 4), ("b", 5, 15)]))
    assert op._tables is not None and op.state == ref.state and op.state["a"][(0, 10)][0] == (3 * 2 ** 61,)
    for o in (op, ref):
        o.process(rows_batch([("a", -2 ** 62, 5)]))  # the window's bound passes int64, not a's sum
    assert op._tables is None and op.state == ref.state and op.state["a"][(0, 10)][0] == (2 ** 61,)
    assert fired(op.on_watermark(MAX_TIME)) == fired(ref.on_watermark(MAX_TIME))


def test_a_restored_sum_keeps_its_bound():
    op = window(Tumbling(0.010), aggregates=(("total", agg.sum("v")),))
    op.restore({"a": {(0, 10): [(2 ** 63 - 10,), False]}}, 0)
    op.process(rows_batch([("b", 1, 2)]))
    assert op._tables is not None
    op.process(rows_batch([("a", 20, 3)]))
    assert op._tables is None and op.state["a"][(0, 10)] == [(2 ** 63 + 10,), False]


def test_rows_within_the_lateness_update_a_fired_window_once_per_batch():
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()), ("total", agg.sum("v"))), lateness=20)
    op.process(rows_batch([("a", 1, 1), ("b", 2, 2), ("a", 3, 12)]))
    assert [(r[0], r[3], r[4], r[5]) for r in fired(op.on_watermark(10))] == [("a", 1, 1, False), ("b", 1, 2, False)]
    # late for window 0 (fired): b is an update, c new; a's window 10 is on time
    got = fired(op.process(rows_batch([("c", 5, 3), ("a", 7, 14), ("b", 1, 4), ("c", 1, 5)])))
    assert [(r[0], r[1].timestamp(), r[3], r[4], r[5], r[6]) for r in got] == [
        ("c", 0, 2, 6, False, 9), ("b", 0, 2, 3, True, 9)]
    assert op.state["c"] == {(0, 10): [(2, 6), True]} and op.state["a"][(10, 20)] == [(2, 10), False]
    assert [(r[0], r[3], r[4], r[5]) for r in fired(op.on_watermark(19))] == [("a", 2, 10, False)]
    assert set(op.state) == {"a", "b", "c"}  # window 0 is kept until 9 + 20, window 10 until 19 + 20
    assert fired(op.on_watermark(29)) == [] and set(op.state) == {"a"} and op.changed >= {"b", "c"}
    assert fired(op.on_watermark(39)) == [] and op.state == {} and op._tables is not None


def test_a_window_holds_buffers_of_its_own_rows_only():
    """Review 39: windows held slices of a batch's table and of the table a snapshot
    merged them into, so one window still open kept every other window's rows alive."""
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()), ("total", agg.sum("v"))))
    keys = [f"key-{i:04d}" for i in range(200)]
    for step in range(6):
        rows = [(k, 1, 10 * w + 1) for w in range(step, 30) for k in keys]
        op.process(rows_batch(rows))
        op.snapshot()  # merges the windows of several tables, all in one group-by
        op._tables._dict = None
    for tables in op._tables.windows.values():
        for table in tables:
            assert table.get_total_buffer_size() <= 2 * table.nbytes + 1024


def test_windows_moved_to_the_per_key_layout_fire_their_keys_in_the_order_they_came():
    """Review 39: the move gave each key its timers in the order of the first window it
    is in, so window [40, 50) fired a before c, where c came first."""
    sums = (("n", agg.count()), ("total", agg.sum("v")))
    op, ref = window(Tumbling(0.010), aggregates=sums), window(Tumbling(0.010), per_key=True, aggregates=sums)
    for rows in ([("c", 1, 48)], [("a", 1, 2), ("a", 1, 49)], [("b", 2 ** 62, 21), ("b", -2 ** 62, 22)]):
        for o in (op, ref):
            o.process(rows_batch(rows))
    assert op._tables is None  # b's two rows could pass int64: moved
    got, want = fired(op.on_watermark(MAX_TIME)), fired(ref.on_watermark(MAX_TIME))
    assert got == want and [r[0] for r in got if r[1].timestamp() == 0.04] == ["c", "a"]


@pytest.mark.parametrize("per_key", [False, True])
def test_a_sum_past_int64_fires_in_a_type_that_holds_it(per_key):
    """Review 39: firing made the column int64, which cannot hold it: on_watermark raised,
    and the subtask failed again on every restore."""
    op = window(Tumbling(0.010), per_key=per_key, aggregates=(("total", agg.sum("v")),))
    op.process(rows_batch([("a", 2 ** 62, 1), ("b", -3, 2)]))
    op.process(rows_batch([("a", 2 ** 62, 3), ("b", -2 ** 62, 4), ("b", -2 ** 62, 5), ("b", -2 ** 62, 6)]))
    out = untimed(op.on_watermark(MAX_TIME))[0]
    assert out.column("total").to_pylist() == [2 ** 63, -3 * 2 ** 62 - 3]


