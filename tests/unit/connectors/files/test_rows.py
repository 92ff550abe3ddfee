"""FileSink writes every record as a row with named fields, so Arrow's readers take its
output, and what raystream 0.2 wrote (pairs as arrays, bare values) still reads."""
import dataclasses
import datetime as dt
import typing

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream.connectors.files.rows import as_row, from_json
from raystream.errors import SinkError
from raystream.sinks import FileSink, SinkContext, read_files, read_table


@dataclasses.dataclass
class Order:
    id: int
    amount: float


class Point(typing.NamedTuple):
    x: int
    y: int


WINDOW = rs.windows.WindowResult(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                                 dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=dt.timezone.utc), 3)


@pytest.mark.parametrize("record, row", [
    ({"a": 1}, {"a": 1}),
    (Order(1, 2.5), {"id": 1, "amount": 2.5}),
    (Point(1, 2), {"x": 1, "y": 2}),
    (("word", 3), {"key": "word", "value": 3}),
    (("k", Order(1, 2.5)), {"key": "k", "value": Order(1, 2.5)}),
    (7, {"value": 7}),
    ("text", {"value": "text"}),
    ((1, 2, 3), {"value": (1, 2, 3)}),
    ([1, 2], {"value": [1, 2]}),  # a list is a value, not a pair: only a tuple is a (key, value) pair
    (None, {"value": None}),
])
def test_each_kind_of_record_has_its_row(record, row):
    assert as_row(record) == row


def write(directory, batches, **options) -> None:
    w = FileSink(str(directory), **options).build_writer(SinkContext("out", 0, 1))
    for batch in batches:
        w.write_batch(batch)
    w.close()


@pytest.mark.parametrize("records, columns", [
    ([("a", 1), ("b", 2)], ["key", "value"]),
    ([("w", WINDOW)], ["key", "value"]),
    ([Order(3, 1.5)], ["id", "amount"]),
    ([Point(1, 2)], ["x", "y"]),
    ([5, 6], ["value"]),
], ids=["pairs", "windows", "dataclasses", "namedtuples", "scalars"])
def test_each_kind_of_output_is_json_objects_pyarrow_reads(tmp_path, records, columns):
    """The newcomer's case: `pyarrow.json.read_json` on the output of a keyed step."""
    write(tmp_path, [records])
    (part,) = [p for p in tmp_path.iterdir() if p.name.startswith("part-")]
    table = pj.read_json(part)
    assert table.num_rows == len(records) and table.column_names == columns


def test_rows_read_back_as_written(tmp_path):
    write(tmp_path, [[("a", 1)], [("w", WINDOW)], [Order(3, 1.5)], [Point(1, 2)], [5]])
    assert read_files(str(tmp_path)) == [
        {"key": "a", "value": 1},
        {"key": "w", "value": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:05+00:00",
                               "value": 3, "update": False}},
        {"id": 3, "amount": 1.5}, {"x": 1, "y": 2}, {"value": 5}]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_read_table_gives_one_arrow_table_of_the_committed_rows(tmp_path, fmt):
    write(tmp_path, [[("a", 1), ("b", 2)], [("c", 3)]], format=fmt, rows_per_file=2)
    (tmp_path / "_pending-out@x.jsonl").write_text('{"key": "uncommitted", "value": 9}\n')
    table = read_table(str(tmp_path), format=fmt)
    assert isinstance(table, pa.Table) and table.column_names == ["key", "value"]
    assert sorted(zip(table["key"].to_pylist(), table["value"].to_pylist())) == [("a", 1), ("b", 2), ("c", 3)]
    assert table.schema.field("value").type == pa.int64()


def test_parquet_takes_pairs_and_dataclasses(tmp_path):
    write(tmp_path / "orders", [[("a", Order(1, 2.5))], [("b", Order(2, 0.5))]], format="parquet")
    write(tmp_path / "windows", [[("w", WINDOW)]], format="parquet")
    assert pq.read_table(tmp_path / "orders").to_pylist() == [{"key": "a", "value": {"id": 1, "amount": 2.5}},
                                                              {"key": "b", "value": {"id": 2, "amount": 0.5}}]
    (window,) = read_table(str(tmp_path / "windows"), format="parquet").to_pylist()
    assert window == {"key": "w", "value": dataclasses.asdict(WINDOW)}  # timestamps, with their zone


