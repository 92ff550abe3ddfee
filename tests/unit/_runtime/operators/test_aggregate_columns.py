"""The aggregate step's state in numpy columns (operators/aggregate_columns.py) does
exactly what the per-key layout does: the same output rows, columns and types, the same
per-key state (value types too) in snapshots and in incremental snapshots, batch after
batch, across restores from either layout, and when a batch moves it to the per-key
layout (an int sum past int64, partials of other types, a custom aggregate)."""
from __future__ import annotations

import decimal
import pickle
import warnings

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import aggregates as agg
from raystream._runtime.operators.aggregate_op import AggregateOp
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.state.changelog import StateChangelog, apply_part
from raystream._runtime.state.snapshot import PartRef
from raystream._runtime.transport.batch import ArrowKeyed, Timed
from raystream.graph import Step


class Spread(agg.Aggregate):
    """max - min: an aggregate of one's own (the columns do not hold it)."""

    def __init__(self, column):
        self.column = column

    def partials(self):
        return [agg.Partial("min", self.column), agg.Partial("max", self.column)]

    def merge(self, state, partials):
        lo, hi = partials
        if lo is None:
            return state
        return (lo, hi) if state is None else (min(state[0], lo), max(state[1], hi))


BUILT_INS = (("n", agg.count()), ("n_v", agg.count("v")), ("total", agg.sum("v")), ("low", agg.min("v")),
             ("high", agg.max("v")), ("avg", agg.mean("v")), ("first", agg.first("v")), ("last", agg.last("v")))


def aggregate(aggregates, keys=("k",), per_key=False) -> AggregateOp:
    op = build_operator(Step("stats", "aggregate", ("by_k",), key_columns=keys, arrow=aggregates))
    if per_key:
        per_key_layout(op)
    return op


def per_key_layout(op: AggregateOp) -> AggregateOp:
    """The op with its state in the per-key layout only (as raystream kept it before)."""
    op._vectorize = False
    return op


def same(value) -> str:
    """Equal for equal values, types and float signs (NaN equals NaN)."""
    return repr(value)


def ordered(state: dict) -> list[str]:
    """The entries as text, sorted: the order keys came in differs where Arrow's groups
    come in another order than the rows."""
    return sorted(map(repr, state.items()))


def canonical(state: dict) -> dict:
    """Each key's state as text. Keys compare as dict keys: the per-key layout's `written`
    may hold 0.0 for a key the state holds as -0.0 (a dict keeps the key it first took)."""
    return {k: repr(v) for k, v in state.items()}


# --- batches --------------------------------------------------------------------------------

KEY_KINDS = {
    "str": (st.sampled_from(["a", "b", "ü", "", None]), pa.string()),
    "int64": (st.sampled_from([0, 1, -1, 2 ** 62, None]), pa.int64()),
    "int32": (st.sampled_from([0, 1, 7, None]), pa.int32()),
    "float": (st.sampled_from([0.0, -0.0, 1.5, None]), pa.float64()),  # -0.0 and 0.0: one key
    "dict": (st.sampled_from(["a", "b", None]), "dictionary"),  # a dictionary holding "a" twice
}
BIG = 2 ** 62
SPECIAL = [0.0, -0.0, 1.5, float("nan"), float("inf"), -float("inf")]
VALUE_KINDS = {
    "int64": (st.one_of(st.none(), st.integers(-1000, 1000), st.sampled_from([BIG, -BIG, 2 ** 63 - 1])), pa.int64()),
    "int32": (st.one_of(st.none(), st.integers(-2 ** 31, 2 ** 31 - 1)), pa.int32()),
    "uint32": (st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)), pa.uint32()),
    "uint64": (st.one_of(st.none(), st.integers(0, 100), st.just(2 ** 63 + 1)), pa.uint64()),
    # signed zeros, NaN and infinities often: where numpy's fold could differ from Python's
    "float64": (st.one_of(st.none(), st.sampled_from(SPECIAL), st.floats(width=64)), pa.float64()),
    "float32": (st.one_of(st.none(), st.sampled_from(SPECIAL), st.floats(width=32)), pa.float32()),
    "null": (st.none(), pa.null()),
    "decimal": (st.one_of(st.none(), st.decimals(-10 ** 6, 10 ** 6, places=2, allow_nan=False)),
                pa.decimal128(12, 2)),
}


