"""Lifetime windows (windows the rows open) over Arrow, without Ray: the step fires what a
plain-Python model of the rules fires (rows that wait for their window, late openers,
lateness), its waiting rows are in every snapshot and restore, and a bad end fails the
batch under the error policy."""
from __future__ import annotations

import itertools
import pickle
import uuid

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import aggregates as agg
from raystream._runtime.operators.columnar_lifetimes import PENDING, LifetimeWindowOp
from raystream._runtime.operators.lifetime_waiting import WaitingRows
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.state.changelog import StateChangelog
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, Batches, Timed, untimed
from raystream.errors import RestoreError
from raystream.graph import Step, StepKind, WindowSpec
from raystream.process import KeyState
from tests.helpers.lifetimes import AGGREGATES, Model, chained, lifetime, restored, restored_from
from tests.helpers.scripts import sorted_marks

def arrow_rows(rows) -> Timed:
    """rows: (key, value, time, end or None)."""
    keys, values, times, ends = zip(*rows)
    batch = pa.RecordBatch.from_arrays([pa.array(keys, pa.string()), pa.array(values, pa.int64()),
                                        pa.array(ends, pa.int64())], names=["k", "v", "end"])
    return Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64))


def fired(batch) -> list[tuple]:
    """(key, start, end, (n, top, first, last), update) per row, sorted."""
    if not len(batch):
        return []
    if isinstance(batch, Batches):  # keys no one column holds: a batch per kind
        return sorted((row for part in batch.parts for row in fired(part)), key=repr)
    inner, _ = untimed(batch)
    bounds = [inner.column(c).cast(pa.int64()).to_pylist() for c in ("window_start", "window_end")]
    rows = inner.select(["k", "n", "top", "first", "last", "update"]).to_pylist()
    return sorted(((r["k"], s, e, (r["n"], r["top"], r["first"], r["last"]), r["update"])
                   for r, s, e in zip(rows, *bounds)), key=repr)


def late(op) -> list[tuple]:
    out = []
    for batch in op.take_late_batches():
        inner, times = untimed(batch)
        out += [(r["k"], r["v"], int(t)) for r, t in zip(inner.batch.to_pylist(), times)]
    return sorted(out, key=repr)


KEYS = ["a", "b", "c"]
ROW = st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.integers(-50, 50)),
                st.integers(0, 100), st.one_of(st.none(), st.none(), st.integers(0, 40), st.just(MAX_TIME)))
TYPES = st.lists(st.tuples(st.sampled_from([pa.int8(), pa.int16(), pa.int64(), pa.uint32()]),
                           st.sampled_from([pa.int8(), pa.int64(), None])), min_size=1, max_size=4)
SCRIPT = st.lists(st.one_of(st.tuples(st.just("rows"), st.lists(ROW, min_size=1, max_size=20)),
                            st.tuples(st.just("wm"), st.integers(0, 140))), min_size=1, max_size=10)


def opened(rows):
    """Each opener's end as an offset from its time, so no end is before its row."""
    return [(k, v, t, None if d is None else min(t + d, MAX_TIME)) for k, v, t, d in rows]


def run(script, lateness, restart_at=None, types=None, captures=None):
    """`types`: per batch (key type, value type) of int keys; None: string keys.
    `captures`: the steps before which an incremental checkpoint is taken; the restart
    then reads the chain of them (I5), not a full snapshot."""
    op, model, got, want = lifetime(lateness), Model(lateness), [], []
    changelog, chain = StateChangelog(incremental=True, base_every=10 ** 6, compact_above=10 ** 9), None
    for step, (kind, item) in enumerate(script + [("wm", MAX_TIME)]):
        if captures is not None and (step in captures or step == restart_at):
            chain = chained(changelog, op, chain)
        if step == restart_at:
            op = restored(op, lateness) if captures is None else restored_from(chain, op, lateness)
        if kind == "rows":
            rows = opened(item)
            if types is None:
                batch = arrow_rows(rows)
            else:
                rows = [(KEYS.index(k), v, t, end) for k, v, t, end in rows]
                key_type, value_type = types[step % len(types)]
                values = [v for _, v, _, _ in rows]
                batch = typed_rows([k for k, _, _, _ in rows], values if value_type is not None else [None] * len(rows),
                                   [t for _, _, t, _ in rows], [e for _, _, _, e in rows], key_type=key_type,
                                   value_type=value_type if value_type is not None else pa.null())
                if value_type is None:
                    rows = [(k, None, t, e) for k, _, t, e in rows]
            got.append(fired(op.process(batch)))
            want.append(model.batch(rows))
        else:
            got.append(fired(op.on_watermark(item)))
            want.append(model.mark(item))
        got.append(late(op))
        want.append(sorted(model.late, key=repr))
        model.late = []
    return op, got, want


