"""Window steps over Arrow without Ray: each window kind fires what the per-record window
step fires on the same rows and watermarks (out of order, late, within the lateness),
and its state is keyed state like the per-record step's: snapshots restore it mid-window,
incremental snapshots hold the keys that changed, a rescale moves it by key group."""
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
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.windows import WindowOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.state.changelog import StateChangelog
from raystream._runtime.state.snapshot import PartRef, SubtaskState
from raystream._runtime.state.window_entries import per_key
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Aggregator, Session, Sliding, Tumbling
from tests.helpers.edges import hash_edge
from tests.helpers.scripts import sorted_marks


def _pick(a, b, f):
    return a if b is None else b if a is None else f(a, b)


#: The per-record reference of AGGREGATES: (rows, sum, min, max), nulls skipped.
REFERENCE = Aggregator(
    create=lambda: (0, None, None, None),
    add=lambda acc, v: (acc[0] + 1, _pick(acc[1], v, operator.add), _pick(acc[2], v, min), _pick(acc[3], v, max)),
    merge=lambda a, b: (a[0] + b[0], _pick(a[1], b[1], operator.add), _pick(a[2], b[2], min), _pick(a[3], b[3], max)))
AGGREGATES = (("n", agg.count()), ("total", agg.sum("v")), ("low", agg.min("v")), ("high", agg.max("v")))
ASSIGNERS = {"tumbling": Tumbling(0.010), "sliding": Sliding(0.010, 0.004), "sliding-even": Sliding(0.012, 0.004),
             "session": Session(0.005)}


def columnar(assigner, lateness_ms=0) -> ArrowWindowOp:
    assigner.check("w")
    return ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=AGGREGATES,
                              window=WindowSpec(assigner, lateness_ms, "columnar")))


def per_record(assigner, lateness_ms=0) -> WindowOp:
    assigner.check("w")
    return WindowOp(Step("w", StepKind.WINDOW, ("in",), fn=REFERENCE, window=WindowSpec(assigner, lateness_ms,
                                                                                        "aggregate")))


def arrow_rows(rows) -> Timed:
    keys, values, times = zip(*rows)
    batch = pa.RecordBatch.from_arrays([pa.array(keys, pa.string()), pa.array(values, pa.int64())], names=["k", "v"])
    return Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64))


def record_rows(rows) -> Timed:
    keys, values, times = zip(*rows)
    return Timed(KeyedBatch(list(keys), list(values)), list(times))


def fired_columnar(batch) -> list[tuple]:
    """(key, start ms, end ms, (n, total, low, high), update, time) per row."""
    if not len(batch):
        return []
    inner, times = untimed(batch)
    return [(r["k"], int(r["window_start"].timestamp() * 1000), int(r["window_end"].timestamp() * 1000),
             (r["n"], r["total"], r["low"], r["high"]), r["update"], int(t))
            for r, t in zip(inner.to_pylist(), times)]


def fired_per_record(batch) -> list[tuple]:
    """The same of WindowResults; of a batch's updates, the last per window (columnar
    emits one per batch, of the windows as they are after it; the per-record step one
    per record)."""
    if not len(batch):
        return []
    inner, times = untimed(batch)
    last = {}
    for key, result, t in zip(inner.keys, inner.values, times):
        window = (key, int(result.start.timestamp() * 1000), int(result.end.timestamp() * 1000))
        first_update = last.get(window, (None, None, result.update))[2]
        last[window] = (result.value, t, first_update)
    return [w + (value, update, t) for w, (value, t, update) in last.items()]


def late_columnar(op) -> list[tuple]:
    out = []
    for batch in op.take_late_batches():
        inner, times = untimed(batch)
        out += [(r["k"], r["v"], int(t)) for r, t in zip(inner.batch.to_pylist(), times)]
    return out


def late_per_record(op) -> list[tuple]:
    batch = op.take_late()
    if not len(batch):
        return []
    inner, times = untimed(batch)
    return list(zip(inner.keys, inner.values, times))


