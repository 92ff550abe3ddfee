"""The key hashes of Arrow columns computed in numpy equal `stable_hash` of the Python
keys the per-record path makes, for every type they cover (else keyed state would move
between subtasks), and they leave the types they do not cover to Python."""
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream._runtime.transport.arrow_hash import column_hashes, key_hashes
from raystream._runtime.transport.arrow_keys import arrow_targets
from raystream._runtime.transport.keys import KeyRouter, stable_hash
from tests.unit._runtime.transport.test_arrow_keys import COLUMNS, batches, python_keys

HASHED = ("int64", "uint64", "int8", "string", "large_string", "bool")


def expected(batch: pa.RecordBatch, columns: tuple[str, ...]) -> list[int]:
    return [stable_hash(k) for k in python_keys(batch, columns)]


@settings(max_examples=150, deadline=None)
@given(batches(st.sampled_from(HASHED)))
def test_hashes_of_covered_columns_equal_stable_hash_of_the_python_keys(made):
    batch, columns = made
    assert key_hashes(batch, columns).tolist() == expected(batch, columns)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), max_size=30),
       st.sampled_from([pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(),
                        pa.uint64()]))
def test_every_integer_type_hashes_its_values_as_python_ints(values, kind):
    info = np.iinfo(kind.to_pandas_dtype())
    values = [None if v is None else min(max(v, int(info.min)), int(info.max)) for v in values]
    assert column_hashes(pa.array(values, kind)).tolist() == [stable_hash(v) for v in values]


def test_the_byte_length_boundaries_of_ints():
    edges = [0, -1, 127, 128, -128, -129, 255, 256, 2**15 - 1, 2**15, -2**15, -2**15 - 1,
             2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**55, 2**63 - 1, -2**63, -2**63 + 1]
    assert column_hashes(pa.array(edges, pa.int64())).tolist() == [stable_hash(v) for v in edges]
    big = [2**63, 2**64 - 1, 2**63 + 12345]
    assert column_hashes(pa.array(big, pa.uint64())).tolist() == [stable_hash(v) for v in big]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=90)), max_size=20))
def test_strings_long_and_short_and_sliced_and_dictionary_encoded(values):
    array = pa.array(["pad"] + values, pa.string()).slice(1)  # an offset into the buffers
    want = [stable_hash(v) for v in values]
    assert column_hashes(array).tolist() == want
    assert column_hashes(array.dictionary_encode()).tolist() == want
    assert column_hashes(pa.chunked_array([array], pa.string())).tolist() == want


def test_a_dictionary_holding_a_value_twice_hashes_both_alike():
    array = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 1], pa.int32()), pa.array(["a", "a"]))
    assert column_hashes(array).tolist() == [stable_hash("a"), stable_hash("a"), stable_hash(None), stable_hash("a")]


def test_types_it_does_not_cover_are_left_to_python():
    for kind in ("float", "binary"):
        assert column_hashes(pa.array([], COLUMNS[kind][1])) is None
    batch = pa.RecordBatch.from_pydict({"a": pa.array([1]), "f": pa.array([1.5])})
    assert key_hashes(batch, ("a", "f")) is None


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(1, 7))
def test_rows_go_where_the_per_record_router_sends_their_keys(made, parallelism):
    batch, columns = made
    router = KeyRouter(parallelism, 128)
    assert arrow_targets(batch, columns, router).tolist() == [router.target(k) for k in python_keys(batch, columns)]


@pytest.mark.parametrize("dictionary", [pa.array(["x", None]), pa.array([5, None]), pa.array([None], pa.int8())])
def test_a_null_entry_of_a_dictionary_hashes_as_a_null_row(dictionary):
    """Review 39: a row whose index points at a null entry of the dictionary is the key
    None, as a null index is; it was hashed as the entry's slot ("" or 0), so the None
    key's rows went to two subtasks."""
    indices = pa.array([len(dictionary) - 1, None, 0, len(dictionary) - 1], pa.int32())
    batch = pa.RecordBatch.from_arrays([pa.DictionaryArray.from_arrays(indices, dictionary)], names=["k"])
    keys = batch.column(0).to_pylist()
    assert column_hashes(batch.column(0)).tolist() == [stable_hash(k) for k in keys]
    for parallelism in (2, 3, 4):
        router = KeyRouter(parallelism, 128)
        assert arrow_targets(batch, ("k",), router).tolist() == [router.target(k) for k in keys]
