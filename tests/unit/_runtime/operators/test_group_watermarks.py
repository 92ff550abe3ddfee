"""Key groups that keep the watermark of the old subtask they came from after a rescale
(R4, operators/group_watermarks.py): a record of such a group is judged by it, so a window
that subtask had dropped is not opened and fired again, in every kind of window step."""
from __future__ import annotations

import operator
import pickle

import numpy as np
import pyarrow as pa
import pytest

from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators.columnar_join import ArrowJoinOp
from raystream._runtime.operators.columnar_lifetimes import LifetimeWindowOp
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.group_watermarks import by_watermark, joined
from raystream._runtime.operators.windows import JoinOp, WindowOp
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.state.snapshot import SubtaskState
from raystream._runtime.subtask.assembly import build_operators
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.config import Guarantee, RuntimeConfig
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import ArrowJoin, Lifetime, Session, Sliding, Tumbling

AHEAD, BEHIND = 10_000, 1_000  # the old subtask of key "a" was at AHEAD; the step restores at BEHIND
GROUPS = {key_group("a", 128): AHEAD}


def checked(assigner):
    assigner.check("w")
    return assigner


def per_record(assigner, how="reduce", kind=StepKind.WINDOW, cls=WindowOp):
    def make(lateness):
        return cls(Step("w", kind, ("in",), fn=operator.add if how == "reduce" else (lambda l, r: (l, r)),
                        window=WindowSpec(checked(assigner), lateness, how)))
    return make


def columnar(assigner, cls=ArrowWindowOp):
    def make(lateness):
        return cls(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=(("n", agg.count()),),
                        window=WindowSpec(checked(assigner), lateness, "columnar")))
    return make


def arrow_join(lateness):
    return ArrowJoinOp(Step("w", StepKind.JOIN, ("l", "r"), key_columns=("k",), arrow=ArrowJoin(("k",), ("k",)),
                            window=WindowSpec(checked(Tumbling(1)), lateness, "columnar")))


def rows(op, keyed: list[tuple[str, int]]):
    """A batch of (key, time) rows as the step takes it (a Lifetime window's rows open one
    that ends 100 ms after them)."""
    keys, times = [k for k, _ in keyed], [t for _, t in keyed]
    if isinstance(op, (WindowOp, JoinOp)):
        return Timed(KeyedBatch(keys, [1] * len(keys)), times)
    columns = {"k": pa.array(keys, pa.string()), "v": pa.array([1] * len(keys), pa.int64())}
    if isinstance(op, LifetimeWindowOp):
        columns["end"] = pa.array([t + 100 for t in times], pa.int64())
    return Timed(ArrowKeyed(pa.RecordBatch.from_pydict(columns), ("k",)), np.array(times, dtype=np.int64))


def feed(op, keyed):
    batch = rows(op, keyed)
    return op.process_side(batch, 0) if isinstance(op, (JoinOp, ArrowJoinOp)) else op.process(batch)


def keys_of(batch) -> list[str]:
    if not len(batch):
        return []
    inner, _ = untimed(batch)
    return inner.keys if isinstance(inner, KeyedBatch) else inner.column("k").to_pylist()


def late(op) -> int:
    return sum(len(b) for b in op.take_late_batches())


