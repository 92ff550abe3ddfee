"""Keys of Arrow batches, made per distinct key, are the per-record path's keys: every
row lands in `key_group(python_key)`, and a keyed exchange splits a batch by subtask
as Arrow, each row with its time, a key's rows in their order."""
import datetime
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream._runtime.transport.arrow_keys import distinct_keys
from raystream._runtime.transport.batch import ArrowKeyed, Timed, as_keyed, as_records, to_arrow, untimed
from raystream._runtime.transport.keys import UnsupportedKeyError, groups_of_subtask, key_group
from tests.helpers.edges import hash_edge

MAX_PARALLELISM = 128

INT64 = st.integers(-2**63, 2**63 - 1)
COLUMNS = {  # hypothesis values of a type, and the Arrow type that holds them
    "int64": (st.one_of(INT64, st.sampled_from([-1, 0, 2**31, 2**31 + 1, -2**31 - 1, 2**63 - 1, -2**63])), pa.int64()),
    "uint64": (st.integers(2**63, 2**64 - 1), pa.uint64()),
    "int8": (st.integers(-128, 127), pa.int8()),
    "string": (st.text(max_size=6), pa.string()),
    "large_string": (st.text(alphabet="aéß水🎉", max_size=3), pa.large_string()),
    "bool": (st.booleans(), pa.bool_()),
    "float": (st.floats(allow_nan=False, width=64) | st.sampled_from([0.0, -0.0, 1.0, -3.0, 2.0**70]), pa.float64()),
    "binary": (st.binary(max_size=4), pa.binary()),
}


def column(kind: str, draw_values: list) -> pa.Array:
    return pa.array(draw_values, type=COLUMNS[kind][1])


@st.composite
def batches(draw, kinds=st.sampled_from(sorted(COLUMNS))):
    """A batch of 1-3 key columns of random types (with nulls) and its rows."""
    chosen = draw(st.lists(kinds, min_size=1, max_size=3))
    n = draw(st.integers(0, 40))
    arrays = []
    for kind in chosen:
        values = st.one_of(st.none(), COLUMNS[kind][0])
        # few distinct values, so keys repeat as they do in a stream
        pool = draw(st.lists(values, min_size=1, max_size=5))
        if draw(st.booleans()):
            arrays.append(column(kind, [draw(st.sampled_from(pool)) for _ in range(n)]))
            continue
        # dictionary-encoded, as a source may give it: the pool (nulls, repeats) and values
        # no row uses are its entries; a row points at one, or is a null index
        dictionary = column(kind, pool + draw(st.lists(COLUMNS[kind][0], max_size=2)))
        indices = [draw(st.one_of(st.none(), st.integers(0, len(pool) - 1))) for _ in range(n)]
        arrays.append(pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), dictionary))
    names = [f"c{i}" for i in range(len(arrays))]
    return pa.RecordBatch.from_arrays(arrays, names=names), tuple(names)


def python_keys(batch: pa.RecordBatch, columns: tuple[str, ...]) -> list:
    """The keys the per-record path makes: `lambda row: row[c]`, or the tuple of several."""
    rows = batch.to_pylist()
    return [r[columns[0]] for r in rows] if len(columns) == 1 else [tuple(r[c] for c in columns) for r in rows]


@settings(max_examples=300, deadline=None)
@given(batches())
def test_every_row_has_the_per_record_key_and_key_group(made):
    batch, columns = made
    distinct = distinct_keys(batch, columns)
    expected = python_keys(batch, columns)
    assert distinct.per_row() == expected
    # the same key group as the per-record path, for every row (ints past 2**63, -0.0, None included)
    groups = np.array([key_group(k, MAX_PARALLELISM) for k in distinct.keys], dtype=np.int64)
    assert groups[distinct.rows].tolist() == [key_group(k, MAX_PARALLELISM) for k in expected]
    assert len(distinct.keys) <= max(len(expected), 1) + 1


@pytest.mark.parametrize("array", [
    pa.array([1, None, 1, 2**62]),
    pa.array([None, None], type=pa.null()),
    pa.array(["a", "b", "a", None]).dictionary_encode(),
    pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["x", "x"])),  # repeated dictionary values
    pa.chunked_array([[1, 2], [2, None]]),
])
def test_null_typed_dictionary_and_chunked_columns(array):
    batch = pa.Table.from_arrays([array], names=["k"]).combine_chunks().to_batches()[0]
    distinct = distinct_keys(batch, ("k",))
    assert distinct.per_row() == batch.column(0).to_pylist()


def test_keys_of_a_type_arrow_cannot_encode_are_made_per_row():
    batch = pa.RecordBatch.from_pydict({"k": [[1], [2], [1]]})
    assert distinct_keys(batch, ("k",)).per_row() == [[1], [2], [1]]  # the router then refuses them