@settings(max_examples=150, deadline=None)
@given(script=SCRIPT, lateness=st.sampled_from([0, 5, 30]))
def test_the_step_fires_what_the_rules_give_row_by_row(script, lateness):
    op, got, want = run(sorted_marks(script), lateness)
    assert got == want
    assert op.state == {} and len(op.waiting) == 0


@settings(max_examples=100, deadline=None)
@given(script=SCRIPT, lateness=st.sampled_from([0, 5]), types=TYPES, data=st.data())
def test_batches_of_other_arrow_types_meet_by_their_keys_as_the_rules_give(script, lateness, types, data):
    """Review 37: waiting rows were cast to the next batch's types (int8 keys after int64,
    a column of nulls after ints), which failed every later batch."""
    script = sorted_marks(script)
    at = data.draw(st.one_of(st.none(), st.integers(0, len(script))))
    _, got, want = run(script, lateness, restart_at=at, types=types)
    assert got == want


@settings(max_examples=100, deadline=None)
@given(script=SCRIPT, lateness=st.sampled_from([0, 5]), data=st.data())
def test_a_step_restored_from_a_snapshot_at_any_point_goes_on_as_if_never_stopped(script, lateness, data):
    script = sorted_marks(script)
    at = data.draw(st.integers(0, len(script)))
    _, got, want = run(script, lateness, restart_at=at)
    assert got == want




@settings(max_examples=150, deadline=None)
@given(script=SCRIPT, lateness=st.sampled_from([0, 5]), data=st.data())
def test_a_step_restored_from_a_chain_of_incremental_snapshots_goes_on_as_if_never_stopped(script, lateness, data):
    """Only keys whose waiting rows changed go into a snapshot: the chain must still hold
    every key's waiting rows, as they were at the restart."""
    script = sorted_marks(script)
    captures = data.draw(st.sets(st.integers(0, len(script))))
    at = data.draw(st.integers(0, len(script)))
    _, got, want = run(script, lateness, restart_at=at, captures=captures)
    assert got == want


def test_a_key_whose_window_takes_some_of_its_waiting_rows_is_snapshot_with_the_rest():
    # a waits at 50 and 70; a window [40, 60] takes 50; after a restart from the chain,
    # a window [45, 80] must take 70 only: 50 is in the first window, not waiting
    script = [("rows", [("a", 1, 50, None), ("a", 2, 70, None)]), ("rows", [("a", 5, 40, 20)]),
              ("rows", [("a", 7, 45, 35)])]
    _, got, want = run(script, 0, restart_at=2, captures={1, 2})
    assert got == want


def test_a_chain_of_snapshots_holds_each_segments_bytes_once():
    """Review 38b: when a snapshot took only the keys whose waiting rows changed, keys of
    one segment written in different parts kept the copies of different parts, and a base
    merged from 50 parts held 50 copies of the segment."""
    op = lifetime()
    op.process(arrow_rows([("a", 0, 0, 1_000), ("a", 1, 2_000, None), ("b", 2, 2_000, None)]))
    changelog, chain = StateChangelog(incremental=True, base_every=10 ** 6, compact_above=10 ** 9), None
    for t in range(1, 6):  # a's window changes before each snapshot; a's and b's waiting rows do not
        op.process(arrow_rows([("a", t, t, None)]))
        chain = chained(changelog, op, chain)
    assert len({id(piece[0]) for windows in chain.values() for piece in windows[PENDING]}) == 1


@settings(max_examples=150, deadline=None)
@given(script=SCRIPT)
def test_where_batches_are_cut_changes_nothing(script):
    """Review 37b: a row in a window was left out of a window of its key opened in a later
    batch, but not in the same batch; each row now goes where the rules put it in turn."""
    script = sorted_marks(script)
    split = [(kind, [row]) if kind == "rows" else (kind, item) for kind, item in script for row in
             (item if kind == "rows" else [None])]
    _, whole, _ = run(script, 0)
    _, one_by_one, _ = run(split, 0)
    assert sorted((x for out in whole for x in out), key=repr) == sorted((x for out in one_by_one for x in out), key=repr)