KINDS = {
    "tumbling": per_record(Tumbling(1)),
    "sliding": per_record(Sliding(2, 1)),
    "session": per_record(Session(1)),
    "join": per_record(Tumbling(1), how="join", kind=StepKind.JOIN, cls=JoinOp),
    "columnar tumbling": columnar(Tumbling(1)),
    "columnar sliding": columnar(Sliding(2, 1)),
    "columnar session": columnar(Session(1)),
    "lifetime": columnar(Lifetime("end"), cls=LifetimeWindowOp),
    "columnar join": arrow_join,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_record_late_for_its_key_groups_old_watermark_is_late_though_on_time_for_the_steps(kind):
    """Before 0.7.1, key "a"'s record opened the window its old subtask had dropped, and
    the window fired a second time with update=False."""
    op = KINDS[kind](0)
    op.restore({}, BEHIND)
    op.restore_group_watermarks(GROUPS, 128)
    joins = kind.endswith("join")
    if joins:  # both sides: a pair needs a right row too
        assert not len(op.process_side(rows(op, [("a", 2_500), ("b", 2_500)]), 1))
    assert not len(feed(op, [("a", 2_500), ("b", 2_500)]))
    assert late(op) == (2 if joins else 1)  # "a"'s, not "b"'s
    out = keys_of(op.on_watermark(5_000))
    assert out and set(out) == {"b"}
    assert op.group_watermarks == GROUPS
    op.on_watermark(AHEAD)
    assert op.group_watermarks == {}
    # the step's own watermark judges "a" from now on
    assert not len(feed(op, [("a", 8_500)])) and late(op) == 1


def test_the_key_groups_watermarks_are_kept_until_the_steps_passes_them_and_need_nothing_once_it_has():
    op = KINDS["tumbling"](0)
    op.restore({}, BEHIND)
    op.restore_group_watermarks({**GROUPS, key_group("b", 128): BEHIND}, 128)
    assert op.group_watermarks == GROUPS  # one not ahead is not kept
    op.on_watermark(AHEAD - 1)
    assert op.group_watermarks == GROUPS
    op.on_watermark(AHEAD)
    assert op.group_watermarks == {}


def test_a_record_within_the_lateness_of_a_window_its_old_subtask_fired_is_emitted_at_once():
    """On the old subtask ahead, a window past the watermark that a record opens is emitted
    at once, then cleaned up, never fired by the watermark again."""
    for kind in ("tumbling", "columnar tumbling"):
        op = KINDS[kind](2_000)
        op.restore({}, BEHIND)
        op.restore_group_watermarks(GROUPS, 128)
        assert keys_of(feed(op, [("a", 9_500), ("b", 9_500)])) == ["a"]
        assert keys_of(op.on_watermark(AHEAD)) == ["b"]
        assert not len(op.on_watermark(20_000))


def test_a_columnar_window_stays_per_key_while_key_groups_keep_watermarks_then_goes_window_major():
    op = KINDS["columnar tumbling"](0)
    op.restore({}, BEHIND)
    op.restore_group_watermarks(GROUPS, 128)
    feed(op, [("b", 2_500)])
    assert op._tables is None and op._columnar
    op.on_watermark(AHEAD)
    feed(op, [("b", 12_500)])
    assert op._tables is not None


def test_a_batch_splits_by_its_rows_watermarks_keeping_each_keys_rows_in_order():
    keys = ["a", "b", "a", "c", "b", "a"]
    parts = dict(by_watermark(Timed(KeyedBatch(keys, list(range(6))), [10, 11, 12, 13, 14, 15]), GROUPS, BEHIND, 128))
    assert sorted(parts) == [BEHIND, AHEAD]
    assert parts[AHEAD].batch.values == [0, 2, 5] and parts[AHEAD].times == [10, 12, 15]
    assert parts[BEHIND].batch.keys == ["b", "c", "b"] and parts[BEHIND].times == [11, 13, 14]
    batch = pa.RecordBatch.from_pydict({"k": keys, "v": list(range(6))})
    arrow = dict(by_watermark(Timed(ArrowKeyed(batch, ("k",)), np.arange(6)), GROUPS, BEHIND, 128))
    assert arrow[AHEAD].batch.batch.column("v").to_pylist() == [0, 2, 5]
    assert arrow[BEHIND].times.tolist() == [1, 3, 4]
    one = Timed(ArrowKeyed(batch, ("k",)), np.arange(6))
    assert by_watermark(one, {}, BEHIND, 128) == [(BEHIND, one)]


def test_the_parts_outputs_join_into_one_batch_of_their_kind():
    narrow = pa.RecordBatch.from_pydict({"k": pa.array(["a"]), "n": pa.array([1], pa.int32())})
    wide = pa.RecordBatch.from_pydict({"k": pa.array(["b"]), "n": pa.array([2], pa.int64())})
    out = joined([Timed(narrow, np.array([5])), [], Timed(wide, np.array([6]))])  # two schemas: kept apart
    assert [(p.batch.column("n").type, p.times.tolist()) for p in out.parts] == [(pa.int32(), [5]), (pa.int64(), [6])]
    out = joined([Timed(narrow, np.array([5])), Timed(narrow, np.array([7]))])
    assert out.batch.column("n").to_pylist() == [1, 1] and out.times.tolist() == [5, 7]
    out = joined([Timed(KeyedBatch(["a"], [1]), [5]), Timed(KeyedBatch(["b"], [2]), [6])])
    assert (out.batch.keys, out.batch.values, out.times) == (["a", "b"], [1, 2], [5, 6])
    assert joined([[], []]) == []


def test_a_columnar_join_window_past_its_end_emits_its_pairs_once_through_a_rescale():
    """Review 41: on the old subtask ahead (watermark 2,029, lateness 1,500) a left row
    opened window [0, 1000) past its end, then a right row joined it. 0.7.1 emits the pair
    then and marks the window, so after a rescale at an older watermark it fires no more.
    0.7.0 neither emitted nor marked it (review 41b): restored, such a window emits its
    pairs at the next watermark, once."""
    op = arrow_join(1_500)
    op.on_watermark(2_029)
    assert not len(op.process_side(rows(op, [("a", 151)]), 0))
    assert keys_of(op.process_side(rows(op, [("a", 628)]), 1)) == ["a"]  # the window fired: its pair now
    state = op.snapshot()
    assert [entry[1] for entry in state["a"].values()] == [True]
    for emitted, want in ((True, []), (False, ["a"])):  # 0.7.1's state, then 0.7.0's
        state["a"][(0, 1_000)][1] = emitted
        restored = arrow_join(1_500)
        restored.restore(pickle.loads(pickle.dumps(state)), 0)
        restored.restore_group_watermarks({key_group("a", 128): 2_029}, 128)
        out = [k for mark in (1, 1_000, 2_029, 2_600, 10_000) for k in keys_of(restored.on_watermark(mark))]
        assert out == want


def test_a_columnar_join_row_within_the_lateness_of_a_fired_window_emits_its_new_pairs_at_once():
    """As the per-record join emits what a fired window takes at once; only the new pairs,
    so the output holds each pair once."""
    op = arrow_join(5_000)
    op.restore({}, 0)
    op.process_side(rows(op, [("a", 100)]), 0)
    op.process_side(rows(op, [("a", 200)]), 1)
    assert len(op.on_watermark(999)) == 1
    left = op.process_side(rows(op, [("a", 300), ("b", 300)]), 0)  # "b" has no right row: nothing
    assert keys_of(left) == ["a"] and untimed(left)[1].tolist() == [999]
    right = op.process_side(rows(op, [("a", 400)]), 1)  # with both left rows
    assert keys_of(right) == ["a", "a"]
    assert not len(op.on_watermark(10_000))


def test_a_subtask_builds_its_window_step_with_the_key_groups_watermarks_of_its_restore():
    """Review 41 (simulation helper): assembly read `spec.max_parallelism`, which a
    SubtaskSpec lacks, so every restore of a chain with a window step failed."""
    step = Step("w", StepKind.WINDOW, ("in",), fn=operator.add, window=WindowSpec(checked(Tumbling(1)), 0, "reduce"))
    spec = SubtaskSpec("job", "w", [step], 0, 1, 1, RuntimeConfig(), Guarantee.EXACTLY_ONCE, "/none", "run", 2)
    states = [SubtaskState(7, "w", i, 2, keyed={"w": {}}, watermarks={"w": mark}) for i, mark in enumerate((BEHIND, AHEAD))]
    (op,) = build_operators(spec, merge_states(states, [step], 0, 1, spec.runtime.max_parallelism))
    assert op.watermark == BEHIND and op.max_parallelism == spec.runtime.max_parallelism
    assert op.group_watermarks == {g: AHEAD for g in groups_of_subtask(1, 2, spec.runtime.max_parallelism)}


def test_parts_whose_arrow_rows_make_no_one_table_are_joined_as_batches():
    """Review 48b: a batch's parts (one per key group watermark) whose outputs are Arrow
    rows of schemas that do not unify (keys of several kinds) failed the concat, an
    exception rather than a batch failure; a part's own `Batches` are taken apart too."""
    from raystream._runtime.transport.batch import Batches

    strings = Timed(pa.RecordBatch.from_pydict({"k": ["5"]}), np.array([1]))
    ints = Timed(pa.RecordBatch.from_pydict({"k": [5]}), np.array([2]))
    more = Timed(pa.RecordBatch.from_pydict({"k": [6]}), np.array([3]))
    out = joined([strings, Batches([ints, more])])
    assert isinstance(out, Batches) and [untimed(p)[0].column("k").to_pylist() for p in out.parts] == [["5"], [5], [6]]
    same = joined([ints, Batches([more])])  # of one schema: one batch, as before
    assert untimed(same)[0].column("k").to_pylist() == [5, 6] and untimed(same)[1].tolist() == [2, 3]
    floats = Timed(pa.RecordBatch.from_pydict({"k": [1.5]}), np.array([4]))
    apart = joined([ints, floats])  # review 48c: concatenated, the key 5 became 5.0
    assert [untimed(p)[0].column("k").to_pylist() for p in apart.parts] == [[5], [1.5]]