def key_array(keys, kind) -> pa.Array:
    if kind == "dictionary":
        dictionary = pa.array(["a", "b", "a"])  # "a" twice: two Arrow groups, one key
        codes = {"a": [0, 2], "b": [1]}
        return pa.DictionaryArray.from_arrays(
            pa.array([None if k is None else codes[k][i % len(codes[k])] for i, k in enumerate(keys)], pa.int32()),
            dictionary)
    return pa.array(keys, kind)


@st.composite
def batches(draw, key_kind: str, value_kind: str):
    keys_of, key_type = KEY_KINDS[key_kind]
    if draw(st.booleans()):  # a key per row, as a batch of per-word counts has
        keys = draw(st.lists(keys_of, min_size=1, max_size=5, unique=True))
        n = len(keys)
    else:
        n = draw(st.integers(1, 20))
        keys = draw(st.lists(keys_of, min_size=n, max_size=n))
    kind = value_kind if draw(st.integers(0, 9)) else draw(st.sampled_from(sorted(VALUE_KINDS)))  # a type change
    values_of, value_type = VALUE_KINDS[kind]
    values = draw(st.lists(values_of, min_size=n, max_size=n))
    if draw(st.booleans()):
        return pa.RecordBatch.from_arrays([key_array(keys, key_type), pa.array(values, value_type)], names=["k", "v"])
    second = draw(st.lists(st.sampled_from([1, 2, None]), min_size=n, max_size=n))
    return pa.RecordBatch.from_arrays([key_array(keys, key_type), pa.array(second, pa.int8()),
                                       pa.array(values, value_type)], names=["k", "j", "v"])


@st.composite
def scripts(draw):
    key_kind = draw(st.sampled_from(sorted(KEY_KINDS)))
    value_kind = draw(st.sampled_from(sorted(VALUE_KINDS)))
    two_keys = draw(st.booleans())
    named = draw(st.lists(st.sampled_from(BUILT_INS), min_size=1, max_size=5, unique_by=lambda a: a[0]))
    if not draw(st.integers(0, 7)):
        named.append(("spread", Spread("v")))
    steps = draw(st.lists(st.one_of(st.tuples(st.just("rows"), batches(key_kind, value_kind)),
                                    st.tuples(st.just("snapshot"), st.booleans())), min_size=1, max_size=10))
    keys = ("k", "j") if two_keys else ("k",)
    steps = [(kind, b) if kind != "rows" or all(c in b.schema.names for c in keys) else
             (kind, b.append_column("j", pa.array([1] * b.num_rows, pa.int8()))) for kind, b in steps]
    return tuple(named), keys, steps


def run(op, batch, keys):
    """The op's output for a batch: its schema and its rows, each with its time, in any
    order (a batch with a key per row is emitted in row order, a grouped one in the order
    of Arrow's groups, which need not be the rows'); or the error's type when it fails."""
    try:
        out = op.process(Timed(ArrowKeyed(batch, keys), list(range(batch.num_rows))))
    except RecordFailure as exc:
        return ("failed", type(exc.__cause__ or exc).__name__)
    return (out.batch.schema, sorted(same(row) + f" at {t}" for row, t in zip(out.batch.to_pylist(), out.times)))