def run_both(assigner, lateness, script):
    """Feed both steps the script (("rows", [(k, v, t)]) or ("wm", mark)); returns what each emitted, step by step."""
    col, ref = columnar(assigner, lateness), per_record(assigner, lateness)
    got, want = [], []
    for kind, item in script + [("wm", MAX_TIME)]:
        if kind == "rows":
            got.append(sorted(fired_columnar(col.process(arrow_rows(item))), key=repr))
            emitted = {k: {w: e[1] for w, e in windows.items()} for k, windows in ref.state.items()}
            updates = fired_per_record(ref.process(record_rows(item)))
            # columnar updates are of the windows as they are after the batch, flagged if they (or the
            # sessions merged into them) had been emitted before it; the per-record step also updates
            # sessions that later rows of the batch merge away, and flags what it emitted in between
            want.append(sorted([(k, s, e, value, any(f for w, f in emitted.get(k, {}).items() if s <= w[0] and w[1] <= e),
                                 t) for k, s, e, value, _, t in updates if (s, e) in ref.state.get(k, {})], key=repr))
        else:
            got.append(sorted(fired_columnar(col.on_watermark(item)), key=repr))
            want.append(sorted(fired_per_record(ref.on_watermark(item)), key=repr))
        got.append(sorted(late_columnar(col), key=repr))
        want.append(sorted(late_per_record(ref), key=repr))
    return col, ref, got, want


ROW = st.tuples(st.sampled_from(["a", "b", "c", "ü"]), st.one_of(st.none(), st.integers(-1000, 1000)),
                st.integers(0, 120))
SCRIPT = st.lists(st.one_of(st.tuples(st.just("rows"), st.lists(ROW, min_size=1, max_size=25)),
                            st.tuples(st.just("wm"), st.integers(0, 130))), min_size=1, max_size=10)


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
@settings(max_examples=120, deadline=None)
@given(script=SCRIPT, lateness=st.sampled_from([0, 4, 25]))
def test_each_window_kind_fires_what_the_per_record_step_fires(name, script, lateness):
    col, ref, got, want = run_both(ASSIGNERS[name], lateness, sorted_marks(script))
    if name == "session":  # a session the per-record step emitted in between is flagged an update when it fires
        got, want = ([[r[:4] + r[5:] for r in step] for step in side] for side in (got, want))
    assert got == want
    assert col.state == {} and ref.state == {}
    assert (col.late_records, col.records_in) == (ref.late_records, ref.records_in)




def test_late_rows_within_the_lateness_update_the_window_and_later_ones_go_to_late_as_arrow():
    op = columnar(Tumbling(0.010), lateness_ms=5)
    op.process(arrow_rows([("a", 1, 2)]))
    assert fired_columnar(op.on_watermark(10)) == [("a", 0, 10, (1, 1, 1, 1), False, 9)]
    # within the lateness: one update for the batch, its value after both rows
    assert fired_columnar(op.process(arrow_rows([("a", 2, 3), ("a", 4, 8)]))) == [("a", 0, 10, (3, 7, 1, 4), True, 9)]
    assert op.on_watermark(14) == [] and op.state == {}  # dropped once the lateness is over
    assert op.process(arrow_rows([("a", 7, 4), ("b", 1, 30)])) == []
    late = op.take_late_batches()
    assert len(late) == 1 and isinstance(untimed(late[0])[0], ArrowKeyed)
    assert late_columnar(op) == [] and op.late_records == 1
    inner, times = untimed(late[0])
    assert inner.batch.to_pylist() == [{"k": "a", "v": 7}] and times.tolist() == [4] and inner.key_columns == ("k",)


def test_session_windows_merge_across_batches_with_their_states():
    op, ref = columnar(Session(0.005)), per_record(Session(0.005))
    for rows in ([("u", 1, 0), ("u", 2, 20)], [("u", 3, 4)], [("u", 4, 12), ("u", 5, 16)]):
        op.process(arrow_rows(rows))
        ref.process(record_rows(rows))
    assert sorted(op.state["u"]) == [(0, 9), (12, 25)] == sorted(ref.state["u"])  # [12, 21) bridged [20, 25)
    assert op.state["u"][(12, 25)][0] == (3, 11, 2, 5)
    assert sorted(fired_columnar(op.on_watermark(MAX_TIME))) == sorted(fired_per_record(ref.on_watermark(MAX_TIME)))


