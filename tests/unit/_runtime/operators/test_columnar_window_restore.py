"""Window steps over Arrow restored from snapshots without Ray: the snapshots keep each
step's aggregates and column types (step_meta), restored windows fire with the types they
had, a restore into other aggregates or another kind of step is refused, and windows
restored from old subtasks that saw other key types fire every key."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.state.snapshot import SubtaskState
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, Timed, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import ArrowJoin, Tumbling

TYPED = (("n", agg.count()), ("low", agg.min("v")), ("total", agg.sum("v")))


def typed_window(aggregates=TYPED) -> ArrowWindowOp:
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=aggregates,
                            window=WindowSpec(Tumbling(1), 0, "columnar")))
    op.assigner.check("w")
    return op


def restored_window(states, aggregates=TYPED) -> ArrowWindowOp:
    """Subtask 0 of 1 of the window step, restored from `states` as R4 does."""
    step = Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=aggregates,
                window=WindowSpec(Tumbling(1), 0, "columnar"))
    merged = merge_states(states, [step], 0, 1, 128)
    op = typed_window(aggregates)
    op.restore_meta(merged.step_meta.get("w", []))  # first, as R4 does (subtask/assembly.py)
    op.restore(merged.keyed.get("w", {}), merged.watermarks.get("w"))
    return op


def window_snapshot(op, subtask=0, parallelism=1, old_layout=False):
    state = SubtaskState(5, "w", subtask, parallelism, keyed={"w": op.snapshot()}, watermarks={"w": op.watermark},
                         step_meta={"w": op.state_meta()})
    if old_layout:
        del state.__dict__["step_meta"]  # as raystream wrote it before snapshots kept step_meta
    return pickle.loads(pickle.dumps(state))


def test_a_window_restored_and_fired_before_any_batch_has_the_types_it_had():
    """Review: restored windows that fired before a batch came typed their columns from
    the Python values: a uint64 key past 2**63 could not fire, an int32 became int64."""
    batch = pa.RecordBatch.from_pydict({"k": pa.array([2**64 - 1, 3], pa.uint64()), "v": pa.array([7, None], pa.int32())})
    reference, before, idle = typed_window(), typed_window(), typed_window()
    for op in (reference, before):
        op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([10, 20])))
    expected, _ = untimed(reference.on_watermark(MAX_TIME))
    assert expected.schema.field("k").type == pa.uint64() and expected.schema.field("low").type == pa.int32()
    # 2 -> 1: the types come from the old subtask that saw a batch
    restored = restored_window([window_snapshot(idle, 0, 2), window_snapshot(before, 1, 2)])
    out, _ = untimed(restored.on_watermark(MAX_TIME))
    assert out.schema == expected.schema and out.to_pylist() == expected.to_pylist()
    again = restored_window([window_snapshot(restored)])  # and the restored step keeps them in its own snapshots
    assert again.key_types == [pa.uint64()] and again.result_types == [pa.int64(), pa.int32(), pa.int64()]


def test_a_window_snapshot_from_before_step_meta_restores_and_fires_with_inferred_types():
    batch = pa.RecordBatch.from_pydict({"k": pa.array([2**64 - 1], pa.uint64()), "v": pa.array([7], pa.int32())})
    before = typed_window()
    before.process(Timed(ArrowKeyed(batch, ("k",)), np.array([10])))
    restored = restored_window([window_snapshot(before, old_layout=True)])
    out, _ = untimed(restored.on_watermark(MAX_TIME))
    assert out.to_pylist()[0] | {"window_start": None, "window_end": None} == {
        "k": 2**64 - 1, "window_start": None, "window_end": None, "n": 1, "low": 7, "total": 7, "update": False}
    assert out.schema.field("k").type == pa.uint64() and out.schema.field("low").type == pa.int64()  # inferred


def test_a_window_restore_into_other_aggregates_is_refused():
    from raystream.errors import RestoreError

    before = typed_window()
    before.process(Timed(ArrowKeyed(pa.RecordBatch.from_pydict({"k": [1], "v": [2]}), ("k",)), np.array([10])))
    with pytest.raises(RestoreError, match=r"aggregates n=count\(\), low=min\('v'\), total=sum\('v'\), and this "
                                           r"job's step has n=count\(\), low=max\('v'\)"):
        restored_window([window_snapshot(before)], aggregates=(("n", agg.count()), ("low", agg.max("v"))))


def test_windows_restored_from_subtasks_that_saw_other_key_types_fire_in_a_type_both_fit():
    """Review: at 2 -> 1 one old subtask had seen int8 keys, the other int64; the first
    type won, the other's keys did not fit it, and every attempt failed firing them."""
    small, big = typed_window(), typed_window()
    for op, k in ((small, pa.array([0], pa.int8())), (big, pa.array([2**40 + 8], pa.int64()))):
        op.process(Timed(ArrowKeyed(pa.RecordBatch.from_pydict({"k": k, "v": pa.array([1], pa.int32())}), ("k",)),
                         np.array([10])))
    restored = restored_window([window_snapshot(small, 0, 2), window_snapshot(big, 1, 2)])
    out, _ = untimed(restored.on_watermark(MAX_TIME))
    assert out.schema.field("k").type == pa.int64()
    assert sorted(r["k"] for r in out.to_pylist()) == [0, 2**40 + 8]


