"""Columnar window steps with keys and values that Arrow and Python see differently:
other types in a later batch, keys Arrow splits (-0.0 and 0.0) or merges ("a" and b"a",
date64 within one day), several key columns, values Python cannot hold, and times of a
zone with summer time. Whatever the layout, the step fires what the per-key layout fires
and its snapshots restore it."""
from __future__ import annotations

import datetime
import pickle

import numpy as np
import pyarrow as pa
import pytest

from raystream import aggregates as agg
from raystream._arrow_values import python_values
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.window_tables import fits_columnar
from raystream._runtime.state.changelog import StateChangelog, apply_part
from raystream._runtime.state.snapshot import PartRef
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, Batches, Timed, untimed
from raystream.windows import Session, Sliding, Tumbling
from tests.helpers.window_ops import fired, rows_batch, window


def _count_of() -> ArrowWindowOp:
    return window(Tumbling(0.010), aggregates=(("n", agg.count()),))


def _keys_batch(keys, kind, times) -> Timed:
    return Timed(ArrowKeyed(pa.RecordBatch.from_arrays([pa.array(keys, kind)], names=["k"]), ("k",)),
                 np.array(times, dtype=np.int64))


def test_a_batch_of_other_types_moves_the_windows_to_the_per_key_layout():
    op, ref = window(Sliding(0.010, 0.005)), window(Sliding(0.010, 0.005), per_key=True)
    for o in (op, ref):
        o.process(rows_batch([("a", 1, 1), ("b", 5, 7)]))
    assert op._tables is not None
    for o in (op, ref):  # floats: min and max merge otherwise in Arrow (NaN, -0.0)
        o.process(rows_batch([("a", 2.5, 3), ("c", -0.0, 8)], pa.float64()))
    assert op._tables is None and op.state == ref.state
    got, want = fired(op.on_watermark(MAX_TIME)), fired(ref.on_watermark(MAX_TIME))
    assert sorted(got, key=repr) == sorted(want, key=repr) and len(got) == 6


def test_keys_arrow_may_split_stay_in_the_per_key_layout():
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()),))
    batch = pa.RecordBatch.from_pydict({"k": [-0.0, 0.0, 1.5], "v": [1, 2, 3]})
    op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([1, 2, 3])))
    assert op._tables is None
    assert [(r[0], r[3]) for r in fired(op.on_watermark(MAX_TIME))] == [(0.0, 2), (1.5, 1)]


def test_several_key_columns_are_one_key_as_a_tuple():
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()), ("top", agg.max("v"))), keys=("k", "j"))
    ref = window(Tumbling(0.010), per_key=True, aggregates=(("n", agg.count()), ("top", agg.max("v"))), keys=("k", "j"))
    batch = pa.RecordBatch.from_pydict({"k": ["a", "a", None, "a"], "j": [1, 2, 1, 1], "v": [5, 6, 7, None]})
    for o in (op, ref):
        o.process(Timed(ArrowKeyed(batch, ("k", "j")), np.array([1, 2, 3, 12])))
    assert op.state_keys() == 3  # counted by Arrow, a null key too
    assert op._tables is not None and op.state == ref.state and set(op.state) == {("a", 1), ("a", 2), (None, 1)}
    assert fired(op.on_watermark(MAX_TIME)) == fired(ref.on_watermark(MAX_TIME))


def test_date64_keys_arrow_tells_apart_are_one_key_through_a_checkpoint():
    """Review: date64 values within one day are one Python date but two Arrow keys; held
    window-major they fired as two rows of one key, and a snapshot kept one of them."""
    keys = pa.array([0, 5, 0], pa.int64()).cast(pa.date64())
    batch = Timed(ArrowKeyed(pa.RecordBatch.from_arrays([keys, pa.array([1, 2, 3])], names=["k", "v"]), ("k",)),
                  np.array([1, 2, 3]))
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()),))
    op.process(batch)
    assert op.state_keys() == len(op.state) == 1
    restored = window(Tumbling(0.010), aggregates=(("n", agg.count()),))
    restored.restore(pickle.loads(pickle.dumps(op.snapshot())), op.watermark)
    for o in (op, restored):
        assert [(r[0], r[3]) for r in fired(o.on_watermark(MAX_TIME))] == [(keys[0].as_py(), 3)]


