"""The aggregate step equals a per-record reduce over the same rows, batch after batch;
its state is keyed state like any other: snapshots restore it, incremental snapshots
hold the keys a batch changed, and a rescale moves it by key group."""
import pickle
import textwrap

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.state.changelog import StateChangelog, apply_part
from raystream._runtime.state.snapshot import PartRef, SubtaskState
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, as_records, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step
from tests.helpers.edges import hash_edge

AGGREGATES = (("n", agg.count()), ("n_v", agg.count("v")), ("total", agg.sum("v")), ("low", agg.min("v")),
              ("high", agg.max("v")), ("avg", agg.mean("v")), ("first", agg.first("v")), ("last", agg.last("v")))


def aggregate(key_columns=("k",), aggregates=AGGREGATES):
    return build_operator(Step("stats", "aggregate", ("by_k",), key_columns=key_columns, arrow=aggregates))


def lift(v):
    """One row's value as the per-record reduce's accumulator of the same aggregates."""
    seen = v is not None
    return (1, int(seen), v, v, v, (v or 0, int(seen)), v, v)


def fold(acc, value):
    """The per-record reduce function: SQL's null-skipping running aggregates."""
    def pick(a, b, f):
        return a if b is None else b if a is None else f(a, b)
    return (acc[0] + value[0], acc[1] + value[1], pick(acc[2], value[2], lambda a, b: a + b),
            pick(acc[3], value[3], min), pick(acc[4], value[4], max),
            (acc[5][0] + value[5][0], acc[5][1] + value[5][1]), pick(acc[6], value[6], lambda a, b: a),
            pick(acc[7], value[7], lambda a, b: b))


def as_row(key, acc):
    total, n = acc[5]
    return {"k": key, "n": acc[0], "n_v": acc[1], "total": acc[2], "low": acc[3], "high": acc[4],
            "avg": total / n if n else None, "first": acc[6], "last": acc[7]}


def rows_batch(rows):
    return pa.RecordBatch.from_arrays([pa.array([k for k, _ in rows], pa.string()),
                                       pa.array([v for _, v in rows], pa.int64())], names=["k", "v"])


ROW = st.tuples(st.sampled_from(["a", "b", "c", "ü", None]), st.one_of(st.none(), st.integers(-2**40, 2**40)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(ROW, min_size=1, max_size=30), min_size=1, max_size=6))
def test_aggregates_equal_a_per_record_reduce_batch_after_batch(batches):
    columnar = aggregate()
    reduce = build_operator(Step("stats", "reduce", ("by_k",), fn=fold))
    for rows in batches:
        out = columnar.process(ArrowKeyed(rows_batch(rows), ("k",)))
        updates = as_records(reduce.process(KeyedBatch([k for k, _ in rows], [lift(v) for _, v in rows])))
        latest = dict(updates)  # the reduce emits every update; a key's last one is its value now
        assert out.to_pylist() == [as_row(k, latest[k]) for k in dict.fromkeys(k for k, _ in rows)]
    assert columnar.snapshot().keys() == reduce.snapshot().keys()  # keys as the per-record path has them
    assert (columnar.records_in, columnar.records_out) == (sum(map(len, batches)), sum(len(set(r)) for r in
                                                                                    ({k for k, _ in b} for b in batches)))


def test_output_schema_keys_then_aggregates_typed_from_the_input():
    batch = pa.RecordBatch.from_pydict({"cat": pa.array([1, 1, 2], pa.int32()), "seller": ["x", "x", None],
                                        "price": pa.array([1.5, None, 2.0], pa.float32())})
    op = aggregate(("cat", "seller"), (("n", agg.count()), ("sum", agg.sum("price")), ("avg", agg.mean("price")),
                                       ("top", agg.max("price"))))
    out = op.process(ArrowKeyed(batch, ("cat", "seller")))
    assert out.schema == pa.schema([("cat", pa.int32()), ("seller", pa.string()), ("n", pa.int64()),
                                    ("sum", pa.float64()), ("avg", pa.float64()), ("top", pa.float32())])
    assert out.to_pylist() == [{"cat": 1, "seller": "x", "n": 2, "sum": 1.5, "avg": 1.5, "top": 1.5},
                               {"cat": 2, "seller": None, "n": 1, "sum": 2.0, "avg": 2.0, "top": 2.0}]
    assert set(op.snapshot()) == {(1, "x"), (2, None)}  # a null key column is None in the key, as per record


