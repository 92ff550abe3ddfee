"""The key columns of fired windows (operators/fired_keys.py): every key comes out as
itself, in as few batches as its kinds allow, whatever type the step learned last."""
from __future__ import annotations

import datetime
import itertools

import numpy as np
import pyarrow as pa
import pytest

from raystream import aggregates as agg
from raystream._runtime.operators.fired_keys import key_columns
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, Timed
from raystream.windows import Tumbling
from tests.helpers.window_ops import fired, window


def _out(keys, kinds) -> list[list]:
    """Each batch's keys as Python values, in the batch order."""
    return [[tuple(c[i].as_py() for c in cols) if len(cols) > 1 else cols[0][i].as_py() for i in range(len(cols[0]))]
            for _, cols in key_columns(keys, kinds)]


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


#: (a key in a batch of one type, a key in a later batch of another): review 48 found each
#: fired as another key, Arrow coercing it into the type of the latest batch
COERCED = [((1.5, pa.float64()), (7, pa.int64())), ((2.7, pa.float64()), (3, pa.int8())),
           ((b"a", pa.binary()), ("a", pa.string())), (("a", pa.string()), (b"a", pa.binary())),
           ((0.1, pa.float64()), (2.5, pa.float32())), (("5", pa.string()), (b"\xff", pa.binary()))]


@pytest.mark.parametrize("first, second", COERCED, ids=repr)
def test_a_window_fires_each_key_as_itself_whatever_the_latest_batchs_key_type(first, second):
    op = window(Tumbling(0.010), aggregates=(("n", agg.count()),))
    for i, (key, kind) in enumerate((first, second)):
        batch = pa.RecordBatch.from_arrays([pa.array([key], kind)], names=["k"])
        op.process(Timed(ArrowKeyed(batch, ("k",)), np.array([i], dtype=np.int64)))
    keys = [row[0] for row in fired(op.on_watermark(MAX_TIME))]
    assert sorted(map(repr, keys)) == sorted(map(repr, [first[0], second[0]]))


def test_keys_of_one_kind_are_one_batch_in_the_type_learned():
    [(rows, [column])] = key_columns([1, -2, None, 3], [pa.int8()])
    assert rows is None and column.type == pa.int8() and column.to_pylist() == [1, -2, None, 3]
    [(rows, [column])] = key_columns([1, 1000], [pa.int8()])  # restored keys the learned type cannot hold
    assert rows is None and column.type == pa.int64()


def test_kinds_are_a_batch_each_in_the_order_they_first_fired_and_nulls_go_with_one():
    keys = ["a", 5, None, "b", 6]
    out = key_columns(keys, [pa.string()])
    assert [rows.tolist() for rows, _ in out] == [[0, 2, 3], [1, 4]]
    assert [[c.type for c in cols] for _, cols in out] == [[pa.string()], [pa.int64()]]
    assert _out(keys, [pa.string()]) == [["a", None, "b"], [5, 6]]


def test_ints_no_integer_type_holds_together_are_split_by_sign():
    out = key_columns([-1, 2**63, 5, -7], [pa.int64()])
    assert [rows.tolist() for rows, _ in out] == [[0, 3], [1, 2]]
    assert [cols[0].type for _, cols in out] == [pa.int64(), pa.uint64()]


def test_ints_of_several_columns_whose_signs_cross_are_split_by_the_signs_of_each_column():
    """Review 48b: (-1, 2**63) and (2**63, -1) have a negative int each; split by "any
    negative", they stayed one batch, which no pair of integer types holds."""
    keys = [(-1, 2**63), (2**63, -1), (-2, 5)]
    out = key_columns(keys, [pa.int64(), pa.uint64()])
    assert sorted(rows.tolist() for rows, _ in out) == [[0, 2], [1]]
    assert sorted(map(repr, (tuple(c[i].as_py() for c in cols) for _, cols in out for i in range(len(cols[0]))))) == \
        sorted(map(repr, keys))


def test_several_columns_split_by_the_kinds_of_their_values_a_null_goes_with_its_like():
    keys = [("5", 1), (5, 1), ("6", None), (None, 2)]
    out = key_columns(keys, [pa.string(), pa.int64()])
    assert [rows.tolist() for rows, _ in out] == [[0, 2, 3], [1]]
    for (rows, cols) in out:
        got = list(zip(*(c.to_pylist() for c in cols)))
        assert all(_same(a, b) for g, k in zip(got, (keys[i] for i in rows)) for a, b in zip(g, k))


@pytest.mark.parametrize("value, kind", [
    (datetime.datetime(2020, 1, 1), pa.timestamp("ms", tz="UTC")),  # naive: not a zoned column's
    (datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), pa.timestamp("ms")),
    (datetime.date(2020, 1, 1), pa.timestamp("ms")), (True, pa.int64()), (1, pa.bool_()),
])
def test_a_key_the_learned_type_would_change_is_typed_as_its_value_says(value, kind):
    [(_, [column])] = key_columns([value], [kind])
    assert _same(column.to_pylist()[0], value)


def test_a_naive_and_a_zoned_datetime_are_two_kinds():
    """Review 48c: both came out as one naive value, whatever the type learned."""
    naive, zoned = datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    for kind in (None, pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        batches = _out([naive, zoned], [kind])
        assert len(batches) == 2 and all(_same(a, b) for a, b in zip(sorted(itertools.chain(*batches), key=repr),
                                                                      sorted([naive, zoned], key=repr)))


def test_every_pair_of_kinds_comes_out_as_itself():
    """Review 48's matrix: no pair of keys under any learned type is changed or raises."""
    values = ["5", "a", b"a", b"\xff", 5, -1, 2**63, 1.5, 0.1, True, None]
    kinds = [None, pa.string(), pa.binary(), pa.int8(), pa.int64(), pa.uint64(), pa.float32(), pa.float64(),
             pa.bool_(), pa.large_string()]
    for (a, b), kind in itertools.product(itertools.combinations(values, 2), kinds):
        batches = _out([a, b], [kind])
        assert sorted(map(repr, itertools.chain(*batches))) == sorted(map(repr, [a, b])), (a, b, kind)