def test_a_value_python_cannot_hold_fails_its_batch_not_every_checkpoint():
    """Review: a max of a timestamp past year 9999 went into the window-major tables, and
    every snapshot of the open window failed (the job restarted until it gave up)."""
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()), ("latest", agg.max("t"))))
    op.process(Timed(ArrowKeyed(pa.RecordBatch.from_arrays(
        [pa.array(["a"]), pa.array([1], pa.timestamp("ms"))], names=["k", "t"]), ("k",)), np.array([1])))
    before = pickle.dumps(op.snapshot())
    far = pa.RecordBatch.from_arrays([pa.array(["a", "b"]), pa.array([1, 2 * 253402300800000], pa.timestamp("ms"))],
                                     names=["k", "t"])
    with pytest.raises(Exception, match="out of range"):
        op.process(Timed(ArrowKeyed(far, ("k",)), np.array([2, 3])))
    assert pickle.dumps(op.snapshot()) == before  # the state as it was, and it still snapshots


def test_keys_arrow_would_make_one_are_not_taken_back_into_tables():
    """Review 46: "a" and b"a" (a key column of strings in some batches, binary in others)
    are two keys per key; a restore's state taken back into a string column made them one,
    and the restored step fired one merged row where the unbroken step fired two."""
    op = _count_of()
    op.process(_keys_batch(["a"], pa.string(), [1]))
    op.process(_keys_batch([b"a"], pa.binary(), [2]))  # another type: per key from now on
    restored = _count_of()
    restored.restore(pickle.loads(pickle.dumps(op.snapshot())), op.watermark)
    for step in (op, restored):
        step.process(_keys_batch(["z"], pa.string(), [3]))
    assert restored._tables is None  # stays per key: its keys do not fit one column
    assert sorted(map(repr, fired(restored.on_watermark(MAX_TIME)))) == \
        sorted(map(repr, fired(op.on_watermark(MAX_TIME))))


def test_a_changed_key_arrow_reads_as_a_held_one_is_still_written_deleted():
    """Review 46: the deleted keys of an incremental snapshot were found with Arrow's is_in
    over the changed keys made into the key column's type, where b"a" is "a": a changed
    b"a" whose windows were gone counted as held while "a" was, and came back on restore."""
    op = _count_of()
    op.process(_keys_batch(["a"], pa.string(), [25]))
    op.restore({b"a": {(0, 10): [(1,), True]}, "a": {(20, 30): [(1,), False]}}, 19)
    op.process(_keys_batch(["a"], pa.string(), [26]))  # back into tables: b"a"'s window is past, dropped
    assert op._tables is not None and b"a" in op.changed
    changelog = StateChangelog(incremental=True, base_every=10, compact_above=0)
    changelog.added(PartRef("run/snapshots/1/x.snap", "0" * 64, 1, 1, True))
    keyed, _, _ = changelog.capture([op])
    assert keyed["w"][1] == [b"a"]
    read_back = {"w": {b"a": {(0, 10): [(1,), True]}, "a": {(20, 30): [(1,), False]}}}
    apply_part(read_back, pickle.loads(pickle.dumps(keyed)), False)
    assert read_back["w"] == op.state