def test_an_output_row_takes_the_newest_time_of_its_key_in_the_batch():
    batch = rows_batch([("a", 1), ("b", 2), ("a", 3)])
    out = aggregate().process(Timed(ArrowKeyed(batch, ("k",)), [30, 10, 20]))
    assert [r["k"] for r in out.batch.to_pylist()] == ["a", "b"] and out.times.tolist() == [30, 10]


def test_equal_keys_in_two_groups_merge_in_turn():
    batch = pa.RecordBatch.from_pydict({"k": [0.0, -0.0, 0.0], "v": [1, 2, 3]})  # Arrow groups -0.0 apart
    op = aggregate(aggregates=(("n", agg.count()), ("total", agg.sum("v"))))
    out = op.process(ArrowKeyed(batch, ("k",)))
    assert out.to_pylist()[-1]["total"] == 6 and op.snapshot() == {0.0: (3, 6)}


def test_snapshot_restore_and_incremental_snapshots_of_the_changed_keys():
    batches = [rows_batch([("a", 1), ("b", 2)]), rows_batch([("c", 3), ("a", None)]), rows_batch([("b", 4)])]
    op, changelog = aggregate(), StateChangelog(incremental=True, base_every=10, compact_above=0)
    op.process(ArrowKeyed(batches[0], ("k",)))
    keyed, is_changes, _ = changelog.capture([op])
    assert not is_changes
    tables = pickle.loads(pickle.dumps(keyed))
    changelog.added(PartRef("run/snapshots/1/x.snap", "0" * 64, 1, 1, True))
    op.process(ArrowKeyed(batches[1], ("k",)))
    keyed, is_changes, _ = changelog.capture([op])
    assert is_changes and set(keyed["stats"][0]) == {"c", "a"}  # I1: only what the batch changed
    apply_part(tables, pickle.loads(pickle.dumps(keyed)), False)
    assert tables["stats"] == op.state
    restored = aggregate()
    restored.restore(tables["stats"], None)
    third = ArrowKeyed(batches[2], ("k",))
    assert restored.process(third).to_pylist() == op.process(third).to_pylist()
    assert restored.state == op.state
    assert len(pickle.dumps(op.state["a"])) < 100  # small: a tuple of plain values per key


@pytest.mark.parametrize("old, new", [(2, 3), (3, 2)])
def test_rescaling_moves_aggregate_state_by_key_group(old, new):
    keys = [f"k{i}" for i in range(40)] + [None]
    batches = [rows_batch([(keys[(i * 7 + j) % len(keys)], i * j) for j in range(60)]) for i in range(6)]
    reference = aggregate()
    before = [aggregate() for _ in range(old)]
    for batch in batches[:3]:
        reference.process(ArrowKeyed(batch, ("k",)))
        for op, messages in zip(before, hash_edge(ArrowKeyed(batch, ("k",)), old)):
            for message in messages:
                op.process(message)
    states = [SubtaskState(5, "stats", i, old, keyed={"stats": op.snapshot()}) for i, op in enumerate(before)]
    step = Step("stats", "aggregate", ("by_k",), key_columns=("k",), arrow=AGGREGATES)
    after = []
    for i in range(new):
        op = aggregate()
        op.restore(merge_states(states, [step], i, new, 128).keyed["stats"], None)
        assert all(key_group(k, 128) in groups_of_subtask(i, new, 128) for k in op.state)
        after.append(op)
    for batch in batches[3:]:
        expected = reference.process(ArrowKeyed(batch, ("k",))).to_pylist()
        got = [row for op, messages in zip(after, hash_edge(ArrowKeyed(batch, ("k",)), new))
               for message in messages for row in op.process(message).to_pylist()]
        assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert {k: v for op in after for k, v in op.state.items()} == reference.state


