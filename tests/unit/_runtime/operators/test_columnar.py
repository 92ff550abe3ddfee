"""where, select and key_by on columns run over whole Arrow batches: records become rows
as for map_batches, event times stay with their rows, and a failing expression fails the
batch with an error naming the step and the expression."""
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raystream._runtime.operators.base import run_chain
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.batch import ArrowKeyed, Batches, Timed, as_keyed, as_records, batch_len, parts
from raystream.graph import Step

ROWS = [{"auction": 1, "price": 50}, {"auction": 2, "price": 150}, {"auction": 1, "price": None},
        {"auction": 3, "price": 300}]


def where(expr):
    return build_operator(Step("cheap", "where", ("in",), arrow=expr))


def select(*pairs):
    return build_operator(Step("euros", "select", ("in",), arrow=tuple(pairs)))


def key_by(*columns):
    return build_operator(Step("by_auction", "key_by", ("in",), key_columns=columns))


def test_where_keeps_the_rows_where_the_expression_is_true_and_null_is_false():
    out = where(pc.field("price") > 100).process(ROWS)
    assert isinstance(out, pa.RecordBatch) and out.to_pylist() == [ROWS[1], ROWS[3]]
    arrow = pa.RecordBatch.from_pylist(ROWS)
    assert where(pc.field("price") > 100).process(arrow).to_pylist() == [ROWS[1], ROWS[3]]
    assert where(pc.field("price").is_null()).process(ROWS).to_pylist() == [ROWS[2]]


def test_where_keeps_event_times_with_their_rows():
    out = where(pc.field("price") >= 150).process(Timed(ROWS, [10, 20, 30, 40]))
    assert isinstance(out, Timed) and out.batch.to_pylist() == [ROWS[1], ROWS[3]] and out.times.tolist() == [20, 40]
    none = where(pc.field("price") > 1000).process(Timed(ROWS, [10, 20, 30, 40]))
    assert len(none) == 0 and none.times.tolist() == []


def test_select_by_name_and_by_expression():
    out = select(("price", "price"), ("auction", "auction")).process(ROWS)
    assert out.schema.names == ["price", "auction"] and out.column(1).to_pylist() == [1, 2, 1, 3]
    out = select(("eur", pc.field("price") * 0.5), ("auction", "auction")).process(Timed(ROWS, [1, 2, 3, 4]))
    assert out.batch.to_pylist() == [{"eur": 25.0, "auction": 1}, {"eur": 75.0, "auction": 2},
                                     {"eur": None, "auction": 1}, {"eur": 150.0, "auction": 3}]
    assert out.times == [1, 2, 3, 4]


def test_records_that_are_not_dicts_become_the_column_value():
    assert where(pc.field("value") >= 3).process([1, 2, 3, 4]).to_pylist() == [{"value": 3}, {"value": 4}]


@pytest.mark.parametrize("op, message", [
    (lambda: where(pc.field("nope") > 1), r"where expression \(nope > 1\) failed on a batch with columns "
                                          r"auction, price: .*No match for FieldRef.Name\(nope\)"),
    (lambda: where(pc.field("price") * 2), r"where expression .* gives int64, not a boolean"),
    (lambda: select(("x", "nope")), r"select of x=nope failed .*no column nope"),
    (lambda: select(("x", pc.utf8_upper(pc.field("price")))), r"select of x=utf8_upper\(price\) failed"),
    (lambda: key_by("nope"), r"key_by on columns nope failed .*no key column nope"),
])
def test_an_expression_that_fails_on_a_batch_names_the_step_and_the_expression(op, message):
    operator = op()
    with pytest.raises(RecordFailure, match=message) as info:
        operator.process(ROWS)
    assert info.value.step_id == operator.step_id and info.value.record_repr == "<RecordBatch of 4 rows>"


def test_under_an_error_policy_a_failing_batch_goes_row_by_row_to_the_policy():
    failed = []
    op = where(pc.field("nope") > 1)
    op.on_error = lambda step_id, record, exc: failed.append((step_id, record))
    assert op.process(ROWS) == [] and failed == [("cheap", r) for r in ROWS] and op.errors == 4


def test_key_by_columns_keys_arrow_rows_as_a_key_function_would():
    out = key_by("auction").process(Timed(ROWS, [1, 2, 3, 4]))
    assert isinstance(out.batch, ArrowKeyed) and out.batch.key_columns == ("auction",) and out.times == [1, 2, 3, 4]
    assert as_records(out) == [(r["auction"], r) for r in ROWS]  # what key_by(lambda r: r["auction"]) gives
    pairs = as_keyed(key_by("auction", "price").process(ROWS)).records()
    assert pairs == [((r["auction"], r["price"]), r) for r in ROWS]


def test_a_chain_of_columnar_steps_counts_rows_in_and_out():
    ops = [where(pc.field("price") > 60), select(("auction", "auction")), key_by("auction")]
    out = run_chain(ops, ROWS)
    assert as_records(out) == [(2, {"auction": 2}), (3, {"auction": 3})]
    assert [(op.records_in, op.records_out) for op in ops] == [(4, 2), (2, 2), (2, 2)]


def test_dict_records_become_a_column_per_key_of_any_record_null_where_one_lacks_it():
    """Review: the columns were the first record's keys: later records lost the other
    keys, and a first record without the key column failed the whole batch."""
    from raystream._runtime.transport.arrow_keys import distinct_keys

    records = [{"v": 2}, {"k": "a", "v": 1}, {"k": "b", "v": 3, "extra": 1.5}]
    batch = key_by("k").process(records).batch
    assert batch.schema.names == ["v", "k", "extra"]
    assert batch.to_pylist() == [{"v": 2, "k": None, "extra": None}, {"v": 1, "k": "a", "extra": None},
                                 {"v": 3, "k": "b", "extra": 1.5}]
    assert distinct_keys(batch, ("k",)).per_row() == [None, "a", "b"]  # a record without the key: key None
    assert records == [{"v": 2}, {"k": "a", "v": 1}, {"k": "b", "v": 3, "extra": 1.5}]  # the records are left alone
    same = [{"k": "a", "v": 1}, {"v": 2, "k": "b"}]  # the same keys in another order: the first record's order
    assert key_by("k").process(same).batch.schema.names == ["k", "v"]


def test_a_step_that_puts_out_several_batches_sends_each_through_the_rest_of_the_chain():
    """A window fires keys no one column holds as `Batches`; the steps after it take each
    on its own, never a batch of mixed columns."""
    class Fires:
        def process(self, batch):
            return Batches([pa.RecordBatch.from_pydict({"k": ["5"], "price": [70]}),
                            pa.RecordBatch.from_pydict({"k": [5, 6], "price": [50, 80]})])

    ops = [Fires(), where(pc.field("price") > 60), select(("k", "k"))]
    out = run_chain(ops, ROWS)
    assert isinstance(out, Batches)
    assert [part.to_pylist() for part in out.parts] == [[{"k": "5"}], [{"k": 6}]]
    assert [(op.records_in, op.records_out) for op in ops[1:]] == [(3, 2), (2, 2)]
    assert batch_len(out) == 2 and parts(ROWS) == [ROWS]