def test_a_bid_before_its_auction_waits_and_joins_it_and_one_after_the_watermark_passed_its_time_is_late():
    op = lifetime()
    op.process(arrow_rows([("a1", 7, 12, None)]))  # a bid that came before its auction
    op.on_watermark(5)
    assert fired(op.process(arrow_rows([("a1", None, 10, 20), ("a1", 9, 15, None)]))) == []
    op.on_watermark(11)
    op.process(arrow_rows([("a1", 3, 11, None), ("a2", 1, 8, None)]))  # in the window; a2's time has passed
    assert late(op) == [("a2", 1, 8)]
    assert fired(op.on_watermark(20)) == [("a1", 10, 21, (4, 9, 7, 3), False)]
    assert op.state == {} and len(op.waiting) == 0


def waiting_in(state) -> dict:
    """{key: [(time, k, v), ...]} of the PENDING entries of a snapshot's state."""
    out = {}
    for key, windows in state.items():
        rows = WaitingRows.restored(("k",), [windows[PENDING]])
        out[key] = [(t, *r.values()) for s in rows.segments for t, r in zip(s.times.tolist(), s.table.to_pylist())]
    return out


def test_waiting_rows_are_in_the_snapshot_under_pending_and_their_keys_marked_changed():
    op = lifetime()
    op.process(arrow_rows([("a", 1, 50, None), ("b", 2, 60, None), ("a", 3, 55, None)]))
    changelog = StateChangelog(incremental=True, base_every=4, compact_above=10 ** 9)
    keyed, _, _ = changelog.capture([op])
    assert waiting_in(keyed["w"]) == {"a": [(50, "a", 1), (55, "a", 3)], "b": [(60, "b", 2)]}
    a, b = keyed["w"]["a"][PENDING][0], keyed["w"]["b"][PENDING][0]
    assert a[0] is b[0], "the keys of a segment share its bytes: a snapshot holds them once"
    changelog.parts = []  # as if the full snapshot were uploaded: the next is incremental
    op.on_watermark(55)  # a's waiting rows are dropped: the next snapshot deletes them
    keyed, incremental, _ = changelog.capture([op])
    changed, deleted = keyed["w"]
    assert incremental and deleted == ["a"] and waiting_in(changed) == {"b": [(60, "b", 2)]}


def test_an_end_before_the_rows_time_fails_the_batch_and_nothing_changes():
    op = lifetime()
    op.process(arrow_rows([("a", 1, 5, 30)]))
    with pytest.raises(RecordFailure, match="ends .* before the row's own time"):
        op.process(arrow_rows([("a", 2, 10, None), ("b", 1, 20, 10)]))
    assert fired(op.on_watermark(MAX_TIME)) == [("a", 5, 31, (1, 1, 1, 1), False)]


def test_timestamps_as_the_end_column():
    op = lifetime()
    batch = pa.RecordBatch.from_arrays([pa.array(["a", "a"]), pa.array([1, 2]),
                                        pa.array([30_000_000, None], pa.timestamp("us", tz="UTC"))],
                                       names=["k", "v", "end"])
    op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([10, 30], dtype=np.int64)))
    assert fired(op.on_watermark(29_999)) == []
    assert fired(op.on_watermark(30_000)) == [("a", 10, 30_001, (2, 2, 1, 2), False)]


def test_state_of_another_kind_of_step_under_the_id_is_refused_on_restore():
    """The columnar q4 of 0.6.0 found winners with a `process` step of the same id."""
    with pytest.raises(RestoreError, match="another kind of step"):
        lifetime().restore({7: KeyState(value=(None, None, ()))}, 0)


def typed_rows(keys, values, times, ends, key_type=pa.string(), value_type=None) -> Timed:
    batch = pa.RecordBatch.from_arrays([pa.array(keys, key_type), pa.array(values, value_type),
                                        pa.array(ends, pa.int64())], names=["k", "v", "end"])
    return Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64))