def documented(name):
    """An example class of raystream.aggregates' docstring, run as it is written there."""
    code = textwrap.dedent(agg.__doc__[agg.__doc__.index(f"    class {name}"):])
    namespace = {"agg": agg}
    exec(code, namespace)
    return namespace[name]


Spread = documented("Spread")  # max - min, by `merge` per key


def test_an_aggregate_of_ones_own_shares_partials_with_the_built_ins():
    op = aggregate(aggregates=(("spread", Spread("v")), ("low", agg.min("v"))))
    assert len(op.folds.partials) == 2  # min computed once for both
    op.process(ArrowKeyed(rows_batch([("a", 5), ("a", 9), ("b", None)]), ("k",)))
    out = op.process(ArrowKeyed(rows_batch([("a", 1), ("b", None)]), ("k",)))
    assert out.to_pylist() == [{"k": "a", "spread": 8, "low": 1}, {"k": "b", "spread": None, "low": None}]


@pytest.mark.parametrize("built_in", [agg.count(), agg.count("v"), agg.sum("v"), agg.min("v"), agg.max("v"),
                                      agg.mean("v"), agg.first("v"), agg.last("v")])
def test_each_built_in_merges_one_key_as_it_merges_a_batch(built_in):
    partials = [[None, 3, 4, 0] for _ in built_in.partials()]
    if isinstance(built_in, agg.Count):
        partials = [[0, 3, 4, 0]]
    elif isinstance(built_in, agg.Mean):
        partials = [[None, 3, 4, 0], [0, 1, 2, 0]]
    states = [built_in.create(), built_in.create(), built_in.merge(built_in.create(), [p[1] for p in partials]),
              built_in.create()]
    one_by_one = [built_in.merge(s, row) for s, row in zip(states, zip(*partials))]
    assert built_in.merge_all(states, partials) == one_by_one
    assert repr(built_in).startswith(type(built_in).__name__.lower() + "(")


def test_a_failing_batch_leaves_the_state_as_it_was():
    class Broken(Spread):
        def merge(self, state, partials):
            raise ValueError("broken")

    op = aggregate(aggregates=(("n", agg.count()), ("bad", Broken("v"))))
    with pytest.raises(RecordFailure, match=r"aggregate n=count\(\), bad=broken\('v'\) failed .*broken") as info:
        op.process(ArrowKeyed(rows_batch([("a", 1)]), ("k",)))
    assert info.value.step_id == "stats" and op.state == {}
    failed = []
    op.on_error = lambda step_id, record, exc: failed.append(record)
    assert op.process(ArrowKeyed(rows_batch([("a", 1), ("b", 2)]), ("k",))) == []
    assert failed == [("a", {"k": "a", "v": 1}), ("b", {"k": "b", "v": 2})] and op.state == {} and not op.written


def test_an_input_that_is_not_keyed_arrow_is_refused():
    with pytest.raises(RecordFailure, match="Arrow rows keyed by columns; got KeyedBatch"):
        aggregate().process(KeyedBatch(["a"], [1]))
    assert untimed(aggregate().process(Timed(ArrowKeyed(rows_batch([("a", 1)]), ("k",)), [5])))[1].tolist() == [5]


def test_any_column_names_even_arrows_own_and_the_key_as_a_value():
    batch = pa.RecordBatch.from_pydict({"v_sum": ["a", "a", "b"], "v": [1, 2, 3], "__raystream_time": [7, 8, 9]})
    op = aggregate(("v_sum",), (("v", agg.sum("v")), ("keys", agg.count("v_sum")), ("t", agg.max("__raystream_time"))))
    out = op.process(Timed(ArrowKeyed(batch, ("v_sum",)), [5, 6, 4]))
    assert out.batch.to_pylist() == [{"v_sum": "a", "v": 3, "keys": 2, "t": 8}, {"v_sum": "b", "v": 3, "keys": 1, "t": 9}]
    assert out.times.tolist() == [6, 4]


def run_batches(op, batches):
    out = []
    for batch in batches:
        result, _ = untimed(op.process(ArrowKeyed(batch, ("k",))))
        out.append(result)
    return out