def test_a_columnar_aggregates_state_is_refused_by_a_window_step_of_the_same_id():
    """Review: the kinds of aggregates matched, so the aggregate's per-key tuples were read
    as windows and the restore failed as a crash, again and again."""
    from raystream._runtime.operators.aggregate_op import AggregateOp
    from raystream.errors import RestoreError

    before = AggregateOp(Step("w", "aggregate", ("in",), key_columns=("k",), arrow=TYPED))
    before.process(ArrowKeyed(pa.RecordBatch.from_pydict({"k": [1], "v": [2]}), ("k",)))
    snapshot = SubtaskState(5, "w", 0, 1, keyed={"w": before.snapshot()}, step_meta={"w": before.state_meta()})
    with pytest.raises(RestoreError, match="written by a columnar aggregate step, and this job's step is a columnar window step"):
        restored_window([pickle.loads(pickle.dumps(snapshot))])


def test_a_lifetime_windows_state_is_refused_by_a_step_of_another_kind_of_the_same_id():
    """Review 47: the per-record window step (and the columnar join) checked no meta, so a
    Lifetime window's state was taken as windows of its own and fired its partials as the
    reduce's values; with waiting rows the restore crashed instead of naming the step."""
    from raystream._runtime.operators.columnar_join import ArrowJoinOp
    from raystream._runtime.operators.windows import WindowOp
    from raystream.errors import RestoreError
    from tests.helpers.lifetimes import lifetime

    op = lifetime()
    meta = pickle.loads(pickle.dumps(op.state_meta()))
    reduce_step = Step("w", StepKind.WINDOW, ("in",), fn=lambda a, b: a + b,
                       window=WindowSpec(Tumbling(0.010), 0, "reduce"))
    join_step = Step("w", StepKind.JOIN, ("l", "r"), key_columns=("k",), arrow=ArrowJoin(("k",), ("k",)),
                     window=WindowSpec(Tumbling(0.010), 0, "columnar"))
    for other in (WindowOp(reduce_step), ArrowJoinOp(join_step)):
        with pytest.raises(RestoreError, match="written by a columnar window step of lifetime windows"):
            other.restore_meta([meta])


def test_a_columnar_joins_state_and_a_windows_are_refused_by_each_other_and_by_per_record_steps():
    """Review 47: the columnar join kept no meta, so its state went into any step of its id,
    and it took any columnar window's (a join's own checkpoints from before hold none: taken)."""
    from raystream._runtime.operators.columnar_join import ArrowJoinOp
    from raystream._runtime.operators.windows import JoinOp
    from raystream.errors import RestoreError

    def join() -> ArrowJoinOp:
        return ArrowJoinOp(Step("w", StepKind.JOIN, ("l", "r"), key_columns=("k",), arrow=ArrowJoin(("k",), ("k",)),
                                window=WindowSpec(Tumbling(0.010), 0, "columnar")))

    join_meta = pickle.loads(pickle.dumps(join().state_meta()))
    with pytest.raises(RestoreError, match="written by a columnar join step, and this job's step is a columnar window step"):
        typed_window().restore_meta([join_meta])
    per_record = JoinOp(Step("w", StepKind.JOIN, ("l", "r"), fn=lambda a, b: (a, b),
                             window=WindowSpec(Tumbling(0.010), 0, "join")))
    with pytest.raises(RestoreError, match="written by a columnar join step"):
        per_record.restore_meta([join_meta])
    with pytest.raises(RestoreError, match="written by a columnar window step"):
        join().restore_meta([typed_window().state_meta()])
    join().restore_meta([join_meta, {}, None])  # its own, and a join's from before 0.8.1 (no meta)