class Tracked:
    """An op with its incremental snapshots applied to a copy of its state, as a restore would see it."""

    def __init__(self, op):
        self.op = op
        self.changelog = StateChangelog(incremental=True, base_every=3, compact_above=10 ** 9)
        self.tables: dict = {}
        self.n = 0

    def snapshot(self):
        keyed, is_changes, _ = self.changelog.capture([self.op])
        part = pickle.loads(pickle.dumps(keyed))
        self.n += 1
        self.changelog.added(PartRef(f"run/snapshots/{self.n}/x.snap", "0" * 64, self.n, 1, not is_changes))
        if is_changes:
            apply_part(self.tables, part, False)
        else:
            self.tables = part
        assert canonical(self.tables["stats"]) == canonical(self.op.state)  # I1: nothing escaped
        return is_changes, canonical(part["stats"][0] if is_changes else part["stats"])


@settings(max_examples=300, deadline=None)
@given(scripts())
def test_the_columns_do_exactly_what_the_per_key_layout_does(script):
    named, keys, steps = script
    fast, slow = Tracked(aggregate(named, keys)), Tracked(aggregate(named, keys, per_key=True))
    for kind, item in steps:
        if kind == "rows":
            assert run(fast.op, item, keys) == run(slow.op, item, keys)
        elif not item:  # an incremental snapshot: the same keys, with the same states
            assert fast.snapshot() == slow.snapshot()
        else:  # restore each from the other's snapshot: each layout reads the other's
            fast_state, slow_state = (pickle.loads(pickle.dumps(t.op.snapshot())) for t in (fast, slow))
            assert ordered(fast_state) == ordered(slow_state)
            fast, slow = Tracked(aggregate(named, keys)), Tracked(aggregate(named, keys, per_key=True))
            fast.op.restore(slow_state, None)
            per_key_layout(slow.op).restore(fast_state, None)
            per_key_layout(slow.op)  # a restore tries the columns again
        assert ordered(fast.op.state) == ordered(slow.op.state)  # keys, values and their types
        assert fast.op.state_keys() == len(slow.op.state)
        assert (fast.op.records_in, fast.op.records_out) == (slow.op.records_in, slow.op.records_out)
    assert slow.op._columns is None


def batch_of(keys, values, value_type=pa.int64()):
    return pa.RecordBatch.from_arrays([pa.array(keys), pa.array(values, value_type)], names=["k", "v"])


def test_built_ins_over_numbers_are_held_in_columns_and_others_in_the_dict():
    op = aggregate(BUILT_INS)
    op.process(ArrowKeyed(batch_of(["a", "b", "a"], [1, None, 3]), ("k",)))
    assert op._columns is not None and op.written is None and op.state_keys() == 2
    assert op.state == {"a": (2, 2, 4, 1, 3, (4, 2), 1, 3), "b": (1, 0, None, None, None, (0, 0), None, None)}
    custom = aggregate((("n", agg.count()), ("spread", Spread("v"))))
    custom.process(ArrowKeyed(batch_of(["a"], [1]), ("k",)))
    assert custom._columns is None and custom.written == {"a": (1, (1, 1))}
    strings = aggregate((("low", agg.min("v")),))
    strings.process(ArrowKeyed(batch_of(["a"], ["x"], pa.string()), ("k",)))
    assert strings._columns is None and strings.state == {"a": ("x",)}


def test_a_sum_past_int64_across_batches_moves_the_state_to_the_dict_and_stays_exact():
    op = aggregate((("total", agg.sum("v")), ("avg", agg.mean("v"))))
    big, top = 2 ** 62, 2 ** 63 - 1
    op.process(ArrowKeyed(batch_of(["a", "b"], [big, 1]), ("k",)))
    op.process(ArrowKeyed(batch_of(["a", "b"], [big - 1, 1]), ("k",)))
    assert op._columns is not None and op.state["a"] == (top, (top, 2))
    with pytest.raises(RecordFailure):  # 2**63 fits no int64 output column: the batch fails, as before
        op.process(ArrowKeyed(batch_of(["a"], [1]), ("k",)))
    assert op._columns is None and op.state["a"] == (top, (top, 2))
    assert op.written == {"a": (top, (top, 2)), "b": (2, (2, 2))}  # I1: the keys changed since the snapshot
    out = op.process(ArrowKeyed(batch_of(["a"], [-big]), ("k",)))
    assert out.to_pylist() == [{"k": "a", "total": top - big, "avg": (top - big) / 3}]