def test_a_running_value_is_never_cut_to_the_type_of_a_later_batch():
    """Review: a float sum emitted after a batch of ints only was cast to int64 (9.5 -> 9)."""
    op = aggregate(aggregates=(("total", agg.sum("v")), ("low", agg.min("v")), ("last", agg.last("v"))))
    out = run_batches(op, [pa.record_batch({"k": [1], "v": [0.5]}), pa.record_batch({"k": [1, 1], "v": [4, 5]})])
    assert out[-1].to_pylist() == [{"k": 1, "total": 9.5, "low": 0.5, "last": 5}]


def test_a_batch_whose_values_are_all_null_folds_nothing_and_keeps_the_running_values():
    """Review: a value column of Arrow type null failed the batch (max, first, last)."""
    aggregates = (("n", agg.count()), ("total", agg.sum("v")), ("high", agg.max("v")), ("first", agg.first("v")),
                  ("last", agg.last("v")), ("avg", agg.mean("v")))
    op = aggregate(aggregates=aggregates)
    out = run_batches(op, [pa.record_batch({"k": [1, 2], "v": pa.nulls(2)}),
                           pa.record_batch({"k": [1], "v": [10]}), pa.record_batch({"k": [1, 2], "v": pa.nulls(2)})])
    assert out[0].to_pylist() == [{"k": 1, "n": 1, "total": None, "high": None, "first": None, "last": None,
                                   "avg": None}, {"k": 2, "n": 1, "total": None, "high": None, "first": None,
                                                  "last": None, "avg": None}]
    assert out[-1].to_pylist()[0] == {"k": 1, "n": 3, "total": 10, "high": 10, "first": 10, "last": 10, "avg": 10.0}


def test_an_int_sum_past_int64_within_a_batch_is_exact_or_fails_never_wraps():
    """Review: Arrow's per-group sum wraps around; four rows of 2**61 committed -2**63."""
    op = aggregate(aggregates=(("total", agg.sum("v")), ("avg", agg.mean("v"))))
    big = 2 ** 61
    with pytest.raises(RecordFailure):  # 2**63 does not fit the output column: the batch fails, nothing wraps
        run_batches(op, [pa.record_batch({"k": [1] * 4, "v": pa.array([big] * 4, pa.int64())})])
    assert op.state == {}
    out = run_batches(op, [pa.record_batch({"k": [1] * 5, "v": pa.array([big] * 4 + [-big], pa.int64())})])
    assert out[0].to_pylist() == [{"k": 1, "total": 3 * big, "avg": 3 * big / 5}]
    assert op.state[1][0] == 3 * big and type(op.state[1][0]) is int


def test_a_batch_with_a_key_column_twice_fails_in_the_key_step_under_its_policy():
    from raystream._runtime.operators.columnar import KeyColumnsOp

    op = KeyColumnsOp(Step("by_k", "key_by", ("src",), key_columns=("k",)))
    batch = pa.RecordBatch.from_arrays([pa.array([1]), pa.array([2])], names=["k", "k"])
    with pytest.raises(RecordFailure, match="more than one column named k"):
        op.process(batch)


@pytest.mark.parametrize("keys", [
    pa.array([-0.0, 0.0, -0.0, 0.0]),
    pa.DictionaryArray.from_arrays(pa.array([0, 1, 0, 1], pa.int32()), pa.array(["a", "a"])),
], ids=["signed-zeros", "dictionary-repeating-a-value"])
def test_first_and_last_follow_the_rows_across_keys_arrow_groups_apart(keys):
    """Review: rows of one Python key that Arrow groups apart were merged group after
    group, so `last` took the last row of the last group (and `first`, with nulls, the
    first group's), not the batch's last or first row."""
    aggregates = (("n", agg.count()), ("total", agg.sum("v")), ("first", agg.first("v")), ("last", agg.last("v")))
    op = aggregate(aggregates=aggregates)
    out = op.process(ArrowKeyed(pa.RecordBatch.from_arrays([keys, pa.array([None, 2, 3, None])], names=["k", "v"]),
                                ("k",)))
    assert out.num_rows == 1 and out.schema.field("k").type == keys.type
    assert out.to_pylist()[0] | {"k": None} == {"k": None, "n": 4, "total": 5, "first": 2, "last": 3}
    plain = pa.array([0.0] if pa.types.is_floating(keys.type) else ["a"])  # the same key, not a dictionary
    out = op.process(ArrowKeyed(pa.RecordBatch.from_arrays([plain, pa.array([7])], names=["k", "v"]), ("k",)))
    assert out.to_pylist()[0] | {"k": None} == {"k": None, "n": 5, "total": 12, "first": 2, "last": 7}
    assert len(op.state) == 1