def test_a_window_state_keyed_by_other_columns_is_refused():
    """Review 47: a checkpoint of the step keyed by "k" restored into the step keyed by
    ("k", "k2") was taken: a restored key "ab" fired as k="a", k2="b"."""
    from raystream.errors import RestoreError

    before = typed_window()
    before.process(Timed(ArrowKeyed(pa.RecordBatch.from_pydict({"k": [1], "v": [2]}), ("k",)), np.array([1])))
    meta = pickle.loads(pickle.dumps(before.state_meta()))
    after = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k", "k2"), arrow=TYPED,
                               window=WindowSpec(Tumbling(0.010), 0, "columnar")))
    with pytest.raises(RestoreError, match=r"keyed by \['k'\], and this step keys by \['k', 'k2'\]"):
        after.restore_meta([meta])
    # review 47b: the same columns in another order, ("a", "x") fired as k2="a", k="x"
    two = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k", "k2"), arrow=TYPED,
                             window=WindowSpec(Tumbling(0.010), 0, "columnar")))
    swapped = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k2", "k"), arrow=TYPED,
                                 window=WindowSpec(Tumbling(0.010), 0, "columnar")))
    with pytest.raises(RestoreError, match=r"keyed by \['k', 'k2'\], and this step keys by \['k2', 'k'\]"):
        swapped.restore_meta([pickle.loads(pickle.dumps(two.state_meta()))])
    two.restore_meta([two.state_meta()])  # its own


def test_a_per_record_steps_state_kept_with_a_ttl_is_refused_by_columnar_steps():
    """Review 47b: a TTL's meta names no kind, and the columnar steps took a meta without
    one as their own: they would read the TTL's entries as their partials."""
    from raystream._runtime.operators.aggregate_op import AggregateOp
    from raystream._runtime.operators.columnar_join import ArrowJoinOp
    from raystream._runtime.time.expiry import TTL_META
    from raystream.errors import RestoreError

    ttl_meta = {TTL_META: "event", "ttl_ms": 1000}
    join = ArrowJoinOp(Step("w", StepKind.JOIN, ("l", "r"), key_columns=("k",), arrow=ArrowJoin(("k",), ("k",)),
                            window=WindowSpec(Tumbling(0.010), 0, "columnar")))
    for op in (typed_window(), AggregateOp(Step("w", "aggregate", ("in",), key_columns=("k",), arrow=TYPED)), join):
        with pytest.raises(RestoreError, match="per-record step with a time-to-live"):
            op.restore_meta([ttl_meta])
    typed_window().restore_meta([{"aggregates": typed_window().state_meta()["aggregates"]}])  # 0.4.0's first form


_KEY_TYPES = [(pa.int8(), 100), (pa.int16(), 30_000), (pa.int32(), 2**31 - 1), (pa.int64(), 2**40 + 8),
              (pa.uint8(), 255), (pa.uint32(), 2**32 - 1), (pa.uint64(), 2**64 - 1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(_KEY_TYPES))), min_size=2, max_size=4), st.integers(1, 3))
def test_windows_restored_from_old_subtasks_of_any_key_types_fire_every_key(kinds, new_parallelism):
    """The kind of the step_meta defect above, over key types: keys of several integer
    types, each in the old subtask that owns its key group (of 2); restored into 1 to 3
    subtasks, every window fires with its key, whatever the types the old subtasks saw."""
    keys = [(kind, value - i) for i, (kind, value) in enumerate(_KEY_TYPES[k] for k in kinds)]  # distinct
    old = [typed_window(), typed_window()]
    for i, (kind, value) in enumerate(keys):
        owner = next(s for s in range(2) if key_group(value, 128) in groups_of_subtask(s, 2, 128))
        old[owner].process(Timed(ArrowKeyed(pa.RecordBatch.from_pydict(
            {"k": pa.array([value], kind), "v": pa.array([i], pa.int32())}), ("k",)), np.array([10])))
    snapshots = [window_snapshot(op, i, 2) for i, op in enumerate(old)]
    fired = []
    for subtask in range(new_parallelism):
        step = Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=TYPED,
                    window=WindowSpec(Tumbling(1), 0, "columnar"))
        merged = merge_states(snapshots, [step], subtask, new_parallelism, 128)
        op = typed_window()
        op.restore_meta(merged.step_meta.get("w", []))
        op.restore(merged.keyed.get("w", {}), merged.watermarks.get("w"))
        out = op.on_watermark(MAX_TIME)
        if len(out):
            fired += [r["k"] for r in untimed(out)[0].to_pylist()]
    assert sorted(fired) == sorted(value for _, value in keys)