def test_a_keyed_arrow_batch_is_key_value_records_to_per_record_steps():
    batch = pa.RecordBatch.from_pydict({"a": [1, 2, None], "b": ["x", "y", "x"]})
    keyed = ArrowKeyed(batch, ("a", "b"))
    assert as_records(keyed) == [((1, "x"), {"a": 1, "b": "x"}), ((2, "y"), {"a": 2, "b": "y"}),
                                 ((None, "x"), {"a": None, "b": "x"})]
    assert to_arrow(keyed) is batch and len(keyed) == 3


@settings(max_examples=60, deadline=None)
@given(batches(), st.integers(1, 4))
def test_a_hash_edge_splits_keyed_arrow_by_key_group_keeping_order_and_times(made, parallelism):
    batch, columns = made
    if not batch.num_rows:
        return
    batch = batch.append_column("i", pa.array(range(batch.num_rows)))
    times = [1000 + i for i in range(batch.num_rows)]
    received = hash_edge(Timed(ArrowKeyed(batch, columns), times), parallelism)
    seen = []
    for subtask, messages in enumerate(received):
        groups = set(groups_of_subtask(subtask, parallelism, MAX_PARALLELISM))
        for message in messages:
            part, part_times = untimed(message)
            assert isinstance(part, ArrowKeyed) and part.key_columns == columns  # Arrow, not records
            assert all(key_group(k, MAX_PARALLELISM) in groups for k in python_keys(part.batch, columns))
            index = part.batch.column("i").to_pylist()
            assert index == sorted(index)  # rows keep their order
            assert list(part_times) == [1000 + i for i in index]
            seen.extend(index)
    assert sorted(seen) == list(range(batch.num_rows))


@pytest.mark.parametrize("parallelism", [1, 3])
@pytest.mark.parametrize("bad", [[1.0, math.nan], [[1], [2]]])
def test_a_key_the_per_record_path_refuses_is_refused_at_every_parallelism(bad, parallelism):
    with pytest.raises(UnsupportedKeyError):
        hash_edge(ArrowKeyed(pa.RecordBatch.from_pydict({"k": bad}), ("k",)), parallelism)
    with pytest.raises(UnsupportedKeyError):  # the per-record path, for comparison
        hash_edge(as_keyed(ArrowKeyed(pa.RecordBatch.from_pydict({"k": bad}), ("k",))), parallelism)


@pytest.mark.parametrize("array", [
    pa.array([-0.0, 0.0, None, -0.0, None]),
    pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0, 2], pa.int32()), pa.array(["a", "a", None])),
], ids=["signed-zeros", "dictionary-repeating-values"])
def test_equal_python_keys_get_one_code_however_arrow_tells_them_apart(array):
    """Review: -0.0 and 0.0 (and a value a dictionary holds twice) were two codes, so the
    steps that group by codes (sessions, joins) saw one key twice."""
    found = distinct_keys(pa.RecordBatch.from_arrays([array], names=["k"]), ("k",))
    assert found.rows.tolist() == [0, 0, 1, 0, 1]
    assert len(found.keys) == 2 and found.keys[0] in (0.0, "a") and found.keys[1] is None
    two = distinct_keys(pa.RecordBatch.from_arrays([array, pa.array([1] * 5)], names=["k", "j"]), ("k", "j"))
    assert len(set(two.rows.tolist())) == len(two.keys) == 2


@pytest.mark.parametrize("parallelism", [1, 3])
def test_a_dictionary_column_routes_only_the_entries_its_rows_use(parallelism):
    """Review 38: every entry of a dictionary column's dictionary was made and routed, used
    or not, so timestamps no row held failed the batch with UnsupportedKeyError where the
    per-record path routes the rows' None."""
    unused = pa.array([datetime.datetime(2026, 1, 1)], pa.timestamp("ms"))
    batch = pa.RecordBatch.from_arrays([pa.DictionaryArray.from_arrays(pa.array([None, None], pa.int32()), unused)],
                                       names=["k"])
    assert distinct_keys(batch, ("k",)).per_row() == [None, None]
    received = hash_edge(ArrowKeyed(batch, ("k",)), parallelism)
    assert sum(m.batch.num_rows for messages in received for m in messages) == 2
    some = pa.DictionaryArray.from_arrays(pa.array([2, None, 2, 0], pa.int8()), pa.array(["x", "y", "z"]))
    found = distinct_keys(pa.RecordBatch.from_arrays([some], names=["k"]), ("k",))
    assert found.keys == ["x", "z", None] and found.per_row() == ["z", None, "z", "x"]


def test_chunks_of_dictionaries_holding_nulls_are_keys_as_their_values():
    """Review 39: Arrow cannot unify the dictionaries of several chunks when one holds a
    null, so a table's dictionary key column of such chunks raised."""
    chunks = pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([0, 1]), pa.array(["x", None])),
                               pa.DictionaryArray.from_arrays(pa.array([1, 0, None]), pa.array(["y", None]))])
    table = pa.table({"k": chunks})
    assert distinct_keys(table, ("k",)).per_row() == ["x", None, None, "y", None]