def test_a_restored_state_moves_into_the_columns_at_the_first_batch_that_fits():
    old = aggregate(BUILT_INS, per_key=True)
    old.process(ArrowKeyed(batch_of(["a", "b"], [1.5, None], pa.float64()), ("k",)))
    op = aggregate(BUILT_INS)
    op.restore(pickle.loads(pickle.dumps(old.snapshot())), None)
    assert op._columns is None  # until a batch says the types
    more = ArrowKeyed(batch_of(["b", "c"], [2.5, -0.0], pa.float64()), ("k",))
    assert same(op.process(more).to_pylist()) == same(old.process(more).to_pylist())
    assert op._columns is not None and same(op.state) == same(old.state)
    assert op.changed_state() == ({k: old.state[k] for k in ("b", "c")}, [])


def test_a_restored_state_the_columns_would_not_make_stays_in_the_dict():
    op = aggregate((("total", agg.sum("v")),))
    op.restore({"a": (2 ** 63,)}, None)  # a sum past int64, as the per-key layout keeps it
    out = op.process(ArrowKeyed(batch_of(["a"], [1], pa.uint64()), ("k",)))
    assert op._columns is None and not op._vectorize
    assert out.to_pylist() == [{"k": "a", "total": 2 ** 63 + 1}] and out.schema.field("total").type == pa.uint64()


def test_a_decimal_column_stays_in_the_dict():
    op = aggregate((("total", agg.sum("v")),))
    op.process(ArrowKeyed(batch_of(["a"], [decimal.Decimal("1.5")], pa.decimal128(5, 1)), ("k",)))
    assert op._columns is None and op.state == {"a": (decimal.Decimal("1.5"),)}


@pytest.mark.parametrize("named, state, batch", [
    ((("low", agg.min("v")),), {"a": (2 ** 40,)}, batch_of(["a"], [5], pa.int32())),  # past the column's type
    ((("total", agg.sum("v")),), {"a": (-1,)}, batch_of(["a"], [5], pa.uint32())),  # a uint64 sum below 0
    ((("total", agg.sum("v")),), {"a": (1.5,)}, batch_of(["a"], [5])),  # a float sum, an int column now
    ((("n", agg.count()),), {"a": (True,)}, batch_of(["a"], [5])),  # a bool is not a count
    ((("low", agg.min("v")),), {"a": (0.1,)}, batch_of(["a"], [5.0], pa.float32())),  # not a float32
    ((("avg", agg.mean("v")),), {"a": ((0.0, 0))}, batch_of(["a"], [5.0], pa.float64())),  # not a state it makes
    ((("n", agg.count()),), {"a": 3}, batch_of(["a"], [5])),  # not a tuple
], ids=["int32-min", "uint-sum", "float-sum", "bool-count", "float32-min", "mean", "not-a-tuple"])
def test_a_restored_state_of_values_the_columns_would_not_make_stays_in_the_dict(named, state, batch):
    fast, slow = aggregate(named), aggregate(named, per_key=True)
    fast.restore(dict(state), None)
    per_key_layout(slow).restore(dict(state), None)
    per_key_layout(slow)
    assert run(fast, batch, ("k",)) == run(slow, batch, ("k",))
    assert fast._columns is None and same(fast.state) == same(slow.state)