def late_window(lateness_ms: int) -> ArrowWindowOp:
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=TYPED,
                            window=WindowSpec(Tumbling(1), lateness_ms, "columnar")))
    op.assigner.check("w")
    return op


def rows(keys, values, times) -> Timed:
    batch = pa.RecordBatch.from_pydict({"k": pa.array(keys, pa.int64()), "v": pa.array(values, pa.int32())})
    return Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64))


def fired(batch) -> list[tuple]:
    if not len(batch):
        return []
    return [(r["k"], r["total"], r["update"]) for r in untimed(batch)[0].to_pylist()]


@pytest.mark.parametrize("per_key", [False, True], ids=["window-major", "per-key"])
def test_a_window_fired_on_a_subtask_ahead_does_not_fire_again_after_a_rescale(per_key):
    """Review 39: at 2 -> 1 the step restarts from the older watermark, and a window that
    had fired on the subtask whose watermark was ahead fired again at that watermark, as
    an update with the same values. It fires no more; a row within the lateness makes its
    update at once, and it is dropped after the lateness."""
    keys = {s: next(k for k in range(100) if key_group(k, 128) in groups_of_subtask(s, 2, 128)) for s in range(2)}
    ahead, behind = late_window(5_000), late_window(5_000)
    ahead.process(rows([keys[0]], [3], [100]))
    assert fired(ahead.on_watermark(2_000)) == [(keys[0], 3, False)]  # [0, 1000) fired, kept for the lateness
    behind.process(rows([keys[1]], [4], [600]))
    behind.on_watermark(300)
    snapshots = [window_snapshot(ahead, 0, 2), window_snapshot(behind, 1, 2)]
    step = Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=TYPED,
                window=WindowSpec(Tumbling(1), 5_000, "columnar"))
    merged = merge_states(snapshots, [step], 0, 1, 128)
    op = late_window(5_000)
    op.restore_meta(merged.step_meta.get("w", []))
    op.restore(merged.keyed.get("w", {}), merged.watermarks.get("w"))
    assert op.watermark == 300
    if per_key:
        op._columnar = False
    assert fired(op.on_watermark(1_500)) == [(keys[1], 4, False)]  # only the window behind fires
    assert fired(op.process(rows([keys[0]], [5], [200]))) == [(keys[0], 8, True)]  # within the lateness: an update
    assert fired(op.on_watermark(7_000)) == []
    assert op.state == {}


def test_an_aggregate_or_join_state_keyed_by_other_columns_is_refused():
    """The simulation's runs into a changed job (tests/simulation/changed.py): a columnar
    aggregate keyed by ("k", "id") took the state of the step keyed by "k", and left its
    running values behind (its keys, values, never met the new keys, tuples). The joins
    did alike. Metas from before 0.8.2 do not say which columns, and are taken."""
    from raystream._runtime.operators.aggregate_op import AggregateOp
    from raystream._runtime.operators.columnar_join import ArrowJoinOp
    from raystream.errors import RestoreError

    def aggregate(keys) -> AggregateOp:
        return AggregateOp(Step("w", "aggregate", ("in",), key_columns=keys, arrow=TYPED))

    def join(keys) -> ArrowJoinOp:
        return ArrowJoinOp(Step("w", StepKind.JOIN, ("l", "r"), key_columns=keys, arrow=ArrowJoin(keys, keys),
                                window=WindowSpec(Tumbling(0.010), 0, "columnar")))

    for make in (aggregate, join):
        one, two = pickle.loads(pickle.dumps(make(("k",)).state_meta())), make(("k", "id")).state_meta()
        with pytest.raises(RestoreError, match=r"keyed by \['k'\], and this step keys by \['k', 'id'\]"):
            make(("k", "id")).restore_meta([one])
        with pytest.raises(RestoreError, match=r"keyed by \['k', 'id'\], and this step keys by \['id', 'k'\]"):
            make(("id", "k")).restore_meta([two])
        make(("k", "id")).restore_meta([two])  # its own
        make(("renamed",)).restore_meta([one])  # columns renamed upstream cannot be told apart
        old = {key: value for key, value in one.items() if key == "op"}  # 0.8.1
        make(("k", "id")).restore_meta([old])