#: (rows that wait, the batch that opens their window, what fires): review 37 found that the
#: waiting rows were cast to each new batch's types, so a column of nulls after one of
#: ints, or int16 keys after int64 ones, failed every later batch; and a waiting key "5"
#: was cast into the window of the key 5.
OTHER_TYPES = {
    "values of nulls": (typed_rows(["a"], [7], [12], [None], value_type=pa.int64()),
                        typed_rows(["a"], [None], [10], [30]), [("a", 10, 31, (2, 7, 7, 7), False)]),
    "narrower keys": (typed_rows([1000], [3], [12], [None], key_type=pa.int64(), value_type=pa.int64()),
                      typed_rows([1000], [1], [10], [30], key_type=pa.int16(), value_type=pa.int8()),
                      [(1000, 10, 31, (2, 3, 3, 1), False)]),  # the waiting row first
    "a key of another type": (typed_rows(["5"], [4], [12], [None], value_type=pa.int64()),
                              typed_rows([5], [1], [10], [30], key_type=pa.int64(), value_type=pa.int64()),
                              [(5, 10, 31, (1, 1, 1, 1), False)]),
}


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("case", sorted(OTHER_TYPES))
def test_waiting_rows_of_other_types_than_the_next_batch_meet_it_by_their_python_keys(case, restart):
    waiting, opener, want = OTHER_TYPES[case]
    op = lifetime()
    op.process(waiting)
    if restart:
        op = restored(op, 0)
    op.process(opener)
    assert fired(op.on_watermark(MAX_TIME)) == want


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("k1, t1, k2, t2", [("5", pa.string(), 5, pa.int64()), (-1, pa.int8(), 2 ** 63, pa.uint64())])
def test_windows_of_keys_no_one_column_holds_fire_together_as_a_batch_per_kind(k1, t1, k2, t2, restart):
    """Review 47: they could not fire at one watermark (the output's key column failed),
    and the subtask failed there after every restore."""
    op = lifetime()
    op.process(typed_rows([k1], [1], [10], [30], key_type=t1, value_type=pa.int64()))
    op.process(typed_rows([k2], [2], [10], [30], key_type=t2, value_type=pa.int64()))
    if restart:
        op = restored(op, 0)
    out = op.on_watermark(100)
    assert isinstance(out, Batches) and len(out.parts) == 2
    assert fired(out) == sorted([(k1, 10, 31, (1, 1, 1, 1), False), (k2, 10, 31, (1, 2, 2, 2), False)], key=repr)
    assert op.state == {}


@pytest.mark.parametrize("unit, end", [("us", 30_000_500), ("ns", 30_000_500_000)])
def test_an_end_timestamp_below_a_millisecond_is_floored(unit, end):
    op = lifetime()
    batch = pa.RecordBatch.from_arrays([pa.array(["a", "a"]), pa.array([1, 2]),
                                        pa.array([end, None], pa.timestamp(unit, tz="UTC"))], names=["k", "v", "end"])
    op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([10, 30_000], dtype=np.int64)))
    assert fired(op.on_watermark(30_000)) == [("a", 10, 30_001, (2, 2, 1, 2), False)]


@pytest.mark.parametrize("lateness", [0, 5])
def test_an_end_at_the_largest_time_fires_its_window_at_the_end_of_the_input(lateness):
    """Review 37: end + 1 wrapped around past int64, and the window held no row, silently."""
    op = lifetime(lateness)
    op.process(arrow_rows([("a", 1, 10, MAX_TIME), ("a", 2, 20, None)]))
    inner, _ = untimed(op.on_watermark(MAX_TIME))
    assert [(r["k"], r["n"], r["top"]) for r in inner.select(["k", "n", "top"]).to_pylist()] == [("a", 2, 2)]
    assert late(op) == [] and op.state == {}


def test_lifetime_windows_and_other_windows_refuse_each_others_state():
    """Review 37: the step meta did not say which windows, so a Tumbling step of the same
    id took Lifetime windows (of any size) and fired them as tumbling ones."""
    from raystream._runtime.operators.columnar_windows import ArrowWindowOp
    from raystream.windows import Tumbling

    op = lifetime()
    op.process(arrow_rows([("a", 1, 10, 30), ("b", 2, 50, None)]))
    tumbling = Tumbling(0.010)
    tumbling.check("w")
    other = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=AGGREGATES,
                               window=WindowSpec(tumbling, 0, "columnar")))
    with pytest.raises(RestoreError, match="Lifetime windows, and this step's windows are others"):
        other.restore_meta([op.state_meta()])  # as a restore runs it: before the state
    other.process(arrow_rows([("a", 1, 10, None)]))
    with pytest.raises(RestoreError, match="this step's are Lifetime windows"):
        lifetime().restore_meta([other.state_meta()])