def test_a_fired_session_restored_at_an_older_watermark_fires_again_only_once_extended():
    """Review 39's re-fire after a rescale, of sessions over Arrow: restored at the
    watermark of a subtask behind (as a 2 -> 1 rescale restores it), a session that fired
    does not fire again; rows inside it are an update at once; rows that extend it past
    the watermark make it fire at its new end, also through a restore."""
    op = columnar(Session(0.005), lateness_ms=20)
    op.process(arrow_rows([("u", 1, 1)]))
    assert fired_columnar(op.on_watermark(7)) == [("u", 1, 6, (1, 1, 1, 1), False, 5)]
    restored = columnar(Session(0.005), lateness_ms=20)
    restored.restore(pickle.loads(pickle.dumps(op.snapshot())), 2)
    assert fired_columnar(restored.process(arrow_rows([("u", 2, 1)]))) == [("u", 1, 6, (2, 3, 1, 2), True, 5)]
    assert fired_columnar(restored.on_watermark(6)) == []
    assert fired_columnar(restored.process(arrow_rows([("u", 4, 5)]))) == []  # now [1, 10)
    again = columnar(Session(0.005), lateness_ms=20)
    again.restore(pickle.loads(pickle.dumps(restored.snapshot())), restored.watermark)
    assert fired_columnar(again.on_watermark(10)) == [("u", 1, 10, (3, 7, 1, 4), True, 9)]
    assert fired_columnar(again.on_watermark(40)) == [] and again.state == {}


def test_sessions_merged_after_a_restore_behind_are_emitted_at_once_as_by_the_per_record_step():
    op = columnar(Session(0.005), lateness_ms=30)
    op.process(arrow_rows([("u", 1, 1), ("u", 2, 10)]))  # [1, 6) and [10, 15)
    assert len(fired_columnar(op.on_watermark(16))) == 2
    restored = columnar(Session(0.005), lateness_ms=30)
    restored.restore(pickle.loads(pickle.dumps(op.snapshot())), 2)
    assert fired_columnar(restored.process(arrow_rows([("u", 4, 5)]))) == [("u", 1, 15, (3, 7, 1, 4), True, 14)]
    assert fired_columnar(restored.on_watermark(16)) == []


def test_rows_exactly_gap_apart_share_a_session_in_one_batch_and_across_batches_like_the_per_record_step():
    op, ref = columnar(Session(0.005)), per_record(Session(0.005))
    for rows in ([("u", 1, 0), ("u", 2, 5), ("v", 1, 0), ("v", 2, 6)], [("u", 3, 10), ("v", 3, 11)]):
        op.process(arrow_rows(rows))
        ref.process(record_rows(rows))
    assert sorted(op.state["u"]) == [(0, 15)] == sorted(ref.state["u"])  # each 5 ms after the last: one session
    assert sorted(op.state["v"]) == [(0, 5), (6, 16)] == sorted(ref.state["v"])  # 6 ms apart: two
    assert sorted(fired_columnar(op.on_watermark(MAX_TIME))) == sorted(fired_per_record(ref.on_watermark(MAX_TIME)))


def test_output_schema_keys_then_window_bounds_as_utc_timestamps_then_aggregates():
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("cat", "seller"),
                            arrow=(("n", agg.count()), ("avg", agg.mean("price")), ("top", agg.max("price"))),
                            window=WindowSpec(Tumbling(1), 0, "columnar")))
    op.assigner.check("w")
    batch = pa.RecordBatch.from_pydict({"cat": pa.array([1, 1, 2], pa.int32()), "seller": ["x", "x", None],
                                        "price": pa.array([1.5, None, 2.0], pa.float32())})
    op.process(Timed(ArrowKeyed(batch, ("cat", "seller")), np.array([10, 20, 30])))
    out, times = untimed(op.on_watermark(MAX_TIME))
    assert out.schema == pa.schema([("cat", pa.int32()), ("seller", pa.string()),
                                    ("window_start", pa.timestamp("ms", "UTC")),
                                    ("window_end", pa.timestamp("ms", "UTC")), ("n", pa.int64()),
                                    ("avg", pa.float64()), ("top", pa.float32()), ("update", pa.bool_())])
    assert [(r["cat"], r["seller"], r["n"], r["avg"]) for r in out.to_pylist()] == [(1, "x", 2, 1.5), (2, None, 1, 2.0)]
    assert times.tolist() == [999, 999] and set(op.snapshot()) == set()