def test_decimal_sums_fold_across_batches_with_every_digit_of_the_column():
    """Review: running decimal sums were folded in Python's default context, 28 digits:
    a decimal128(38, 2) sum over two batches lost its last digits."""
    import decimal

    value = decimal.Decimal("123456789012345678901234567890.12")
    op = aggregate(aggregates=(("total", agg.sum("v")), ("avg", agg.mean("v"))))
    batch = pa.record_batch({"k": ["a"], "v": pa.array([value], pa.decimal128(38, 2))})
    out = run_batches(op, [batch, batch, batch])[-1]
    assert out.schema.field("total").type == pa.decimal128(38, 2)
    exact = decimal.Decimal("370370367037037036703703703670.36")  # 3 * value, in 32 digits
    assert out.to_pylist() == [{"k": "a", "total": exact, "avg": float(exact) / 3}]
    assert op.state["a"][0] == exact and decimal.getcontext().prec == 28  # the caller's context is left alone


def snapshot_of(op, *, old_layout=False):
    """The subtask snapshot holding `op`'s state, as it unpickles on restore; with
    `old_layout`, as raystream wrote it before snapshots kept `step_meta`."""
    state = SubtaskState(5, op.step_id, 0, 1, keyed={op.step_id: op.snapshot()}, step_meta={op.step_id: op.state_meta()})
    if old_layout:
        del state.__dict__["step_meta"]  # a dataclass pickles its __dict__: this is the old bytes' object
    return pickle.loads(pickle.dumps(state))


def restored_into(step, states):
    """The operators a subtask builds for `step` from `states` (assembly, as in R4)."""
    import raystream as rs
    from raystream._runtime.plan.specs import SubtaskSpec
    from raystream._runtime.subtask.assembly import build_operators
    from raystream.config import Guarantee

    spec = SubtaskSpec("job", step.step_id, [step], 0, 1, 1, rs.RuntimeConfig(), Guarantee.EXACTLY_ONCE, "/none",
                       "run", 2)
    return build_operators(spec, merge_states(states, [step], 0, 1, 128))


def test_a_restore_into_other_aggregates_is_refused_naming_them():
    """Review: the state is a tuple by position; a restore after `a=sum, b=count` became
    `b=count, a=sum` mixed the values silently."""
    from raystream.errors import RaystreamError, RestoreError

    old = aggregate(aggregates=(("a", agg.sum("v")), ("b", agg.count())))
    old.process(ArrowKeyed(rows_batch([("x", 5), ("x", 7)]), ("k",)))
    snapshot = snapshot_of(old)
    for changed in [(("b", agg.count()), ("a", agg.sum("v"))), (("a", agg.sum("w")), ("b", agg.count())),
                    (("a", agg.sum("v")),), (("a", agg.sum("v")), ("b", agg.count()), ("c", agg.max("v")))]:
        step = Step("stats", "aggregate", ("by_k",), key_columns=("k",), arrow=changed)
        with pytest.raises(RestoreError, match=r"step 'stats': the checkpoint's state was made by the aggregates "
                                               r"a=sum\('v'\), b=count\(\), and this job's step has .*another id") as info:
            restored_into(step, [snapshot])
        assert isinstance(info.value, RaystreamError)
    renamed = Step("stats", "aggregate", ("by_k",), key_columns=("k",), arrow=(("total", agg.sum("v")),
                                                                               ("n", agg.count())))
    (op,) = restored_into(renamed, [snapshot])  # the same aggregates under other names: the same state
    assert op.process(ArrowKeyed(rows_batch([("x", 1)]), ("k",))).to_pylist() == [{"k": "x", "total": 13, "n": 3}]