def test_a_rescale_that_merges_two_subtasks_gives_each_key_its_own_waiting_rows(monkeypatch):
    """Review 37b: segments were numbered per process from 0, and a restore grouped the
    pieces by number alone: merging two subtasks' rows ("a" waiting in one, "b" in the
    other) read "b"'s rows from "a"'s bytes. Each subtask here is a process of its own."""
    from raystream._runtime.operators import lifetime_waiting

    def new_process():
        monkeypatch.setattr(lifetime_waiting, "_PROCESS", uuid.uuid4().hex)
        monkeypatch.setattr(lifetime_waiting, "_numbers", itertools.count())

    states = []
    for key, value in (("a", 1), ("b", 100)):
        new_process()
        op = lifetime()
        op.process(arrow_rows([(key, value, 20, None)]))
        keyed, _, _ = StateChangelog(incremental=False, base_every=4, compact_above=10 ** 9).capture([op])
        states.append(pickle.loads(pickle.dumps(keyed["w"])))
    new_process()
    op = lifetime()
    op.restore({**states[0], **states[1]}, 0)  # key groups are disjoint: as a rescale to one subtask merges them
    op.process(arrow_rows([("a", None, 10, 30), ("b", None, 10, 30)]))
    assert fired(op.on_watermark(MAX_TIME)) == [("a", 10, 31, (2, 1, 1, 1), False),
                                                ("b", 10, 31, (2, 100, 100, 100), False)]


def test_a_row_with_a_value_python_cannot_hold_fails_its_own_batch_when_it_would_wait():
    """Review 37b: a waiting row was never checked, and failed every later batch that
    opened a window of its key (and the rows of other keys in them)."""
    far = pa.array([253_402_300_800_000_000], pa.timestamp("us"))  # the year 10000
    op = LifetimeWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",),
                               arrow=(("n", agg.count()), ("newest", agg.max("seen"))),
                               window=WindowSpec(lifetime().assigner, 0, "columnar")))
    bad = pa.RecordBatch.from_arrays([pa.array(["a"]), far, pa.array([None], pa.int64())], names=["k", "seen", "end"])
    with pytest.raises(RecordFailure, match="OverflowError|year"):
        op.process(Timed(ArrowKeyed(bad, ("k",)), np.array([20], dtype=np.int64)))
    ok = pa.RecordBatch.from_arrays([pa.array(["a", "b"]), pa.array([None, None], pa.timestamp("us")),
                                     pa.array([30, 30], pa.int64())], names=["k", "seen", "end"])
    op.process(Timed(ArrowKeyed(ok, ("k",)), np.array([10, 10], dtype=np.int64)))
    inner, _ = untimed(op.on_watermark(MAX_TIME))
    assert inner.select(["k", "n"]).to_pylist() == [{"k": "a", "n": 1}, {"k": "b", "n": 1}]


def test_a_failed_batch_leaves_the_output_types_as_they_were():
    """Review 37b: a batch that failed still taught the step its types (strings for an
    int max), so later windows fired as strings and checkpoints said so."""
    op = lifetime()
    op.process(arrow_rows([("a", 5, 10, 30), ("b", 7, 10, 30)]))
    bad = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array([None], pa.int64())],
                                     names=["k", "v", "end"])
    with pytest.raises(RecordFailure):  # a string into the max of ints
        op.process(Timed(ArrowKeyed(bad, ("k",)), np.array([12], dtype=np.int64)))
    inner, _ = untimed(op.on_watermark(MAX_TIME))
    assert inner.schema.field("top").type == pa.int64()
    assert inner.select(["k", "top"]).to_pylist() == [{"k": "a", "top": 5}, {"k": "b", "top": 7}]
    assert op.state_meta() == lifetime_meta_of_ints()


def lifetime_meta_of_ints():
    op = lifetime()
    op.process(arrow_rows([("a", 5, 10, 30)]))
    return op.state_meta()