def test_keys_python_holds_equal_in_two_groups_are_refused_before_anything_changes():
    from raystream._runtime.operators.aggregate_columns import AggregateColumns, Refused

    op = aggregate((("n", agg.count()),))
    op.process(ArrowKeyed(batch_of(["a"], [1]), ("k",)))
    columns = op._columns
    assert isinstance(columns, AggregateColumns)
    for keys in (["b", "b"], ["a", "c", "a"]):
        with pytest.raises(Refused):
            columns._slots(keys)
    assert columns.keys == ["a"] and columns.index == {"a": 0} and op.state == {"a": (1,)}


def test_a_batch_with_a_key_per_row_is_folded_without_a_group_by_until_a_key_repeats(monkeypatch):
    named = (("n", agg.count()), ("total", agg.sum("v")), ("avg", agg.mean("v")), ("last", agg.last("v")))
    fast, slow = aggregate(named), aggregate(named, per_key=True)
    grouped = []
    real = type(fast.folds).group
    monkeypatch.setattr(type(fast.folds), "group", lambda self, *a, **k: grouped.append(self) or real(self, *a, **k))
    counts = [batch_of(["a", "b", "c"], [-0.0, float("nan"), None], pa.float64()),  # Arrow's sum of -0.0 is 0.0
              batch_of(["c", "a"], [2.5, 1.0], pa.float64())]
    for batch in counts:
        assert run(fast, batch, ("k",)) == run(slow, batch, ("k",))
    assert grouped.count(fast.folds) == 1 and fast._rows_distinct  # the first batch only: it made the columns
    repeated = batch_of(["a", "a"], [1.0, 2.0], pa.float64())
    assert run(fast, repeated, ("k",)) == run(slow, repeated, ("k",))
    assert grouped.count(fast.folds) == 2 and not fast._rows_distinct and fast._columns is not None


def test_the_per_key_state_a_snapshot_reads_is_not_kept_beside_the_columns():
    """Review: the per-key dict a snapshot made from the columns was kept until the next
    batch, doubling the state's memory, for good in a subtask that then went quiet."""
    op = aggregate((("n", agg.count()), ("total", agg.sum("v"))))
    op.process(ArrowKeyed(batch_of(["a", "b"], [1, 2]), ("k",)))
    first = op.snapshot()
    assert op._columns is not None and op.state == first and op.state is not op.state
    assert not any(isinstance(v, dict) and v == first for v in vars(op._columns).values())


def test_a_restored_float_past_float32s_range_is_refused_by_the_columns_without_a_warning():
    """Review: the float32 check cast outside np.errstate: with warnings as errors the
    batch failed; otherwise numpy printed an overflow warning."""
    op = aggregate((("low", agg.min("v")),))
    op.restore({"a": (1e308,)}, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = op.process(ArrowKeyed(batch_of(["a"], [1.0], pa.float32()), ("k",)))
    assert out.to_pylist() == [{"k": "a", "low": 1.0}] and op._columns is None


@pytest.mark.parametrize("per_key", [False, True])
@pytest.mark.parametrize("cut", [None, 1, 2])
def test_min_and_max_skip_nan_however_the_rows_are_cut_into_batches(per_key, cut):
    """Arrow skips NaN within a batch; across batches a NaN state gives way to a value, so
    [NaN, 1, 2] has min 1 and max 2 as one batch or cut anywhere (review of stop 34: cut
    after the NaN, the state stayed NaN for good)."""
    values = [float("nan"), 1.0, 2.0]
    op = aggregate((("low", agg.min("v")), ("high", agg.max("v"))), per_key=per_key)
    for part in ([values] if cut is None else [values[:cut], values[cut:]]):
        op.process(ArrowKeyed(batch_of(["a"] * len(part), part, pa.float64()), ("k",)))
    assert op.state == {"a": (1.0, 2.0)}
    only_nan = aggregate((("low", agg.min("v")),), per_key=per_key)
    only_nan.process(ArrowKeyed(batch_of(["a"], [float("nan")], pa.float64()), ("k",)))
    assert repr(only_nan.state) == repr({"a": (float("nan"),)})  # NaN while every value was NaN