def test_lines_written_by_0_2_read_as_the_rows_written_today(tmp_path):
    """A run resumed across the upgrade leaves old lines (pairs as arrays, bare values)
    beside new ones in one directory: both read as rows."""
    (tmp_path / "part-out@0000@old@000001@1@t-000000.jsonl").write_text('["a", 1]\n7\n"s"\n[1, 2, 3]\n')
    write(tmp_path, [[("b", 2)]])
    rows = read_files(str(tmp_path))
    assert sorted(map(repr, rows)) == sorted(map(repr, [{"key": "a", "value": 1}, {"value": 7}, {"value": "s"},
                                                        {"value": [1, 2, 3]}, {"key": "b", "value": 2}]))
    assert from_json(["a", 1]) == {"key": "a", "value": 1}


def test_an_int_past_64_bits_reads_back_exactly(tmp_path):
    write(tmp_path, [[("big", 2 ** 80)]])
    assert read_files(str(tmp_path)) == [{"key": "big", "value": 2 ** 80}]


def test_rows_that_make_no_one_table_say_to_read_them_as_dicts(tmp_path):
    write(tmp_path, [[("a", 1)], [("b", "text")]])
    with pytest.raises(SinkError, match="do not make one table.*read_files"):
        read_table(str(tmp_path))


def test_an_empty_directory_is_an_empty_table(tmp_path):
    assert read_table(str(tmp_path)).num_rows == 0


# --- review of the rows (each a defect found and fixed) --------------------------------------

def test_read_table_has_every_field_of_every_row_not_only_the_first_rows(tmp_path):
    """Output resumed across the upgrade (bare values, then pairs) and dicts with optional
    fields: the table's columns are the union of the fields, null where a row lacks one."""
    (tmp_path / "part-out@0000@old@000001@1@t-000000.jsonl").write_text("5\n")
    write(tmp_path, [[("k", 7)], [{"value": 1, "error": "timeout"}]])
    table = read_table(str(tmp_path))
    assert sorted(table.column_names) == ["error", "key", "value"]
    assert sorted(table.to_pylist(), key=repr) == sorted([
        {"value": 5, "key": None, "error": None}, {"value": 7, "key": "k", "error": None},
        {"value": 1, "key": None, "error": "timeout"}], key=repr)


@pytest.mark.parametrize("second", [[{"id": 2, "error": "x"}], [("b", 2.5)]], ids=["new field", "int then float"])
def test_parquet_takes_rows_whose_fields_or_number_types_differ_between_batches(tmp_path, second):
    first = [{"id": 1}] if "id" in second[0] else [("a", 1)]
    write(tmp_path, [first, second], format="parquet")
    rows = read_files(str(tmp_path), format="parquet")
    assert len(rows) == 2 and set(rows[0]) == set(rows[1])
    assert rows[1] == ({"id": 2, "error": "x"} if "id" in second[0] else {"key": "b", "value": 2.5})


def test_a_parquet_sink_whose_rows_make_no_table_names_its_step(tmp_path):
    w = FileSink(str(tmp_path), format="parquet").build_writer(SinkContext("out", 0, 1))
    w.write_batch([("a", 1)])
    w.write_batch([("b", "text")])
    with pytest.raises(SinkError, match="rows of sink step 'out' do not make one table"):
        w.close()


def test_a_namedtuple_in_a_row_with_an_int_past_64_bits_is_still_an_object(tmp_path):
    write(tmp_path, [[("a", {"at": Point(1, 2), "n": 1})], [("b", {"at": Point(1, 2), "n": 2 ** 64})]])
    assert [r["value"]["at"] for r in read_files(str(tmp_path))] == [{"x": 1, "y": 2}, {"x": 1, "y": 2}]


def test_read_table_on_an_int_past_64_bits_says_to_read_dicts(tmp_path):
    write(tmp_path, [[("k", 2 ** 70)]])
    with pytest.raises(SinkError, match="int past 64 bits.*read_files"):
        read_table(str(tmp_path))