def test_a_snapshot_from_before_step_meta_restores_as_it_is():
    """Snapshots written before they kept `step_meta` say nothing of the aggregates: restored as they are."""
    old = aggregate()
    old.process(ArrowKeyed(rows_batch([("x", 5), ("y", None)]), ("k",)))
    snapshot = snapshot_of(old, old_layout=True)
    assert not hasattr(snapshot, "step_meta")
    (op,) = restored_into(Step("stats", "aggregate", ("by_k",), key_columns=("k",), arrow=AGGREGATES), [snapshot])
    more = ArrowKeyed(rows_batch([("x", 2)]), ("k",))
    assert op.process(more).to_pylist() == old.process(more).to_pylist() and op.state == old.state
    assert op.state_meta() == {"op": "aggregate", "aggregates": [(name, repr(a), (type(a).__qualname__, tuple(
        (p.function, p.column, None) for p in a.partials()))) for name, a in AGGREGATES], "keys": ["k"]}  # the next has it


def test_state_of_a_per_record_step_of_the_same_id_is_refused():
    """Review: a reduce's snapshot keeps no meta; its ints were taken as aggregate tuples
    and every later batch of those keys failed."""
    from raystream.errors import RestoreError

    reduce_state = SubtaskState(5, "stats", 0, 1, keyed={"stats": {"x": 5}}, step_meta={})
    with pytest.raises(RestoreError, match="written by another kind of step .a per-record step, say."):
        restored_into(Step("stats", "aggregate", ("by_k",), key_columns=("k",), arrow=AGGREGATES),
                      [pickle.loads(pickle.dumps(reduce_state))])


def test_aggregates_whose_partials_differ_only_in_options_are_other_aggregates():
    """Review: a count of nulls restored into a count of values was taken as a rename."""
    import pyarrow.compute as pc

    from raystream._runtime.operators.aggregate import _state_kind

    class Counted(agg.Aggregate):
        def __init__(self, mode: str):
            self.mode = mode

        def partials(self):
            return [agg.Partial("count", "v", pc.CountOptions(mode=self.mode))]

    assert _state_kind(Counted("only_null")) != _state_kind(Counted("only_valid"))
    assert _state_kind(Counted("only_null")) == _state_kind(Counted("only_null"))  # the same in every process


def test_uint64_values_past_int64_aggregate_and_only_sums_read_the_exact_decimals():
    """Found with the review's fixes: a uint64 value past 2**63 failed every batch (the
    output was built from Python ints as int64), and a column a sum read as decimals
    (its sum could pass int64) gave min/max/first/last decimal columns too."""
    aggregates = (("n", agg.count()), ("high", agg.max("v")), ("last", agg.last("v")), ("total", agg.sum("v")))
    op = aggregate(aggregates=aggregates)
    big = pa.record_batch({"k": pa.array([2**64 - 1, 2**64 - 1], pa.uint64()), "v": pa.array([2**63 + 1, 2], pa.uint64())})
    out = run_batches(op, [big])[0]
    assert out.schema == pa.schema([("k", pa.uint64()), ("n", pa.int64()), ("high", pa.uint64()),
                                    ("last", pa.uint64()), ("total", pa.uint64())])
    assert out.to_pylist() == [{"k": 2**64 - 1, "n": 2, "high": 2**63 + 1, "last": 2, "total": 2**63 + 3}]
    op = aggregate(aggregates=aggregates)
    wide = pa.record_batch({"k": [1] * 4, "v": pa.array([2**61] * 3 + [-2**61], pa.int64())})
    out = run_batches(op, [wide])[0]
    assert [out.schema.field(c).type for c in ("high", "last", "total")] == [pa.int64()] * 3
    assert out.to_pylist() == [{"k": 1, "n": 4, "high": 2**61, "last": -2**61, "total": 2**62}]