def test_min_and_max_of_a_zone_with_summer_time_are_python_s_in_the_hour_the_clocks_go_back():
    """Review 46: Python orders two times of one zone by the clock (PEP 495), Arrow by the
    instant; in Paris's repeated hour 02:15 CET is later than 02:30 CEST but compares
    smaller. Such min and max stay per key, so every layout gives the per-record result."""
    zone = pa.timestamp("ms", tz="Europe/Paris")
    utc = datetime.timezone.utc
    early = int(datetime.datetime(2026, 10, 25, 0, 30, tzinfo=utc).timestamp() * 1000)  # 02:30 CEST
    late = int(datetime.datetime(2026, 10, 25, 1, 15, tzinfo=utc).timestamp() * 1000)  # 02:15 CET, later
    values = python_values(pa.array([early, late], zone))
    outputs = []
    for per_key in (False, True):
        op = window(Tumbling(10.0), per_key=per_key, aggregates=(("latest", agg.max("t")), ("earliest", agg.min("t"))))
        for t in (early, late):  # a batch each: the layouts merge their partials, Arrow or Python
            rows = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array([t], zone)], names=["k", "t"])
            op.process(Timed(ArrowKeyed(rows, ("k",)), np.array([1], dtype=np.int64)))
        outputs.append(fired(op.on_watermark(MAX_TIME)))
    assert outputs[0] == outputs[1]
    inner = outputs[0][0]
    assert max(values) in inner and min(values) in inner
    assert fits_columnar(window(Tumbling(10.0)).folds, [pa.string()], [pa.timestamp("ms", tz="+02:00")])


#: keys that came in key columns of types no one Arrow column holds. Review 47: their
#: windows could not fire together (the output's key column failed), so the subtask failed
#: at that watermark, and again after every restore.
MIXED_KEYS = {"a string and an int": (("5", pa.string()), (5, pa.int64())),
              "ints of both signs past int64": ((-1, pa.int8()), (2 ** 63, pa.uint64()))}


def _counted(assigner) -> ArrowWindowOp:
    return window(assigner, aggregates=(("n", agg.count()),))


def _restored(ops: list[ArrowWindowOp], assigner) -> ArrowWindowOp:
    """A step restored from the snapshots of `ops` (old subtasks), merged as a rescale merges."""
    new = _counted(assigner)
    new.restore_meta([op.state_meta() for op in ops])
    state = {k: v for op in ops for k, v in pickle.loads(pickle.dumps(op.snapshot())).items()}
    new.restore(state, max(op.watermark for op in ops))
    return new


@pytest.mark.parametrize("assigner", [Tumbling(0.010), Sliding(0.010, 0.005), Session(0.005)], ids=repr)
@pytest.mark.parametrize("restart", ["no", "restored", "two subtasks merged"])
@pytest.mark.parametrize("case", sorted(MIXED_KEYS))
def test_windows_of_keys_no_one_column_holds_fire_as_a_batch_per_kind_of_key(case, restart, assigner):
    (k1, t1), (k2, t2) = MIXED_KEYS[case]
    first, second = _keys_batch([k1], t1, [1]), _keys_batch([k2, k2], t2, [2, 3])
    alone = []  # the oracle: what each kind of key fires in a step of its own
    for batch in (first, second):
        ref = _counted(assigner)
        ref.process(batch)
        alone += fired(ref.on_watermark(MAX_TIME))
    ops = [_counted(assigner), _counted(assigner)]
    ops[0].process(first)
    ops[1 if restart == "two subtasks merged" else 0].process(second)
    op = ops[0] if restart == "no" else _restored(ops if restart == "two subtasks merged" else ops[:1], assigner)
    out = op.on_watermark(MAX_TIME)
    assert isinstance(out, Batches) and len(out.parts) == 2
    for part in out.parts:  # a kind of key a batch, in a column of its type
        assert len({type(k) for k in untimed(part)[0].column("k").to_pylist()}) == 1
    assert sorted(fired(out), key=repr) == sorted(alone, key=repr)
    assert op.records_out == len(alone) and op.state == {}


def test_keys_of_several_columns_no_one_column_holds_fire_as_a_batch_per_kind():
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()),), keys=("k", "j"))
    for k, kind in (("5", pa.string()), (5, pa.int64())):
        batch = pa.RecordBatch.from_arrays([pa.array([k, k], kind), pa.array([7, 8])], names=["k", "j"])
        op.process(Timed(ArrowKeyed(batch, ("k", "j")), np.array([1, 2], dtype=np.int64)))
    out = op.on_watermark(MAX_TIME)
    assert isinstance(out, Batches)
    counts = [(row[0], row[1], row[4]) for row in fired(out)]  # (k, j, window_start, window_end, n, ...)
    assert sorted(counts, key=repr) == sorted([("5", 7, 1), ("5", 8, 1), (5, 7, 1), (5, 8, 1)], key=repr)