def test_snapshot_and_restore_mid_window_continue_as_without_them():
    rows = [[(k, i * j, i * 7 + j * 3) for j, k in enumerate("abcab")] for i in range(8)]
    for name, assigner in ASSIGNERS.items():
        whole, first = columnar(assigner, 6), columnar(assigner, 6)
        fired_whole, fired_parts = [], []
        for i, batch in enumerate(rows):
            fired_whole += fired_columnar(whole.process(arrow_rows(batch))) + fired_columnar(whole.on_watermark(i * 7))
            if i < 4:
                fired_parts += fired_columnar(first.process(arrow_rows(batch))) + fired_columnar(first.on_watermark(i * 7))
            if i == 3:
                restored = columnar(assigner, 6)
                restored.restore(pickle.loads(pickle.dumps(first.snapshot())), first.watermark)
            if i >= 4:
                fired_parts += fired_columnar(restored.process(arrow_rows(batch))) + \
                    fired_columnar(restored.on_watermark(i * 7))
        fired_whole += fired_columnar(whole.on_watermark(MAX_TIME))
        fired_parts += fired_columnar(restored.on_watermark(MAX_TIME))
        assert sorted(fired_parts, key=repr) == sorted(fired_whole, key=repr), name  # restore reorders ties


def test_incremental_snapshots_hold_the_keys_a_batch_or_a_timer_changed():
    op, changelog = columnar(Tumbling(0.010)), StateChangelog(incremental=True, base_every=10, compact_above=0)
    op.process(arrow_rows([("a", 1, 1), ("b", 2, 12)]))
    changelog.capture([op])
    changelog.added(PartRef("run/snapshots/1/x.snap", "0" * 64, 1, 1, True))
    op.process(arrow_rows([("c", 3, 15)]))
    op.on_watermark(9)  # fires a's window: a changes too
    keyed, is_changes, _ = changelog.capture([op])
    assert is_changes
    updates, deleted = keyed["w"]
    assert set(per_key(updates)) == {"c"} and deleted == ["a"]


def test_rescaling_2_to_3_moves_windows_by_key_group_and_they_fire_as_before():
    old, new = 2, 3
    keys = [f"k{i}" for i in range(30)]
    batches = [[(keys[(i * 7 + j) % 30], i + j, i * 5 + j % 9) for j in range(40)] for i in range(8)]
    assigner = Sliding(0.012, 0.004)
    reference = columnar(assigner, 3)
    expected, got = [], []

    def step(ops, i, rows):
        """One batch through a real hash edge into `ops`, then the watermark; the reference alike."""
        nonlocal got, expected
        expected += fired_columnar(reference.process(arrow_rows(rows))) + fired_columnar(reference.on_watermark(i * 5))
        for op, messages in zip(ops, hash_edge(arrow_rows(rows), len(ops))):
            for message in messages:
                got += fired_columnar(op.process(message))
        for op in ops:
            got += fired_columnar(op.on_watermark(i * 5))

    before = [columnar(assigner, 3) for _ in range(old)]
    for i, rows in enumerate(batches[:4]):
        step(before, i, rows)
    states = [SubtaskState(5, "w", i, old, keyed={"w": op.snapshot()}, watermarks={"w": op.watermark})
              for i, op in enumerate(before)]
    spec = Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=AGGREGATES,
                window=WindowSpec(assigner, 3, "columnar"))
    after = []
    for i in range(new):
        restored = merge_states(states, [spec], i, new, 128)
        op = columnar(assigner, 3)
        op.restore(restored.keyed["w"], restored.watermarks["w"])
        assert all(key_group(k, 128) in groups_of_subtask(i, new, 128) for k in op.state)
        after.append(op)
    for i, rows in enumerate(batches[4:], start=4):
        step(after, i, rows)
    expected += fired_columnar(reference.on_watermark(MAX_TIME))
    for op in after:
        got += fired_columnar(op.on_watermark(MAX_TIME))
    assert sorted(got, key=repr) == sorted(expected, key=repr) and len(expected) > 100


def test_processing_time_windows_fire_by_the_clock(monkeypatch):
    from raystream._runtime.operators import columnar_windows
    now = [100_000]
    monkeypatch.setattr(columnar_windows, "now_ms", lambda: now[0])
    op = columnar(Tumbling(10, clock="processing"))
    batch = pa.RecordBatch.from_pydict({"k": ["a", "a"], "v": [1, 2]})
    assert op.process(ArrowKeyed(batch, ("k",))) == []
    assert op.next_timer() == 110_000 and op.on_watermark(MAX_TIME - 1) == []
    fired = op.on_time(110_000)
    assert isinstance(fired, pa.RecordBatch) and fired.to_pylist()[0]["n"] == 2  # untimed in, untimed out


def test_a_failing_batch_leaves_the_windows_as_they_were():
    op = columnar(Tumbling(0.010))
    op.process(arrow_rows([("a", 1, 1)]))
    before = pickle.dumps(op.state)
    bad = pa.RecordBatch.from_pydict({"k": ["a"], "v": ["not a number"]})
    with pytest.raises(RecordFailure, match="window aggregate n=count.*failed on a batch with columns k, v"):
        op.process(Timed(ArrowKeyed(bad, ("k",)), np.array([2])))
    assert pickle.dumps(op.state) == before
    with pytest.raises(RecordFailure, match="needs rows with event time"):
        op.process(ArrowKeyed(bad, ("k",)))
    with pytest.raises(RecordFailure, match="takes Arrow rows keyed by columns; got KeyedBatch"):
        op.process(Timed(KeyedBatch(["a"], [1]), [1]))


def test_a_window_sum_is_never_cut_to_the_type_of_a_later_batch_and_decimal_means_fire():
    """Review: a float sum fired as int64 after a batch of ints (3.5 -> 3); a mean over a
    decimal column failed every firing."""
    import decimal

    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",),
                            arrow=(("total", agg.sum("v")), ("avg", agg.mean("d"))),
                            window=WindowSpec(Tumbling(1), 0, "columnar")))
    op.assigner.check("w")
    first = pa.RecordBatch.from_pydict({"k": ["a"], "v": [1.5], "d": pa.array([decimal.Decimal("1.65")],
                                                                               pa.decimal128(5, 2))})
    second = pa.RecordBatch.from_pydict({"k": ["a"], "v": [2], "d": pa.array([decimal.Decimal("2.35")],
                                                                             pa.decimal128(5, 2))})
    op.process(Timed(ArrowKeyed(first, ("k",)), np.array([10])))
    op.process(Timed(ArrowKeyed(second, ("k",)), np.array([20])))
    out, _ = untimed(op.on_watermark(MAX_TIME))
    assert [(r["total"], r["avg"]) for r in out.to_pylist()] == [(3.5, 2.0)]


def test_a_key_column_named_like_a_window_column_is_refused_at_definition():
    import raystream as rs
    from raystream.errors import JobDefinitionError

    job = rs.Job("j")
    rows = job.source("rows", rs.sources.ListSource([{"window_end": 1, "v": 2}]))
    with pytest.raises(JobDefinitionError, match="key column 'window_end' has the name of a column the window adds"):
        rows.key_by("by_end", "window_end").window(Tumbling(1)).aggregate("w", n=agg.count())


@pytest.mark.parametrize("name", ["tumbling", "session"])
def test_rows_of_one_key_that_arrow_groups_apart_are_one_window(name):
    """Review: -0.0 and 0.0 are one key; a session window kept only the rows of one of them."""
    op = columnar(ASSIGNERS[name])
    batch = pa.RecordBatch.from_pydict({"k": [-0.0, 0.0, -0.0], "v": [None, 2, 3]})
    op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([1, 2, 3])))
    out, _ = untimed(op.on_watermark(MAX_TIME))
    assert [(r["k"], r["n"], r["total"], r["low"]) for r in out.to_pylist()] == [(0.0, 3, 5, 2)]


def test_a_failed_batch_leaves_the_output_types_as_they_were():
    """Review 37b: a batch that failed (a string into the max of ints) still taught the
    step its output types, so later windows fired the ints as strings."""
    assigner = Tumbling(0.010)
    assigner.check("w")
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=(("high", agg.max("v")),),
                            window=WindowSpec(assigner, 5, "columnar")))  # no sum: Arrow has none of strings
    op.process(arrow_rows([("a", 5, 2), ("b", 7, 3)]))
    bad = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array(["x"])], names=["k", "v"])
    with pytest.raises(RecordFailure):
        op.process(Timed(ArrowKeyed(bad, ("k",)), np.array([4], dtype=np.int64)))
    inner, _ = untimed(op.on_watermark(MAX_TIME))
    assert inner.schema.field("high").type == pa.int64()
    assert inner.select(["k", "high"]).to_pylist() == [{"k": "a", "high": 5}, {"k": "b", "high": 7}]
